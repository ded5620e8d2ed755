"""The simulated system: services, line formats, normal request flows, rare paths and benign lines.

Every text is an ``(english, chinese)`` pair filled with :meth:`str.format` from the sequence
context. Each flow keeps a fixed step skeleton; only the values vary. Normal latency ranges stay
inside one decade, so a spike of 20x or more always lands in a higher ``<dur:1eKms>`` bucket of
:mod:`core.normalize`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

T = tuple[str, str]  # (english, chinese)
Lang = Literal["en", "zh"]

SERVICES: dict[str, T] = {
    "gateway": ("gateway", "网关服务"),
    "auth": ("auth", "认证服务"),
    "orders": ("orders", "订单服务"),
    "payments": ("payments", "支付服务"),
    "inventory": ("inventory", "库存服务"),
    "database": ("database", "数据库"),
    "cache": ("cache", "缓存服务"),
    "queue": ("queue", "消息队列"),
    "notification": ("notification", "通知服务"),
    "search": ("search", "搜索服务"),
}
HTTP_SERVICES = ("gateway", "auth", "orders", "payments", "inventory", "notification", "search")
SERVICE_PORTS = {
    "gateway": 8443,
    "auth": 9000,
    "orders": 8080,
    "payments": 8081,
    "inventory": 8082,
    "database": 5432,
    "cache": 6379,
    "queue": 9092,
    "notification": 8083,
    "search": 9200,
}

# one log layout per service, as a real fleet has: Java-style, ISO/JSON-ish, slash dates, syslog
Style = Literal["java", "iso", "slash", "syslog"]
SERVICE_STYLE: dict[str, Style] = {
    "gateway": "iso",
    "auth": "java",
    "orders": "java",
    "payments": "slash",
    "inventory": "java",
    "database": "syslog",
    "cache": "syslog",
    "queue": "slash",
    "notification": "iso",
    "search": "iso",
}
SYSLOG_HOSTS = {"database": "pg", "cache": "redis"}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def lang_index(lang: str) -> int:
    """0 for English, 1 for Chinese."""
    return 1 if lang == "zh" else 0


def service_name(service: str, lang: str) -> str:
    """The service as prose names it: ``payments`` or ``支付服务``."""
    names = SERVICES.get(service)
    return names[lang_index(lang)] if names else service


def format_line(style: Style, ts: datetime, level: str, service: str, message: str, host: str, pid: int) -> str:
    """One log line in the service's layout, timestamp first."""
    ms = ts.microsecond // 1000
    if style == "java":
        return f"{ts:%Y-%m-%d %H:%M:%S}.{ms:03d} {level} [{service}] {message}"
    if style == "iso":
        iso_level = "WARNING" if level == "WARN" else level
        return f"{ts:%Y-%m-%dT%H:%M:%S}.{ms:03d}Z [{service}] {iso_level}: {message}"
    if style == "slash":
        return f"{ts:%Y/%m/%d %H:%M:%S},{ms:03d} {service} {level} {message}"
    return f"{_MONTHS[ts.month - 1]} {ts.day:2d} {ts:%H:%M:%S} {host} {service}[{pid}]: {level} {message}"


@dataclass(frozen=True)
class Step:
    """One step of a flow: the service that logs it, who called it, its text and latency range."""

    key: str
    service: str
    text: T
    name: T
    caller: str | None = None
    lat: tuple[int, int] | None = None  # normal latency in ms, inside one decade; text has {lat}
    resource: str = ""  # table, cache command, topic or scope that the step touches
    level: str = "INFO"


RareKind = Literal["insert_after", "insert_before", "replace"]


@dataclass(frozen=True)
class RarePath:
    """A rare but normal variant of a flow (hard negatives): extra steps around an anchor step."""

    name: str
    kind: RareKind
    anchor: str
    steps: tuple[Step, ...] = ()


