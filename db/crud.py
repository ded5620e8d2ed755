"""Detections and explanations: create, read, list with filters, save.

These functions only flush; the caller commits (so that detections and their queued jobs go in
one transaction). Every returned object has its ``explanation`` loaded (None when there is none).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Select, cast, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload
from sqlalchemy.orm.attributes import set_committed_value

from db._dialect import dialect_name, insert_for
from db.base import utcnow
from db.models import Detection, Explanation

DETECTION_FIELDS = frozenset(
    {
        "id",
        "created_at",
        "sequence_id",
        "log_entries",
        "score",
        "is_anomaly",
        "risk_level",
        "threshold",
        "model_version",
        "window_info",
        "top_lines",
        "cluster_id",
        "cluster_description",
        "request_id",
        "source",
        "service",
    }
)
EXPLANATION_FIELDS = frozenset(
    {
        "category",
        "severity",
        "summary",
        "root_cause",
        "suggested_response",
        "model",
        "base",
        "lang",
        "latency_ms",
        "confidence",
    }
)
MAX_PAGE = 1000
MAX_BUCKETS = 500
MAX_FACETS = 200
UNEXPLAINED = "unexplained"  # the timeline's category of anomalies without an explanation


def _check_keys(given: Iterable[str], allowed: frozenset[str], what: str) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ValueError(f"unknown {what} field(s) {unknown}; known: {sorted(allowed)}")


async def create_detections(session: AsyncSession, items: Iterable[Mapping[str, Any]]) -> list[Detection]:
    """Insert detections given as mappings of column names (``sequence_id`` generated when absent)."""
    rows: list[Detection] = []
    for item in items:
        _check_keys(item, DETECTION_FIELDS, "detection")
        fields = dict(item)
        if not fields.get("sequence_id"):
            fields["sequence_id"] = f"seq-{uuid.uuid4().hex[:16]}"
        # explanation/jobs set explicitly: nothing to lazy-load later (which async sessions cannot do)
        rows.append(Detection(**fields, explanation=None, jobs=[]))
    session.add_all(rows)
    await session.flush()
    return rows


async def get_detection(session: AsyncSession, detection_id: str) -> Detection | None:
    """One detection with its explanation loaded, or None."""
    stmt = (
        select(Detection)
        .where(Detection.id == detection_id)
        .options(selectinload(Detection.explanation))
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(stmt)).one_or_none()


def _filtered(
    stmt: Select[Any],
    since: datetime | None,
    until: datetime | None,
    anomalous_only: bool,
    category: str | None,
    risk: Collection[str] | None = None,
    service: str | None = None,
) -> Select[Any]:
    if since is not None:
        stmt = stmt.where(Detection.created_at >= since)
    if until is not None:
        stmt = stmt.where(Detection.created_at < until)
    if anomalous_only:
        stmt = stmt.where(Detection.is_anomaly.is_(True))
    if risk:
        stmt = stmt.where(Detection.risk_level.in_(sorted(set(risk))))
    if service is not None:
        stmt = stmt.where(Detection.service == service)
    if category is not None:
        stmt = stmt.join(Explanation, Explanation.detection_id == Detection.id).where(Explanation.category == category)
    return stmt


async def list_detections(
    session: AsyncSession,
    since: datetime | None = None,
    until: datetime | None = None,
    anomalous_only: bool = False,
    category: str | None = None,
    limit: int = 50,
    offset: int = 0,
    risk: Collection[str] | None = None,
    service: str | None = None,
) -> tuple[list[Detection], int]:
    """A page of detections, newest first, and the total matching the filters.

    ``since`` is inclusive, ``until`` exclusive (naive datetimes are read as UTC); ``category``
    keeps the detections whose explanation has that category, ``risk`` those of the given risk
    levels, ``service`` those from that service.
    """
    if not 0 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 0 and {MAX_PAGE}, got {limit}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    total = (
        await session.execute(
            _filtered(select(func.count(Detection.id)), since, until, anomalous_only, category, risk, service)
        )
    ).scalar_one()
    page = (
        _filtered(select(Detection), since, until, anomalous_only, category, risk, service)
        .options(selectinload(Detection.explanation))
        .execution_options(populate_existing=True)
        .order_by(Detection.created_at.desc(), Detection.id.desc())
        .limit(limit)
        .offset(offset)
    )
    rows = list((await session.scalars(page)).all())
    return rows, int(total)


async def save_explanation(
    session: AsyncSession, detection_id: str, explanation_fields: Mapping[str, Any]
) -> Explanation:
    """Store the explanation of a detection, replacing any earlier one (an atomic upsert)."""
    _check_keys(explanation_fields, EXPLANATION_FIELDS, "explanation")
    values = {**explanation_fields, "detection_id": detection_id, "created_at": utcnow()}
    values.setdefault("lang", "en")
    stmt = insert_for(session, Explanation).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=[Explanation.detection_id],
        set_={k: getattr(stmt.excluded, k) for k in values if k != "detection_id"},
    )
    await session.execute(stmt)
    saved = (
        await session.scalars(
            select(Explanation)
            .where(Explanation.detection_id == detection_id)
            .execution_options(populate_existing=True)
        )
    ).one()
    detection = session.sync_session.identity_map.get(session.sync_session.identity_key(Detection, detection_id))
    if detection is not None:  # keep a detection already loaded in this session in step
        set_committed_value(detection, "explanation", saved)
    return saved


def _epoch_seconds(session: AsyncSession, column: Any) -> ColumnElement[int]:
    """Whole seconds since 1970 of a timestamp column, in SQL (SQLite keeps naive UTC text)."""
    if dialect_name(session) == "sqlite":
        return cast(func.strftime("%s", column), BigInteger)
    return cast(func.floor(func.extract("epoch", column)), BigInteger)


async def anomaly_timeline(
    session: AsyncSession,
    since: datetime,
    until: datetime,
    bucket_seconds: int,
    risk: Collection[str] | None = None,
    service: str | None = None,
) -> dict[tuple[int, str], int]:
    """Anomalous detections counted per time bucket and explanation category, in the database.

    Keys are ``(bucket index from since, category)``; anomalies not (yet) explained count under
    ``unexplained``. Buckets with no anomaly are absent.
    """
    if bucket_seconds < 1:
        raise ValueError(f"bucket_seconds must be >= 1, got {bucket_seconds}")
    start = int((since if since.tzinfo else since.replace(tzinfo=UTC)).timestamp())
    bucket = (_epoch_seconds(session, Detection.created_at) - literal(start, BigInteger)) // literal(
        bucket_seconds, BigInteger
    )
    category = func.coalesce(Explanation.category, UNEXPLAINED)
    counted: Any = (  # three columns: _filtered is typed for one
        select(bucket.label("bucket"), category.label("category"), func.count(Detection.id))
        .select_from(Detection)
        .outerjoin(Explanation, Explanation.detection_id == Detection.id)
    )
    stmt = _filtered(counted, since, until, True, None, risk, service)
    rows = (await session.execute(stmt.group_by(bucket, category))).all()
    return {(int(b), str(c)): int(n) for b, c, n in rows}


async def facets(session: AsyncSession) -> tuple[list[str], list[str]]:
    """The explanation categories and the services stored so far (sorted, at most MAX_FACETS each)."""
    categories = await session.scalars(
        select(Explanation.category).distinct().order_by(Explanation.category).limit(MAX_FACETS)
    )
    services = await session.scalars(
        select(Detection.service)
        .where(Detection.service.is_not(None))
        .distinct()
        .order_by(Detection.service)
        .limit(MAX_FACETS)
    )
    return list(categories), [s for s in services if s is not None]
