"""Anomaly builders: each turns the plan of a normal flow into an anomalous one, with its explanation.

Keyword anomalies (timeout, connection_failure, ...) cut the flow at a failing call and add the
failure lines; on ``hard`` they are often phrased at WARN or INFO level. The subtle ones change
the flow without a telltale word: a missing step, two steps swapped, a storm of retry lines that
a normal flow also shows once, a latency 20-100x out of its range.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.labels import SEVERITIES
from data_gen.catalog import HTTP_SERVICES, RETRY_BACKOFF, RETRY_TEXT, SERVICE_PORTS, Flow, Step, T, service_name

SUBTLE_TYPES: tuple[str, ...] = ("missing_step", "out_of_order", "retry_storm", "latency_spike")
CRITICAL_SERVICES = ("payments", "database", "auth")

TYPE_TITLES: dict[str, T] = {
    "timeout": ("Timeout", "超时"),
    "connection_failure": ("Connection failure", "连接失败"),
    "database_error": ("Database error", "数据库错误"),
    "service_call_failure": ("Downstream service call failure", "下游服务调用失败"),
    "resource_exhaustion": ("Resource exhaustion", "资源耗尽"),
    "permission_error": ("Permission error", "权限错误"),
    "missing_step": ("Missing step", "缺失步骤"),
    "out_of_order": ("Out-of-order steps", "步骤乱序"),
    "retry_storm": ("Retry storm", "重试风暴"),
    "latency_spike": ("Latency spike", "延迟突增"),
}
BASE_SEVERITY: dict[str, str] = {
    "timeout": "medium",
    "connection_failure": "high",
    "database_error": "high",
    "service_call_failure": "medium",
    "resource_exhaustion": "high",
    "permission_error": "medium",
    "missing_step": "high",
    "out_of_order": "medium",
    "retry_storm": "medium",
    "latency_spike": "low",
}

# service-specific checks appended to latency/timeout advice
LATENCY_HINTS: dict[str, T] = {
    "database": (
        "; look for slow queries and lock waits in pg_stat_activity",
        "；在 pg_stat_activity 中排查慢查询和锁等待",
    ),
    "cache": ("; check Redis latency, memory and evictions", "；检查 Redis 延迟、内存和淘汰情况"),
    "queue": (
        "; check Kafka broker request latency and under-replicated partitions",
        "；检查 Kafka broker 请求延迟和副本不足的分区",
    ),
    "payments": ("; check the payment provider's status page and API latency", "；检查支付渠道的状态页和接口延迟"),
    "search": ("; check Elasticsearch cluster health and the slow log", "；检查 Elasticsearch 集群健康状态和慢日志"),
    "notification": ("; check the SMTP/SMS provider's latency", "；检查邮件/短信服务商的延迟"),
    "auth": ("; check the identity provider and token introspection latency", "；检查身份提供方和令牌校验的延迟"),
    "inventory": ("; check the stock queries it runs against the database", "；检查其对数据库的库存查询"),
    "orders": ("; check the order queries it runs against the database", "；检查其对数据库的订单查询"),
    "gateway": ("; check gateway CPU and upstream connection reuse", "；检查网关 CPU 和上游连接复用"),
}
CONNECT_HINTS: dict[str, T] = {
    "database": (
        "; verify PostgreSQL accepts connections (pg_isready) and max_connections is not reached",
        "；用 pg_isready 确认 PostgreSQL 可接受连接且未达到 max_connections",
    ),
    "cache": ("; check the Redis sentinel/cluster failover state", "；检查 Redis 哨兵/集群的故障转移状态"),
    "queue": (
        "; check the Kafka listeners and advertised.listeners",
        "；检查 Kafka 的 listeners 和 advertised.listeners 配置",
    ),
}
CLOSE_REASONS: dict[str, tuple[int, T]] = {
    "timeout": (504, ("Gateway Timeout", "网关超时")),
    "connection_failure": (503, ("Service Unavailable", "服务不可用")),
    "database_error": (500, ("Internal Server Error", "服务器内部错误")),
    "service_call_failure": (502, ("Bad Gateway", "错误网关")),
    "resource_exhaustion": (503, ("Service Unavailable", "服务不可用")),
    "permission_error": (403, ("Forbidden", "禁止访问")),
}
_FAIL_CLOSE: T = (
    "request failed {method} {path} status={status} ({reason}) request_id={rid}",
    "请求失败 {method} {path} status={status}（{reason}）request_id={rid}",
)
_JOB_FAILED: T = ("job {job} failed, nacked for redelivery", "任务 {job} 失败，已 nack 等待重新投递")
_JOB_NACKED: T = ("job {job} nacked, redelivery scheduled", "任务 {job} 已 nack，已安排重新投递")


@dataclass
class Event:
    """A rendered log message of one service, before its timestamp and layout are added."""

    service: str
    level: str
    message: str
    advance_ms: int = 0


@dataclass
class PlanItem:
    """One line of a sequence plan: a flow step still to render, or a ready event."""

    step: Step | None = None
    event: Event | None = None
    base: bool = False  # a step of the flow's fixed skeleton (not a rare-path step)
    lat: int | None = None  # latency override (latency spike)
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class Anomaly:
    """An anomalous plan and its explanation."""

    plan: list[PlanItem]
    root_cause_service: str
    root_cause: str
    severity: str
    suggested_response: str


@dataclass
class Situation:
    """What a builder works on: the flow, its normal plan, the sequence values and the knobs."""

    flow: Flow
    plan: list[PlanItem]
    ctx: dict[str, Any]
    rng: random.Random
    lang: str
    difficulty: str

    @property
    def li(self) -> int:
        return 1 if self.lang == "zh" else 0

    @property
    def hard(self) -> bool:
        return self.difficulty == "hard"

    def name(self, service: str) -> str:
        return service_name(service, self.lang)

    def fmt(self, text: T, **values: Any) -> str:
        return text[self.li].format(**{**self.ctx, **values})

    def primary_level(self) -> str:
        if not self.hard:
            return "ERROR"
        return self.rng.choices(["ERROR", "WARN", "INFO"], weights=[25, 40, 35])[0]

    def secondary_level(self) -> str:
        return self.rng.choice(["ERROR", "WARN"] if not self.hard else ["WARN", "INFO"])

    def pick(self, easy: list[T], hard: list[T]) -> T:
        return self.rng.choice(hard if self.hard else easy)


def severity_for(base: str, service: str | None) -> str:
    """The base severity of a type, one level up when the root cause is a critical service."""
    level = SEVERITIES.index(base)
    if service in CRITICAL_SERVICES:
        level = min(level + 1, len(SEVERITIES) - 1)
    return SEVERITIES[level]


def _hint(hints: dict[str, T], service: str, li: int) -> str:
    return hints[service][li] if service in hints else ""


def _candidates(plan: list[PlanItem], accept: Callable[[Step], bool], min_pos: int = 3) -> list[int]:
    """Positions of skeleton steps (not the last line) that ``accept`` takes, at ``min_pos`` or later."""
    return [
        i
        for i, item in enumerate(plan[:-1])
        if i >= min_pos and item.base and item.step is not None and accept(item.step)
    ]


def _resource(s: Situation, step: Step) -> str:
    return step.resource.format(**s.ctx)


def _close(s: Situation, anomaly_type: str) -> PlanItem:
    """The line that ends a failed flow: the gateway's error response or the job's nack."""
    code, reason = CLOSE_REASONS[anomaly_type]
    final = s.flow.steps[-1]
    if s.flow.method is None:
        if s.hard:
            return PlanItem(event=Event("queue", "INFO", s.fmt(_JOB_NACKED)))
        return PlanItem(event=Event("queue", "ERROR", s.fmt(_JOB_FAILED)))
    if s.hard:  # the normal completion line with another status: no level or word gives it away
        return PlanItem(step=final, base=False, overrides={"status": code})
    return PlanItem(event=Event("gateway", "ERROR", s.fmt(_FAIL_CLOSE, status=code, reason=reason[s.li])))


def _cut(s: Situation, pos: int, events: list[Event], anomaly_type: str) -> list[PlanItem]:
    return [*s.plan[:pos], *(PlanItem(event=e) for e in events), _close(s, anomaly_type)]


# ---------------------------------------------------------------- keyword anomalies


def build_timeout(s: Situation) -> Anomaly | None:
    """A call that does not answer within its deadline."""
    spots = _candidates(s.plan, lambda st: st.caller is not None)
    if not spots:
        return None
    pos = s.rng.choice(spots)
    step = s.plan[pos].step
    assert step is not None and step.caller is not None
    callee, caller = step.service, step.caller
    deadline = s.rng.choice([1000, 2000, 3000, 5000])
    names = {"caller": s.name(caller), "callee": s.name(callee), "deadline": deadline}
    primary = s.pick(
        [
            (
                "call to {callee} timed out after {deadline} ms request_id={rid}",
                "{caller}调用{callee}超时（超过 {deadline} ms）request_id={rid}",
            )
        ],
        [
            (
                "{callee} did not respond within deadline={deadline}ms, returning degraded response request_id={rid}",
                "{callee}未在 deadline={deadline}ms 内响应，返回降级结果 request_id={rid}",
            ),
            (
                "upstream {callee} DEADLINE_EXCEEDED after {deadline} ms request_id={rid}",
                "上游{callee}响应超出时限 DEADLINE_EXCEEDED，已等待 {deadline} ms request_id={rid}",
            ),
        ],
    )
    if callee == "database":
        second: T = (
            "canceling statement due to statement timeout ({deadline} ms) on {resource}",
            "语句超时（{deadline} ms），已取消对 {resource} 的语句",
        )
    else:
        second = (
            "request {rid} from {caller} cancelled by client after {deadline} ms",
            "来自{caller}的请求 {rid} 在 {deadline} ms 后被客户端取消",
        )
    events = [
        Event(caller, s.primary_level(), s.fmt(primary, **names), deadline),
        Event(callee, s.secondary_level(), s.fmt(second, resource=_resource(s, step), **names)),
    ]
    step_name = step.name[s.li]
    root = s.fmt(
        (
            "{callee} did not answer {caller} within the {deadline} ms deadline during the {step} step",
            "{callee}在“{step}”步骤中未能在 {deadline} ms 截止时间内响应{caller}",
        ),
        step=step_name,
        **names,
    )
    response = s.fmt(
        (
            "Check {callee} latency and saturation (CPU, GC pauses, worker pool) and its own dependencies{hint}; "
            "confirm the {deadline} ms deadline of {caller}->{callee} fits its normal latency, scale out {callee} "
            "if it is overloaded, and keep {caller}'s retries bounded (backoff, circuit breaker).",
            "检查{callee}的延迟和资源饱和度（CPU、GC 停顿、工作线程池）及其下游依赖{hint}；确认{caller}->{callee} "
            "的 {deadline} ms 超时设置与正常延迟相符，{callee}过载时扩容，并限制{caller}的重试（退避、熔断）。",
        ),
        hint=_hint(LATENCY_HINTS, callee, s.li),
        **names,
    )
    return Anomaly(_cut(s, pos, events, "timeout"), callee, root, severity_for("medium", callee), response)


def build_connection_failure(s: Situation) -> Anomaly | None:
    """A call whose connection is refused or reset: the callee is down or unreachable."""
    spots = _candidates(s.plan, lambda st: st.caller is not None)
    if not spots:
        return None
    pos = s.rng.choice(spots)
    step = s.plan[pos].step
    assert step is not None and step.caller is not None
    callee, caller = step.service, step.caller
    addr = f"{s.ctx['svc_ip'][callee]}:{SERVICE_PORTS[callee]}"
    names = {"caller": s.name(caller), "callee": s.name(callee), "addr": addr}
    primary = s.pick(
        [
            (
                "connection refused to {callee} at {addr} (ECONNREFUSED) request_id={rid}",
                "连接{callee} {addr} 被拒绝（ECONNREFUSED）request_id={rid}",
            ),
            (
                "could not connect to {callee} at {addr}: connection reset by peer request_id={rid}",
                "无法连接{callee} {addr}：连接被对端重置 request_id={rid}",
            ),
        ],
        [
            (
                "connection to {callee} at {addr} reset by peer, marking endpoint unhealthy",
                "与{callee} {addr} 的连接被对端重置，已将该端点标记为不健康",
            ),
            (
                "circuit breaker for {callee} opened after repeated connect errors to {addr}",
                "连续连接{callee} {addr} 出错，熔断器已打开",
            ),
        ],
    )
    second = s.pick(
        [("no healthy upstream for {callee}: 0/3 endpoints reachable", "{callee}没有可用的健康实例：0/3 个端点可达")],
        [("request {rid} short-circuited, {callee} unavailable", "请求 {rid} 被熔断，{callee}不可用")],
    )
    events = [
        Event(caller, s.primary_level(), s.fmt(primary, **names), s.rng.randint(1, 9)),
        Event(caller, s.secondary_level(), s.fmt(second, **names)),
    ]
    root = s.fmt(
        (
            "{caller} could not open a connection to {callee} at {addr}: {callee} is down or unreachable from {caller}",
            "{caller}无法与{callee}（{addr}）建立连接：{callee}已宕机或网络不可达",
        ),
        **names,
    )
    response = s.fmt(
        (
            "Check that {callee} instances are running and ready (pods, endpoints, recent restarts or crash loops) "
            "and that {caller} can reach {addr} (DNS, security groups, network policies){hint}; restart or fail "
            "over {callee} if it is down.",
            "检查{callee}实例是否在运行且就绪（Pod、Endpoints、近期重启或 CrashLoop），并确认{caller}能访问 {addr}"
            "（DNS、安全组、网络策略）{hint}；如{callee}已宕机，重启或切换到备用实例。",
        ),
        hint=_hint(CONNECT_HINTS, callee, s.li),
        **names,
    )
    severity = severity_for("high", callee)
    return Anomaly(_cut(s, pos, events, "connection_failure"), callee, root, severity, response)


_DB_VARIANTS: tuple[dict[str, Any], ...] = (
    {
        "ops": ("INSERT", "UPDATE"),
        "base": "medium",
        "db": (
            "deadlock detected on table {resource}; transaction aborted (pid {dbpid})",
            "表 {resource} 检测到死锁，事务已中止（pid {dbpid}）",
        ),
        "caller_easy": (
            "query on {resource} failed, transaction rolled back request_id={rid}",
            "{resource} 表查询失败，事务已回滚 request_id={rid}",
        ),
        "caller_hard": (
            "transaction on {resource} rolled back, will retry later request_id={rid}",
            "{resource} 表上的事务已回滚，稍后重试 request_id={rid}",
        ),
        "root": (
            "concurrent transactions of {caller} deadlocked in the database on the {resource} table",
            "{caller}的并发事务在数据库的 {resource} 表上发生死锁",
        ),
        "response": (
            "Read the deadlock report in the database (PostgreSQL) log for table {resource}; make {caller} lock rows in a "
            "consistent order and keep its transactions short, then retry the aborted transaction.",
            "查看 PostgreSQL 日志中 {resource} 表的死锁报告；让{caller}按固定顺序加锁并缩短事务，然后重试被中止的事务。",
        ),
    },
    {
        "ops": ("INSERT",),
        "base": "medium",
        "db": (
            'duplicate key value violates unique constraint "{resource}_pkey"',
            '重复键违反唯一约束 "{resource}_pkey"',
        ),
        "caller_easy": ("insert into {resource} failed request_id={rid}", "写入 {resource} 表失败 request_id={rid}"),
        "caller_hard": (
            "insert into {resource} not applied, record already exists request_id={rid}",
            "写入 {resource} 表未生效，记录已存在 request_id={rid}",
        ),
        "root": (
            "the database rejected {caller}'s insert into {resource}: the key already exists (a duplicate submission)",
            "数据库拒绝了{caller}对 {resource} 表的写入：主键已存在（重复提交）",
        ),
        "response": (
            "Check {caller} for duplicate submissions of the same key on {resource} (a retry that re-inserts or a "
            "missing idempotency key); deduplicate the request and use INSERT ... ON CONFLICT or an idempotency key.",
            "检查{caller}是否对 {resource} 表重复提交同一主键（重试时重复插入或缺少幂等键）；对请求去重，"
            "并使用 INSERT ... ON CONFLICT 或幂等键。",
        ),
    },
    {
        "ops": ("SELECT", "INSERT", "UPDATE"),
        "base": "high",
        "db": (
            'column "{column}" of relation "{resource}" does not exist',
            '关系 "{resource}" 的列 "{column}" 不存在',
        ),
        "caller_easy": (
            "query on {resource} failed: schema mismatch request_id={rid}",
            "{resource} 表查询失败：表结构不匹配 request_id={rid}",
        ),
        "caller_hard": (
            "query on {resource} returned no result, schema version differs request_id={rid}",
            "{resource} 表查询无结果，表结构版本不一致 request_id={rid}",
        ),
        "root": (
            "{caller} expects a schema change on {resource} (column {column}) that was not applied to the database",
            "{caller}依赖 {resource} 表的结构变更（列 {column}），但该迁移未在数据库上执行",
        ),
        "response": (
            "Check the migration history of the database (alembic/flyway); apply the pending migration that adds "
            "{column} to {resource}, or roll back the {caller} release that expects it.",
            "检查数据库的迁移记录（alembic/flyway）；执行为 {resource} 表添加 {column} 列的待执行迁移，或回滚依赖它的{caller}版本。",
        ),
    },
    {
        "ops": ("INSERT", "UPDATE"),
        "base": "high",
        "db": (
            "cannot execute {op} in a read-only transaction on {resource}",
            "无法在只读事务中对 {resource} 执行 {op}",
        ),
        "caller_easy": (
            "write to {resource} rejected by database request_id={rid}",
            "数据库拒绝写入 {resource} 表 request_id={rid}",
        ),
        "caller_hard": (
            "write to {resource} deferred, database is read-only request_id={rid}",
            "{resource} 表写入已推迟，数据库处于只读状态 request_id={rid}",
        ),
        "root": (
            "{caller} writes to a read-only database node: a failover left it connected to a replica",
            "{caller}写入的数据库节点为只读：故障切换后它仍连接到副本",
        ),
        "response": (
            "Check the database failover state: make sure {caller} points at the current primary (connection "
            "string/DNS), promote a primary if none is writable, and confirm that writes to {resource} resume.",
            "检查数据库故障切换状态：确认{caller}连接的是当前主库（连接串/DNS），如无可写主库则提升一个主库，并确认 {resource} 表的写入恢复。",
        ),
    },
    {
        "ops": ("SELECT",),
        "base": "medium",
        "db": (
            "canceling statement due to conflict with recovery on {resource}",
            "由于与恢复进程冲突，已取消对 {resource} 的语句",
        ),
        "caller_easy": (
            "read from {resource} failed on replica request_id={rid}",
            "从副本读取 {resource} 表失败 request_id={rid}",
        ),
        "caller_hard": (
            "read from {resource} returned nothing, replica busy replaying WAL request_id={rid}",
            "读取 {resource} 表无结果，副本正在回放 WAL request_id={rid}",
        ),
        "root": (
            "the database replica cancelled {caller}'s query on {resource} because it conflicted with WAL replay",
            "数据库副本因与 WAL 回放冲突而取消了{caller}对 {resource} 表的查询",
        ),
        "response": (
            "The read replica cancels queries that conflict with WAL replay: enable hot_standby_feedback or raise "
            "max_standby_streaming_delay on the replica, keep {caller}'s queries on {resource} short, or route them "
            "to the primary.",
            "只读副本会取消与 WAL 回放冲突的查询：在副本上开启 hot_standby_feedback 或调大 "
            "max_standby_streaming_delay，缩短{caller}对 {resource} 表的查询，或将其路由到主库。",
        ),
    },
)


def _statement(step: Step) -> str:
    """SELECT, INSERT or UPDATE: what a database step runs."""
    return next((op for op in ("INSERT", "UPDATE") if op in step.text[0]), "SELECT")


def build_database_error(s: Situation) -> Anomaly | None:
    """The database rejects a statement: deadlock, duplicate key, schema drift, read-only node."""
    spots = _candidates(s.plan, lambda st: st.service == "database" and st.caller is not None)
    if not spots:
        return None
    pos = s.rng.choice(spots)
    step = s.plan[pos].step
    assert step is not None and step.caller is not None
    caller = step.caller
    op = _statement(step)
    variant = s.rng.choice([v for v in _DB_VARIANTS if op in v["ops"]])
    names = {
        "op": op,
        "caller": s.name(caller),
        "resource": _resource(s, step),
        "dbpid": s.rng.randint(1000, 60000),
        "column": s.rng.choice(["tenant_id", "updated_by", "version", "region"]),
    }
    caller_text = variant["caller_hard"] if s.hard else variant["caller_easy"]
    events = [
        Event("database", s.primary_level(), s.fmt(variant["db"], **names), s.rng.randint(2, 9)),
        Event(caller, s.secondary_level(), s.fmt(caller_text, **names)),
    ]
    root = s.fmt(variant["root"], **names)
    response = s.fmt(variant["response"], **names)
    severity = severity_for(variant["base"], "database")
    return Anomaly(_cut(s, pos, events, "database_error"), "database", root, severity, response)


_EXCEPTIONS: dict[str, tuple[str, str]] = {
    "orders": ("KeyError: 'currency'", "OrderSerializer.to_dict"),
    "payments": ("NullPointerException", "ChargeHandler.capture"),
    "inventory": ("IllegalStateException: reservation ledger out of sync", "ReservationService.reserve"),
    "notification": ("TemplateNotFound: order_confirmation", "EmailRenderer.render"),
    "search": ("IndexOutOfBoundsException", "RankingService.rerank"),
    "auth": ("SigningKeyNotFound: kid missing from JWKS", "TokenVerifier.verify"),
    "gateway": ("NullPointerException", "RouteResolver.resolve"),
}


def build_service_call_failure(s: Situation) -> Anomaly | None:
    """A downstream HTTP service answers with a 5xx because it failed internally."""
    spots = _candidates(s.plan, lambda st: st.service in HTTP_SERVICES and st.caller is not None)
    if not spots:
        return None
    pos = s.rng.choice(spots)
    step = s.plan[pos].step
    assert step is not None and step.caller is not None
    callee, caller = step.service, step.caller
    exc, handler = _EXCEPTIONS[callee]
    code = s.rng.choice([500, 502, 503])
    names = {"caller": s.name(caller), "callee": s.name(callee), "code": code, "exc": exc, "handler": handler}
    primary = s.pick(
        [("call to {callee} failed: HTTP {code} request_id={rid}", "调用{callee}失败：HTTP {code} request_id={rid}")],
        [
            (
                "{callee} responded with status={code}, using fallback request_id={rid}",
                "{callee}返回 status={code}，使用降级逻辑 request_id={rid}",
            ),
            (
                "{callee} answered status={code}, step skipped for request_id={rid}",
                "{callee}返回 status={code}，请求 request_id={rid} 跳过该步骤",
            ),
        ],
    )
    second = s.pick(
        [
            (
                "unhandled exception in {handler} while handling request {rid}: {exc}",
                "处理请求 {rid} 时 {handler} 出现未处理异常：{exc}",
            )
        ],
        [("request {rid} ended in {handler} with {exc}", "请求 {rid} 在 {handler} 中以 {exc} 结束")],
    )
    events = [
        Event(callee, s.secondary_level(), s.fmt(second, **names), s.rng.randint(5, 40)),
        Event(caller, s.primary_level(), s.fmt(primary, **names)),
    ]
    root = s.fmt(
        (
            "{callee} failed while handling {caller}'s {step} request ({exc} in {handler})",
            "{callee}在处理{caller}的“{step}”请求时失败（{handler} 中出现 {exc}）",
        ),
        step=step.name[s.li],
        **names,
    )
    response = s.fmt(
        (
            "Look at {callee}'s error logs and traces for {exc} in {handler}; check whether a recent {callee} "
            "deployment or config change introduced it and roll back if so; keep {caller}'s fallback and circuit "
            "breaker on until {callee} is fixed.",
            "查看{callee}关于 {handler} 中 {exc} 的错误日志和链路追踪；确认是否由{callee}近期的发布或配置变更引入，"
            "如是则回滚；在{callee}修复前保持{caller}的降级和熔断开启。",
        ),
        **names,
    )
    severity = severity_for("medium", callee)
    return Anomaly(_cut(s, pos, events, "service_call_failure"), callee, root, severity, response)


_EXHAUSTION: dict[str, tuple[dict[str, Any], ...]] = {
    "app": (
        {
            "easy": (
                "thread pool exhausted (active={pool}/{pool}, queued={queued}), rejecting request {rid}",
                "线程池耗尽（active={pool}/{pool}，queued={queued}），拒绝请求 {rid}",
            ),
            "hard": (
                "worker queue full ({queued}/{queued}), shedding request {rid}",
                "工作队列已满（{queued}/{queued}），丢弃请求 {rid}",
            ),
            "what": ("worker threads", "工作线程"),
            "response": (
                "Scale out {svc} or raise its worker pool (now {pool}) after checking what holds the threads "
                "(slow downstream calls, locks); add load shedding or rate limits in front of {svc}.",
                "先排查占用线程的原因（慢下游调用、锁），再扩容{svc}或调大其工作线程池（当前 {pool}）；并在{svc}前增加限流或削峰。",
            ),
        },
        {
            "easy": (
                "java.lang.OutOfMemoryError: Java heap space (heap {heap_mb} MB)",
                "java.lang.OutOfMemoryError: Java heap space（堆 {heap_mb} MB）",
            ),
            "hard": (
                "heap usage {pct}% after full GC, allocations stalling",
                "Full GC 后堆使用率仍为 {pct}%，内存分配停滞",
            ),
            "what": ("heap memory", "堆内存"),
            "response": (
                "Check {svc} memory: take a heap dump and look for a leak or an oversized batch or cache; raise "
                "the memory limit or restart the pod, and roll back the latest release if memory grew after it.",
                "检查{svc}的内存：导出堆转储，排查内存泄漏或过大的批次/缓存；提高内存上限或重启 Pod，如内存在最近发布后上涨则回滚。",
            ),
        },
        {
            "easy": (
                "database connection pool exhausted: {pool}/{pool} in use, waited {wait} ms",
                "数据库连接池耗尽：{pool}/{pool} 已占用，等待 {wait} ms",
            ),
            "hard": (
                "all {pool} pooled database connections busy, request {rid} queued",
                "连接池中 {pool} 个数据库连接全部繁忙，请求 {rid} 排队等待",
            ),
            "what": ("database connections", "数据库连接"),
            "response": (
                "{svc}'s database connection pool is exhausted: look for long-running transactions or leaked "
                "connections in {svc}, check the database's max_connections, and size the pool (now {pool}) to match.",
                "{svc}的数据库连接池已耗尽：排查{svc}中的长事务或连接泄漏，检查数据库的 max_connections，并相应调整连接池大小（当前 {pool}）。",
            ),
        },
        {
            "easy": (
                "accept failed: too many open files (ulimit {ulimit})",
                "accept 失败：打开的文件过多（ulimit {ulimit}）",
            ),
            "hard": (
                "open file descriptors at {ulimit}/{ulimit}, new connections deferred",
                "文件描述符已用尽 {ulimit}/{ulimit}，新连接被推迟",
            ),
            "what": ("file descriptors", "文件描述符"),
            "response": (
                "Raise {svc}'s file-descriptor limit (ulimit/LimitNOFILE, now {ulimit}) and look for socket or "
                "file leaks with lsof.",
                "调高{svc}的文件描述符上限（ulimit/LimitNOFILE，当前 {ulimit}），并用 lsof 排查套接字或文件泄漏。",
            ),
        },
    ),
    "database": (
        {
            "easy": (
                "sorry, too many clients already (max_connections={maxc})",
                "客户端连接过多（max_connections={maxc}）",
            ),
            "hard": (
                "connection slots exhausted ({maxc}/{maxc}), new sessions refused",
                "连接槽已用尽（{maxc}/{maxc}），拒绝新会话",
            ),
            "what": ("connection slots", "连接槽"),
            "response": (
                "The database reached max_connections ({maxc}): find the clients holding connections "
                "(pg_stat_activity), put a pooler such as PgBouncer in front or shrink the callers' pools, and "
                "raise max_connections only with memory headroom.",
                "数据库已达到 max_connections（{maxc}）：在 pg_stat_activity 中找出占用连接的客户端，引入 PgBouncer "
                "等连接池或缩小调用方连接池，仅在内存充足时调大 max_connections。",
            ),
        },
        {
            "easy": (
                "could not extend file: No space left on device (disk {pct}% used)",
                "无法扩展文件：设备空间不足（磁盘已用 {pct}%）",
            ),
            "hard": ("disk {pct}% used, writes throttled", "磁盘已用 {pct}%，写入被限流"),
            "what": ("disk space", "磁盘空间"),
            "response": (
                "Free disk space on the database host (VACUUM, drop old partitions, clear the WAL archive "
                "backlog and stale replication slots) and grow the volume.",
                "释放数据库主机磁盘空间（VACUUM、删除旧分区、清理 WAL 归档积压和失效的复制槽），并扩容磁盘。",
            ),
        },
    ),
    "cache": (
        {
            "easy": (
                "OOM command not allowed when used memory > 'maxmemory' ({mem_mb} MB)",
                "OOM：已用内存超过 maxmemory（{mem_mb} MB），命令被拒绝",
            ),
            "hard": (
                "used memory at maxmemory ({mem_mb} MB), writes rejected",
                "已用内存达到 maxmemory（{mem_mb} MB），写入被拒绝",
            ),
            "what": ("memory", "内存"),
            "response": (
                "Redis hit maxmemory ({mem_mb} MB): check maxmemory-policy and big keys, set TTLs on keys that "
                "have none, and raise maxmemory or scale out the cluster.",
                "Redis 达到 maxmemory（{mem_mb} MB）：检查 maxmemory-policy 和大 key，为没有 TTL 的 key 设置过期时间，并调大 maxmemory 或扩容集群。",
            ),
        },
    ),
    "queue": (
        {
            "easy": (
                "broker disk usage {pct}% above high watermark, producers blocked",
                "broker 磁盘使用率 {pct}% 超过高水位，生产者被阻塞",
            ),
            "hard": ("log dir usage {pct}%, produce requests throttled", "日志目录使用率 {pct}%，生产请求被限流"),
            "what": ("broker disk space", "broker 磁盘空间"),
            "response": (
                "Free disk on the Kafka brokers (lower retention.ms/retention.bytes, delete stale topics) or add "
                "volume or brokers; check lagging consumers that keep old segments needed.",
                "释放 Kafka broker 磁盘（调低 retention.ms/retention.bytes、删除废弃 topic）或扩容磁盘/broker；检查导致旧分段无法清理的滞后消费者。",
            ),
        },
    ),
}


def build_resource_exhaustion(s: Situation) -> Anomaly | None:
    """A service out of threads, memory, connections, file descriptors or disk."""
    spots = _candidates(s.plan, lambda st: True)
    if not spots:
        return None
    pos = s.rng.choice(spots)
    step = s.plan[pos].step
    assert step is not None
    svc = step.service
    kind = svc if svc in _EXHAUSTION else "app"
    variant = s.rng.choice(_EXHAUSTION[kind])
    values = {
        "svc": s.name(svc),
        "pool": s.rng.choice([50, 100, 200]),
        "queued": s.rng.choice([500, 1000, 2000]),
        "heap_mb": s.rng.choice([1024, 2048, 4096]),
        "pct": s.rng.randint(95, 99),
        "wait": s.rng.choice([1000, 3000, 5000]),
        "ulimit": s.rng.choice([1024, 4096]),
        "maxc": s.rng.choice([100, 200, 500]),
        "mem_mb": s.rng.choice([512, 1024, 2048]),
    }
    text = variant["hard"] if s.hard else variant["easy"]
    reporter = step.caller or svc
    second: T = (
        "request {rid} aborted: {svc} has no capacity left",
        "请求 {rid} 已中止：{svc}资源不足",
    )
    events = [
        Event(svc, s.primary_level(), s.fmt(text, **values), s.rng.randint(1, 20)),
        Event(reporter, s.secondary_level(), s.fmt(second, **values)),
    ]
    root = s.fmt(
        ("{svc} ran out of {what} during the {step} step", "{svc}在“{step}”步骤中{what}耗尽"),
        what=variant["what"][s.li],
        step=step.name[s.li],
        **values,
    )
    response = s.fmt(variant["response"], **values)
    severity = severity_for("high", svc)
    return Anomaly(_cut(s, pos, events, "resource_exhaustion"), svc, root, severity, response)


_PERMISSION: dict[str, dict[str, Any]] = {
    "database": {
        "easy": (
            "permission denied for table {resource} (role svc_{caller_id})",
            "角色 svc_{caller_id} 对表 {resource} 没有权限（permission denied）",
        ),
        "hard": (
            "role svc_{caller_id} has no {priv} privilege on {resource}, statement skipped",
            "角色 svc_{caller_id} 对 {resource} 没有 {priv} 权限，语句被跳过",
        ),
        "perm": ("the {priv} privilege on table {resource}", "表 {resource} 的 {priv} 权限"),
        "response": (
            "Grant role svc_{caller_id} the {priv} privilege on {resource} (GRANT {priv} ON {resource} TO svc_{caller_id}) "
            "and check the last migration or role change that revoked it.",
            "为角色 svc_{caller_id} 授予 {resource} 表的 {priv} 权限（GRANT {priv} ON {resource} TO svc_{caller_id}），并检查撤销该权限的最近一次迁移或角色变更。",
        ),
    },
    "cache": {
        "easy": (
            "NOPERM user svc-{caller_id} has no permissions to run the '{resource}' command",
            "NOPERM：用户 svc-{caller_id} 无权执行 '{resource}' 命令",
        ),
        "hard": (
            "ACL check: svc-{caller_id} may not run '{resource}', command refused",
            "ACL 检查：svc-{caller_id} 不允许执行 '{resource}'，命令被拒绝",
        ),
        "perm": ("the Redis ACL for the {resource} command", "执行 {resource} 命令的 Redis ACL 权限"),
        "response": (
            "Update the Redis ACL of svc-{caller_id} to allow {resource} (ACL SETUSER) and check recent ACL or "
            "credential changes.",
            "更新 svc-{caller_id} 的 Redis ACL 以允许 {resource} 命令（ACL SETUSER），并检查近期的 ACL 或凭据变更。",
        ),
    },
    "queue": {
        "easy": (
            "not authorized to access topic {resource} (principal User:svc-{caller_id}, operation WRITE)",
            "无权访问 topic {resource}（principal User:svc-{caller_id}，operation WRITE）",
        ),
        "hard": (
            "produce to {resource} refused for principal User:svc-{caller_id}",
            "principal User:svc-{caller_id} 向 {resource} 的写入被拒绝",
        ),
        "perm": ("a WRITE ACL on topic {resource}", "topic {resource} 的 WRITE ACL"),
        "response": (
            "Add a Kafka ACL that lets User:svc-{caller_id} WRITE to topic {resource} and check recent ACL or "
            "credential changes.",
            "添加允许 User:svc-{caller_id} 向 topic {resource} 执行 WRITE 的 Kafka ACL，并检查近期的 ACL 或凭据变更。",
        ),
    },
    "http": {
        "easy": (
            "access denied: principal svc-{caller_id} lacks scope {resource} (status=403)",
            "拒绝访问：principal svc-{caller_id} 缺少 scope {resource}（status=403）",
        ),
        "hard": (
            "access check: svc-{caller_id} not granted {resource}, request not processed",
            "权限检查：svc-{caller_id} 未被授予 {resource}，请求未处理",
        ),
        "perm": ("the {resource} scope", "{resource} scope"),
        "response": (
            "Grant the svc-{caller_id} service account the {resource} scope in auth (or fix its client "
            "credentials) and review recent RBAC changes of {callee}.",
            "在认证服务中为 svc-{caller_id} 服务账号授予 {resource} scope（或修复其客户端凭据），并审查{callee}近期的 RBAC 变更。",
        ),
    },
}


def build_permission_error(s: Situation) -> Anomaly | None:
    """The callee refuses the caller: a missing grant, ACL or scope."""
    spots = _candidates(s.plan, lambda st: st.caller is not None and st.resource != "")
    if not spots:
        return None
    pos = s.rng.choice(spots)
    step = s.plan[pos].step
    assert step is not None and step.caller is not None
    callee, caller = step.service, step.caller
    variant = _PERMISSION[callee if callee in _PERMISSION else "http"]
    names = {
        "caller": s.name(caller),
        "callee": s.name(callee),
        "caller_id": caller,
        "resource": _resource(s, step),
        "priv": s.rng.choice(["INSERT", "UPDATE", "SELECT"]),
    }
    primary = variant["hard"] if s.hard else variant["easy"]
    second = s.pick(
        [
            (
                "call to {callee} rejected as forbidden (403) request_id={rid}",
                "调用{callee}被拒绝（403 Forbidden）request_id={rid}",
            )
        ],
        [("{callee} refused request {rid}: not authorized", "{callee}拒绝了请求 {rid}：未授权")],
    )
    events = [
        Event(callee, s.primary_level(), s.fmt(primary, **names), s.rng.randint(1, 9)),
        Event(caller, s.secondary_level(), s.fmt(second, **names)),
    ]
    perm = s.fmt(variant["perm"], **names)
    root = s.fmt(
        (
            "{callee} rejected {caller}'s {step} request because svc-{caller_id} lacks {perm}",
            "{callee}拒绝了{caller}的“{step}”请求，因为 svc-{caller_id} 缺少 {perm}",
        ),
        step=step.name[s.li],
        perm=perm,
        **names,
    )
    response = s.fmt(variant["response"], **names)
    severity = severity_for("medium", callee)
    return Anomaly(_cut(s, pos, events, "permission_error"), callee, root, severity, response)


# ---------------------------------------------------------------- subtle anomalies


def _inner_base(plan: list[PlanItem]) -> list[int]:
    """Positions of skeleton steps other than the first and the last line."""
    return [i for i, item in enumerate(plan[1:-1], start=1) if item.base and item.step is not None]


def _owner(step: Step) -> str:
    """The service whose code decides whether and when a step runs."""
    if step.service == "auth" and step.caller == "gateway":
        return "gateway"  # the gateway enforces authentication
    if step.caller in (None, "gateway"):
        return step.service  # the service's own handling of the request
    return step.caller


def build_missing_step(s: Situation) -> Anomaly | None:
    """A required step silently absent; the request still completes."""
    spots = _inner_base(s.plan)
    if not spots:
        return None
    pos = s.rng.choice(spots)
    step = s.plan[pos].step
    assert step is not None
    svc = step.service
    names = {
        "service": s.name(svc),
        "caller": s.name(_owner(step)),
        "step": step.name[s.li],
        "flow": s.flow.title[s.li],
    }
    plan = [item for i, item in enumerate(s.plan) if i != pos]
    root = s.fmt(
        (
            "the {flow} flow skipped the {step} step of {service}, yet the request completed",
            "{flow}流程跳过了{service}的“{step}”步骤，但请求仍然完成",
        ),
        **names,
    )
    response = s.fmt(
        (
            "Find out why {caller} skipped the {step} step of {service} (feature flag, code path, swallowed error) "
            "and reconcile {ref}: check that the data it touched is consistent and replay the missing step if needed.",
            "排查{caller}为何跳过了{service}的“{step}”步骤（功能开关、代码分支、被吞掉的异常），并核对{ref}："
            "确认相关数据一致，必要时补做缺失的步骤。",
        ),
        **names,
    )
    culprit = _owner(step)
    return Anomaly(plan, culprit, root, severity_for("high", culprit), response)


def build_out_of_order(s: Situation) -> Anomaly | None:
    """Two steps of the skeleton in the wrong order."""
    spots = _inner_base(s.plan)
    if len(spots) < 3:
        return None
    gap = 1 if s.hard and s.rng.random() < 0.7 else s.rng.randint(2, min(3, len(spots) - 1))
    i = s.rng.randrange(len(spots) - gap)
    a_pos, b_pos = spots[i], spots[i + gap]
    plan = list(s.plan)
    plan[a_pos], plan[b_pos] = plan[b_pos], plan[a_pos]
    a, b = s.plan[a_pos].step, s.plan[b_pos].step
    assert a is not None and b is not None
    names = {
        "a_step": a.name[s.li],
        "a_svc": s.name(a.service),
        "b_step": b.name[s.li],
        "b_svc": s.name(b.service),
        "flow": s.flow.title[s.li],
        "culprit": s.name(_owner(b)),
    }
    root = s.fmt(
        (
            "the {b_step} step ({b_svc}) ran before the {a_step} step ({a_svc}), which must come first in the {flow} flow",
            "{flow}流程中“{b_step}”（{b_svc}）先于“{a_step}”（{a_svc}）执行，而后者必须在前",
        ),
        **names,
    )
    response = s.fmt(
        (
            "Look for a race in {culprit}: '{b_step}' must wait until '{a_step}' has finished; make the call "
            "sequential or enforce the order through the saga/outbox, then check that {ref} left consistent state.",
            "排查{culprit}中的竞态：“{b_step}”必须等待“{a_step}”完成；将调用改为顺序执行或通过 saga/outbox 保证顺序，"
            "然后确认{ref}的数据状态一致。",
        ),
        **names,
    )
    culprit = _owner(b)
    return Anomaly(plan, culprit, root, severity_for("medium", culprit), response)


def retry_events(s: Situation, caller: str, callee: str, count: int, max_attempts: int) -> list[Event]:
    """``count`` INFO retry lines of ``caller`` towards ``callee``, with growing backoff in one decade."""
    backoffs = sorted(s.rng.randint(*RETRY_BACKOFF) for _ in range(count))
    return [
        Event(
            caller,
            "INFO",
            s.fmt(RETRY_TEXT, callee=s.name(callee), attempt=k + 2, max_attempts=max_attempts, backoff=b),
            b,
        )
        for k, b in enumerate(backoffs)
    ]


def build_retry_storm(s: Situation, max_lines: int = 15) -> Anomaly | None:
    """Many retries of one call before it succeeds (a normal flow retries at most once)."""
    spots = [i for i, item in enumerate(s.plan) if item.base and item.step is not None and item.step.caller]
    room = max_lines - len(s.plan)
    if not spots or room < 4:
        return None
    pos = s.rng.choice(spots)
    step = s.plan[pos].step
    assert step is not None and step.caller is not None
    callee, caller = step.service, step.caller
    count = min(room, s.rng.randint(4, 7) if s.hard else s.rng.randint(5, 7))
    max_attempts = count + 1 + s.rng.randint(0, 2)
    events = retry_events(s, caller, callee, count, max_attempts)
    plan = [*s.plan[:pos], *(PlanItem(event=e) for e in events), *s.plan[pos:]]
    names = {"caller": s.name(caller), "callee": s.name(callee), "n": count, "step": step.name[s.li]}
    root = s.fmt(
        (
            "{caller} retried {callee} {n} times within one request before the {step} step succeeded",
            "{caller}在一次请求中重试调用{callee} {n} 次后“{step}”步骤才成功",
        ),
        **names,
    )
    response = s.fmt(
        (
            "Check {callee} for the transient errors behind the retries{hint}; cap {caller}'s retries (exponential "
            "backoff with jitter, a retry budget) and add a circuit breaker so retries do not amplify load on {callee}.",
            "排查导致重试的{callee}瞬时错误{hint}；限制{caller}的重试（带抖动的指数退避、重试预算），并增加熔断，避免重试放大{callee}的负载。",
        ),
        hint=_hint(LATENCY_HINTS, callee, s.li),
        **names,
    )
    return Anomaly(plan, callee, root, severity_for("medium", callee), response)


def build_latency_spike(s: Situation) -> Anomaly | None:
    """One step 20-100x slower than its normal range (50-100x on easy); nothing else changes."""
    spots = [i for i in _inner_base(s.plan) if (st := s.plan[i].step) is not None and st.lat]
    if not spots:
        return None
    pos = s.rng.choice(spots)
    step = s.plan[pos].step
    assert step is not None and step.lat is not None
    lo, hi = step.lat
    factor = s.rng.uniform(20, 100) if s.hard else s.rng.uniform(50, 100)
    value = round(s.rng.randint(lo, hi) * factor)
    plan = list(s.plan)
    plan[pos] = PlanItem(step=step, base=True, lat=value)
    svc = step.service
    names = {
        "service": s.name(svc),
        "step": step.name[s.li],
        "value": value,
        "factor": round(factor),
        "lo": lo,
        "hi": hi,
    }
    root = s.fmt(
        (
            "the {step} step in {service} took {value} ms, about {factor}x its normal {lo}-{hi} ms",
            "{service}的“{step}”步骤耗时 {value} ms，约为正常范围 {lo}-{hi} ms 的 {factor} 倍",
        ),
        **names,
    )
    response = s.fmt(
        (
            "Check {service} around that time for saturation, GC pauses or a slow dependency{hint}; compare with its "
            "latency dashboards and scale out or roll back a recent change if the spike repeats.",
            "检查{service}在该时段的资源饱和、GC 停顿或慢依赖{hint}；对照其延迟监控面板，如突增反复出现则扩容或回滚近期变更。",
        ),
        hint=_hint(LATENCY_HINTS, svc, s.li),
        **names,
    )
    return Anomaly(plan, svc, root, severity_for("low", svc), response)


BUILDERS: dict[str, Callable[[Situation], Anomaly | None]] = {
    "timeout": build_timeout,
    "connection_failure": build_connection_failure,
    "database_error": build_database_error,
    "service_call_failure": build_service_call_failure,
    "resource_exhaustion": build_resource_exhaustion,
    "permission_error": build_permission_error,
    "missing_step": build_missing_step,
    "out_of_order": build_out_of_order,
    "retry_storm": build_retry_storm,
    "latency_spike": build_latency_spike,
}