@dataclass(frozen=True)
class Flow:
    """A request flow type: its fixed step skeleton, the request line it answers, one rare path."""

    key: str
    title: T
    steps: tuple[Step, ...]
    rare: RarePath
    method: str | None = None  # None: a background job, not an HTTP request
    path: str = ""
    status: int = 200


def _gw_in() -> Step:
    return Step(
        "gateway.received",
        "gateway",
        (
            "received {method} {path} from {ip} port {cport} request_id={rid} trace_id={tid}",
            "收到请求 {method} {path} 来源 {ip} port {cport} request_id={rid} trace_id={tid}",
        ),
        ("request intake", "接收请求"),
    )


def _gw_out() -> Step:
    return Step(
        "gateway.completed",
        "gateway",
        (
            "completed {method} {path} status={status} request_id={rid} latency={total}ms",
            "请求完成 {method} {path} status={status} request_id={rid} latency={total}ms",
        ),
        ("response", "返回响应"),
    )


def _token(scope: str) -> Step:
    return Step(
        "auth.token",
        "auth",
        (
            f"token valid user={{user}} scopes={scope} took {{lat}} ms",
            f"令牌校验通过 用户={{user}} scopes={scope} 耗时 {{lat}} ms",
        ),
        ("token validation", "令牌校验"),
        caller="gateway",
        lat=(1, 9),
        resource=scope,
    )


LOGIN = Flow(
    "login",
    ("login", "登录"),
    (
        _gw_in(),
        Step(
            "auth.login",
            "auth",
            ("login attempt user={user} client_ip={ip}", "登录请求 用户={user} client_ip={ip}"),
            ("login request", "登录请求"),
            caller="gateway",
            resource="auth:login",
        ),
        Step(
            "cache.ratelimit",
            "cache",
            (
                "rate limit check key=ratelimit:login ok took {lat} ms",
                "登录限流检查通过 key=ratelimit:login 耗时 {lat} ms",
            ),
            ("rate-limit check", "限流检查"),
            caller="auth",
            lat=(1, 9),
            resource="INCR",
        ),
        Step(
            "database.user",
            "database",
            (
                "SELECT id, password_hash FROM users WHERE username=$1 rows=1 took {lat} ms",
                "查询用户凭据 SELECT id, password_hash FROM users WHERE username=$1 rows=1 耗时 {lat} ms",
            ),
            ("credential lookup", "查询用户凭据"),
            caller="auth",
            lat=(2, 9),
            resource="users",
        ),
        Step(
            "auth.verify",
            "auth",
            (
                "password verified user={user} algo=bcrypt took {lat} ms",
                "密码校验通过 用户={user} algo=bcrypt 耗时 {lat} ms",
            ),
            ("password verification", "密码校验"),
            lat=(40, 95),
        ),
        Step(
            "cache.session",
            "cache",
            ("SET session:{sid} ttl=3600 took {lat} ms", "写入会话缓存 SET session:{sid} ttl=3600 耗时 {lat} ms"),
            ("session write", "写入会话缓存"),
            caller="auth",
            lat=(1, 9),
            resource="SET",
        ),
        Step(
            "auth.session",
            "auth",
            (
                "session created user={user} session={sid} expires_in=3600",
                "会话已创建 用户={user} session={sid} expires_in=3600",
            ),
            ("session creation", "创建会话"),
        ),
        Step(
            "queue.login_event",
            "queue",
            (
                "published user.logged_in topic=auth-events partition={part} offset={off}",
                "已发布事件 user.logged_in topic=auth-events partition={part} offset={off}",
            ),
            ("login event publish", "发布登录事件"),
            caller="auth",
            resource="auth-events",
        ),
        _gw_out(),
    ),
    RarePath(
        "second_factor",
        "insert_after",
        "auth.verify",
        (
            Step(
                "auth.mfa_required",
                "auth",
                ("second factor required user={user} method=totp", "需要二次验证 用户={user} method=totp"),
                ("second-factor challenge", "二次验证挑战"),
            ),
            Step(
                "notification.otp",
                "notification",
                (
                    "sent one-time code user={user} channel=sms took {lat} ms",
                    "已发送一次性验证码 用户={user} channel=sms 耗时 {lat} ms",
                ),
                ("one-time code delivery", "发送验证码"),
                caller="auth",
                lat=(120, 900),
            ),
            Step(
                "auth.mfa_ok",
                "auth",
                ("second factor verified user={user}", "二次验证通过 用户={user}"),
                ("second-factor check", "二次验证"),
            ),
        ),
    ),
    method="POST",
    path="/api/v1/login",
)

SEARCH = Flow(
    "search",
    ("search", "搜索"),
    (
        _gw_in(),
        _token("catalog:read"),
        Step(
            "search.parse",
            "search",
            (
                "parsing query terms={terms} filters={filters} user={user}",
                "解析查询 terms={terms} filters={filters} 用户={user}",
            ),
            ("query parsing", "查询解析"),
            caller="gateway",
            resource="search:query",
        ),
        Step(
            "cache.search_hit",
            "cache",
            ("GET search:{qhash} hit took {lat} ms", "查询缓存命中 GET search:{qhash} 耗时 {lat} ms"),
            ("result cache lookup", "结果缓存查询"),
            caller="search",
            lat=(1, 9),
            resource="GET",
        ),
        Step(
            "search.rank",
            "search",
            (
                "ranked {hits} results model=ltr-v2 took {lat} ms",
                "结果排序完成 共 {hits} 条 model=ltr-v2 耗时 {lat} ms",
            ),
            ("result ranking", "结果排序"),
            lat=(12, 95),
        ),
        Step(
            "database.prices",
            "database",
            (
                "SELECT price, currency FROM products WHERE sku IN (...) rows={rows} took {lat} ms",
                "查询商品价格 SELECT price, currency FROM products WHERE sku IN (...) rows={rows} 耗时 {lat} ms",
            ),
            ("price lookup", "价格查询"),
            caller="search",
            lat=(2, 9),
            resource="products",
        ),
        Step(
            "inventory.availability",
            "inventory",
            ("availability checked for {k} skus took {lat} ms", "已检查 {k} 个商品的库存 耗时 {lat} ms"),
            ("availability check", "库存可用性检查"),
            caller="search",
            lat=(12, 95),
            resource="inventory:read",
        ),
        _gw_out(),
    ),
    RarePath(
        "cache_miss",
        "replace",
        "cache.search_hit",
        (
            Step(
                "cache.search_miss",
                "cache",
                ("GET search:{qhash} miss took {lat} ms", "查询缓存未命中 GET search:{qhash} 耗时 {lat} ms"),
                ("result cache lookup", "结果缓存查询"),
                caller="search",
                lat=(1, 9),
            ),
            Step(
                "search.index",
                "search",
                (
                    "queried index products-v3 shards=5 hits={hits} took {lat} ms",
                    "查询索引 products-v3 shards=5 命中 {hits} 条 耗时 {lat} ms",
                ),
                ("index query", "索引查询"),
                lat=(20, 95),
            ),
            Step(
                "cache.search_set",
                "cache",
                ("SET search:{qhash} ttl=300 took {lat} ms", "写入查询缓存 SET search:{qhash} ttl=300 耗时 {lat} ms"),
                ("result cache write", "写入结果缓存"),
                caller="search",
                lat=(1, 9),
            ),
        ),
    ),
    method="GET",
    path="/api/v1/search",
)

PLACE_ORDER = Flow(
    "place_order",
    ("place order", "下单"),
    (
        _gw_in(),
        _token("orders:write"),
        Step(
            "orders.create",
            "orders",
            (
                "creating order {oid} user={user} items={items} amount={amount} {cur}",
                "创建订单 {oid} 用户={user} items={items} amount={amount} {cur}",
            ),
            ("order creation", "创建订单"),
            caller="gateway",
            resource="orders:write",
        ),
        Step(
            "inventory.reserve",
            "inventory",
            (
                "reserved {items} items for order {oid} warehouse={wh} took {lat} ms",
                "已为订单 {oid} 预留 {items} 件商品 warehouse={wh} 耗时 {lat} ms",
            ),
            ("inventory reservation", "库存预留"),
            caller="orders",
            lat=(12, 95),
            resource="inventory:reserve",
        ),
        Step(
            "database.order",
            "database",
            (
                "INSERT INTO orders id={oid} rows=1 took {lat} ms",
                "写入订单 INSERT INTO orders id={oid} rows=1 耗时 {lat} ms",
            ),
            ("order insert", "写入订单"),
            caller="orders",
            lat=(2, 9),
            resource="orders",
        ),
        Step(
            "payments.authorize",
            "payments",
            (
                "authorized {amount} {cur} for order {oid} provider={provider} latency={lat}ms",
                "支付授权成功 订单 {oid} 金额 {amount} {cur} provider={provider} latency={lat}ms",
            ),
            ("payment authorization", "支付授权"),
            caller="orders",
            lat=(120, 900),
            resource="payments:authorize",
        ),
        Step(
            "orders.confirm",
            "orders",
            ("order {oid} confirmed state=CONFIRMED", "订单 {oid} 已确认 state=CONFIRMED"),
            ("order confirmation", "订单确认"),
        ),
        Step(
            "queue.order_event",
            "queue",
            (
                "published order.created topic=orders partition={part} offset={off}",
                "已发布事件 order.created topic=orders partition={part} offset={off}",
            ),
            ("order event publish", "发布订单事件"),
            caller="orders",
            resource="orders",
        ),
        Step(
            "notification.email",
            "notification",
            (
                "queued confirmation email for order {oid} user={user}",
                "已排队发送订单确认邮件 订单 {oid} 用户={user}",
            ),
            ("confirmation email", "发送确认邮件"),
            caller="orders",
            resource="notify:send",
        ),
        _gw_out(),
    ),
    RarePath(
        "coupon",
        "insert_after",
        "orders.create",
        (
            Step(
                "orders.coupon",
                "orders",
                (
                    "applied coupon {coupon} discount={disc}% to order {oid}",
                    "订单 {oid} 使用优惠券 {coupon} 折扣 {disc}%",
                ),
                ("coupon application", "使用优惠券"),
            ),
        ),
    ),
    method="POST",
    path="/api/v1/orders",
    status=201,
)

PAYMENT = Flow(
    "payment",
    ("payment", "支付"),
    (
        _gw_in(),
        _token("payments:write"),
        Step(
            "payments.intent",
            "payments",
            (
                "payment intent {pi} created for order {oid} amount={amount} {cur}",
                "已创建支付意图 {pi} 订单 {oid} amount={amount} {cur}",
            ),
            ("payment intent creation", "创建支付意图"),
            caller="gateway",
            resource="payments:write",
        ),
        Step(
            "payments.fraud",
            "payments",
            ("fraud check passed score={score} took {lat} ms", "风控检查通过 score={score} 耗时 {lat} ms"),
            ("fraud check", "风控检查"),
            lat=(12, 95),
        ),
        Step(
            "payments.capture",
            "payments",
            (
                "charge captured txn={txn} provider={provider} latency={lat}ms",
                "扣款成功 txn={txn} provider={provider} latency={lat}ms",
            ),
            ("charge capture", "扣款"),
            lat=(120, 900),
        ),
        Step(
            "database.payment",
            "database",
            (
                "UPDATE payments SET status='captured' WHERE id={pi} took {lat} ms",
                "更新支付状态 UPDATE payments SET status='captured' WHERE id={pi} 耗时 {lat} ms",
            ),
            ("payment status update", "更新支付状态"),
            caller="payments",
            lat=(2, 9),
            resource="payments",
        ),
        Step(
            "orders.paid",
            "orders",
            ("order {oid} marked PAID took {lat} ms", "订单 {oid} 已标记为已支付 PAID 耗时 {lat} ms"),
            ("order status update", "更新订单状态"),
            caller="payments",
            lat=(12, 95),
            resource="orders:write",
        ),
        Step(
            "queue.payment_event",
            "queue",
            (
                "published payment.captured topic=payments partition={part} offset={off}",
                "已发布事件 payment.captured topic=payments partition={part} offset={off}",
            ),
            ("payment event publish", "发布支付事件"),
            caller="payments",
            resource="payments",
        ),
        _gw_out(),
    ),
    RarePath(
        "three_d_secure",
        "insert_after",
        "payments.fraud",
        (
            Step(
                "payments.3ds_required",
                "payments",
                ("3-D Secure challenge required for {pi}", "需要 3-D Secure 验证 {pi}"),
                ("3-D Secure challenge", "3-D Secure 验证"),
            ),
            Step(
                "payments.3ds_ok",
                "payments",
                (
                    "3-D Secure authentication succeeded for {pi} took {lat} ms",
                    "3-D Secure 验证成功 {pi} 耗时 {lat} ms",
                ),
                ("3-D Secure authentication", "3-D Secure 认证"),
                lat=(1200, 9000),
            ),
        ),
    ),
    method="POST",
    path="/api/v1/payments",
)

INVENTORY_UPDATE = Flow(
    "inventory_update",
    ("inventory update", "库存更新"),
    (
        _gw_in(),
        Step(
            "auth.service_token",
            "auth",
            (
                "service token valid client=warehouse-sync scopes=inventory:write took {lat} ms",
                "服务令牌校验通过 client=warehouse-sync scopes=inventory:write 耗时 {lat} ms",
            ),
            ("service token validation", "服务令牌校验"),
            caller="gateway",
            lat=(1, 9),
            resource="inventory:write",
        ),
        Step(
            "inventory.delta",
            "inventory",
            (
                "applying stock delta sku={sku} delta={delta} warehouse={wh}",
                "应用库存变更 sku={sku} delta={delta} warehouse={wh}",
            ),
            ("stock delta", "应用库存变更"),
            caller="gateway",
            resource="inventory:write",
        ),
        Step(
            "database.stock",
            "database",
            (
                "UPDATE stock SET qty=qty+$1 WHERE sku=$2 rows=1 took {lat} ms",
                "更新库存 UPDATE stock SET qty=qty+$1 WHERE sku=$2 rows=1 耗时 {lat} ms",
            ),
            ("stock update", "更新库存"),
            caller="inventory",
            lat=(2, 9),
            resource="stock",
        ),
        Step(
            "cache.invalidate",
            "cache",
            ("DEL stock:{sku} took {lat} ms", "删除库存缓存 DEL stock:{sku} 耗时 {lat} ms"),
            ("cache invalidation", "缓存失效"),
            caller="inventory",
            lat=(1, 9),
            resource="DEL",
        ),
        Step(
            "search.reindex",
            "search",
            (
                "reindexed sku={sku} index=products-v3 took {lat} ms",
                "已重建索引 sku={sku} index=products-v3 耗时 {lat} ms",
            ),
            ("search reindex", "重建搜索索引"),
            caller="inventory",
            lat=(12, 95),
            resource="search:index",
        ),
        Step(
            "queue.stock_event",
            "queue",
            (
                "published inventory.updated topic=inventory partition={part} offset={off}",
                "已发布事件 inventory.updated topic=inventory partition={part} offset={off}",
            ),
            ("stock event publish", "发布库存事件"),
            caller="inventory",
            resource="inventory",
        ),
        _gw_out(),
    ),
    RarePath(
        "low_stock",
        "insert_after",
        "database.stock",
        (
            Step(
                "inventory.low_stock",
                "inventory",
                (
                    "stock for sku={sku} below reorder threshold qty={qty} threshold=20",
                    "sku={sku} 库存低于补货阈值 qty={qty} threshold=20",
                ),
                ("low-stock check", "低库存检查"),
                level="WARN",
            ),
            Step(
                "notification.low_stock",
                "notification",
                ("sent low-stock alert to purchasing took {lat} ms", "已向采购发送低库存提醒 耗时 {lat} ms"),
                ("low-stock alert", "低库存提醒"),
                caller="inventory",
                lat=(12, 95),
            ),
        ),
    ),
    method="PUT",
    path="/api/v1/inventory/{sku}",
)

CACHE_REFRESH = Flow(
    "cache_refresh",
    ("cache refresh", "缓存刷新"),
    (
        Step(
            "queue.job",
            "queue",
            (
                "consumed job {job} type=cache.refresh topic=jobs partition={part} offset={off}",
                "消费任务 {job} type=cache.refresh topic=jobs partition={part} offset={off}",
            ),
            ("job intake", "消费任务"),
        ),
        Step(
            "cache.refresh_start",
            "cache",
            ("refresh started keyspace={ks} job={job}", "开始刷新缓存 keyspace={ks} job={job}"),
            ("refresh start", "开始刷新"),
            caller="queue",
            resource="MULTI",
        ),
        Step(
            "cache.lock",
            "cache",
            ("acquired lock refresh:{ks} ttl=60 took {lat} ms", "获取刷新锁 refresh:{ks} ttl=60 耗时 {lat} ms"),
            ("refresh lock", "获取刷新锁"),
            lat=(1, 9),
            resource="SETNX",
        ),
        Step(
            "database.batch",
            "database",
            (
                "SELECT * FROM {ks} ORDER BY id LIMIT 500 page=1 rows={rows} took {lat} ms",
                "批量读取 SELECT * FROM {ks} ORDER BY id LIMIT 500 page=1 rows={rows} 耗时 {lat} ms",
            ),
            ("batch read", "批量读取"),
            caller="cache",
            lat=(12, 95),
            resource="{ks}",
        ),
        Step(
            "cache.mset",
            "cache",
            (
                "MSET {rows} keys keyspace={ks} page=1 ttl=600 took {lat} ms",
                "批量写入缓存 MSET {rows} keys keyspace={ks} page=1 ttl=600 耗时 {lat} ms",
            ),
            ("cache bulk write", "批量写入缓存"),
            lat=(2, 9),
            resource="MSET",
        ),
        Step(
            "search.warm",
            "search",
            ("warmed {warm} popular queries took {lat} ms", "已预热 {warm} 个热门查询 耗时 {lat} ms"),
            ("query warm-up", "查询预热"),
            caller="cache",
            lat=(12, 95),
            resource="search:warm",
        ),
        Step(
            "cache.refresh_done",
            "cache",
            (
                "refresh finished keyspace={ks} keys={rows} took {total} ms",
                "缓存刷新完成 keyspace={ks} keys={rows} 耗时 {total} ms",
            ),
            ("refresh completion", "刷新完成"),
        ),
        Step(
            "queue.ack",
            "queue",
            ("acked job {job} offset={off}", "任务已确认 {job} offset={off}"),
            ("job acknowledgement", "任务确认"),
        ),
    ),
    RarePath(
        "second_page",
        "insert_after",
        "cache.mset",
        (
            Step(
                "database.batch2",
                "database",
                (
                    "SELECT * FROM {ks} ORDER BY id LIMIT 500 page=2 rows={rows2} took {lat} ms",
                    "批量读取 SELECT * FROM {ks} ORDER BY id LIMIT 500 page=2 rows={rows2} 耗时 {lat} ms",
                ),
                ("batch read", "批量读取"),
                caller="cache",
                lat=(12, 95),
            ),
            Step(
                "cache.mset2",
                "cache",
                (
                    "MSET {rows2} keys keyspace={ks} page=2 ttl=600 took {lat} ms",
                    "批量写入缓存 MSET {rows2} keys keyspace={ks} page=2 ttl=600 耗时 {lat} ms",
                ),
                ("cache bulk write", "批量写入缓存"),
                lat=(2, 9),
            ),
        ),
    ),
)

FLOWS: dict[str, Flow] = {f.key: f for f in (LOGIN, SEARCH, PLACE_ORDER, PAYMENT, INVENTORY_UPDATE, CACHE_REFRESH)}

# the retry line: a normal flow may hold one (a transient retry, on hard), a retry storm many
RETRY_TEXT: T = (
    "retrying call to {callee} (attempt {attempt}/{max_attempts}) after {backoff} ms",
    "第 {attempt}/{max_attempts} 次重试调用{callee}，退避 {backoff} ms",
)
RETRY_BACKOFF = (100, 900)  # one decade: a storm differs from a single retry by count alone


@dataclass(frozen=True)
class Benign:
    """A line that is not part of any flow: harmless warnings and background noise."""

    services: tuple[str, ...]
    text: T
    level: str = "INFO"


# hard negatives: WARN lines that look alarming and are normal
HARMLESS_WARNINGS: tuple[Benign, ...] = (
    Benign(
        ("auth", "orders", "payments", "inventory", "search", "notification"),
        (
            "GC pause {gc} ms (G1 Young Generation), heap {heap}% used",
            "GC 停顿 {gc} ms (G1 Young Generation)，堆使用率 {heap}%",
        ),
        "WARN",
    ),
    Benign(
        ("gateway",),
        (
            "client sdk uses deprecated header X-Api-Version, migrate to Accept-Version",
            "客户端 SDK 使用了已弃用的请求头 X-Api-Version，请迁移到 Accept-Version",
        ),
        "WARN",
    ),
    Benign(
        ("orders", "payments"),
        (
            "deprecated field 'shipping_addr' in request body, use 'shipping_address'",
            "请求体中使用了已弃用字段 'shipping_addr'，请改用 'shipping_address'",
        ),
        "WARN",
    ),
    Benign(
        ("auth",),
        (
            "password hash of user={user} uses legacy bcrypt cost=10, rehash scheduled",
            "用户={user} 的密码哈希使用旧版 bcrypt cost=10，已安排重新哈希",
        ),
        "WARN",
    ),
    Benign(
        ("database",),
        (
            "checkpoints are occurring too frequently ({secs} seconds apart)",
            "检查点触发过于频繁（间隔 {secs} 秒）",
        ),
        "WARN",
    ),
    Benign(
        ("cache",),
        (
            "config option 'slave-read-only' is deprecated, use 'replica-read-only'",
            "配置项 'slave-read-only' 已弃用，请使用 'replica-read-only'",
        ),
        "WARN",
    ),
)

# background lines unrelated to the request (--noise)
NOISE_LINES: tuple[Benign, ...] = (
    Benign(
        ("gateway",),
        (
            "metrics rps={rps} p99={p99}ms active_connections={conns}",
            "指标 rps={rps} p99={p99}ms active_connections={conns}",
        ),
    ),
    Benign(tuple(SERVICES), ("health check passed instance={inst}", "健康检查通过 instance={inst}"), "DEBUG"),
    Benign(
        ("queue",),
        ("consumer group {group} lag={lag} partition={part}", "消费组 {group} 积压 lag={lag} partition={part}"),
    ),
    Benign(("database",), ("checkpoint complete: wrote {buffers} buffers", "检查点完成：写入 {buffers} 个缓冲区")),
    Benign(("cache",), ("background saving started by pid {bgpid}", "后台保存已启动 pid {bgpid}")),
    Benign(("auth",), ("refreshed JWKS signing keys count={nkeys}", "已刷新 JWKS 签名密钥 count={nkeys}")),
    Benign(("search",), ("index products-v3 refreshed segments={segs}", "索引 products-v3 已刷新 segments={segs}")),
)
