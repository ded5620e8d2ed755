"""Alert deliveries: one row per detection and sink, pending until sent or out of attempts.

``enqueue`` only flushes (it joins the transaction that stores the detection); ``claim`` and the
``mark_*`` functions commit. A claim leases the delivery (``available_at`` moves past the lease), so
a dispatcher that dies mid-send leaves it to be taken again; on PostgreSQL claimers skip each
other's rows (``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from db._dialect import dialect_name, insert_for
from db.base import utcnow
from db.models import AlertDelivery

PENDING, SENT, FAILED = "pending", "sent", "failed"


async def enqueue(session: AsyncSession, detection_ids: Iterable[str], sinks: Iterable[str]) -> None:
    """A pending delivery per detection and sink; one that exists already is left as it is (no duplicates)."""
    now = utcnow()
    rows = [
        {"detection_id": d, "sink": s, "status": PENDING, "attempts": 0, "available_at": now, "created_at": now}
        for d in detection_ids
        for s in sinks
    ]
    if rows:
        stmt = (
            insert_for(session, AlertDelivery)
            .values(rows)
            .on_conflict_do_nothing(index_elements=[AlertDelivery.detection_id, AlertDelivery.sink])
        )
        await session.execute(stmt)


async def claim(
    session: AsyncSession, limit: int, lease_seconds: float, now: datetime | None = None
) -> list[AlertDelivery]:
    """Take up to ``limit`` due pending deliveries (attempts + 1, leased for ``lease_seconds``); commits."""
    now = now or utcnow()
    pick = (
        select(AlertDelivery.id)
        .where(AlertDelivery.status == PENDING, AlertDelivery.available_at <= now)
        .order_by(AlertDelivery.available_at, AlertDelivery.id)
        .limit(limit)
    )
    if dialect_name(session) == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    stmt = (
        update(AlertDelivery)
        .where(AlertDelivery.id.in_(pick.scalar_subquery()), AlertDelivery.status == PENDING)
        .values(attempts=AlertDelivery.attempts + 1, available_at=now + timedelta(seconds=lease_seconds))
        .returning(AlertDelivery)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    taken = list((await session.scalars(stmt)).all())
    await session.commit()
    return taken


async def mark_sent(session: AsyncSession, delivery_id: int) -> None:
    """The receiver took it; commits."""
    now = utcnow()
    await session.execute(
        update(AlertDelivery)
        .where(AlertDelivery.id == delivery_id)
        .values(status=SENT, sent_at=now, last_error=None, available_at=now)
    )
    await session.commit()


async def mark_retry(
    session: AsyncSession, delivery_id: int, error: str | None, delay_seconds: float, *, failed: bool = False,
    refund: bool = False,
) -> None:  # fmt: skip
    """Try again after ``delay_seconds`` (``failed``: give up; ``refund``: the attempt does not count); commits."""
    values: dict[str, object] = {"available_at": utcnow() + timedelta(seconds=delay_seconds)}
    if error is not None:
        values["last_error"] = error[:4000]
    if failed:
        values["status"] = FAILED
    if refund:
        values["attempts"] = AlertDelivery.attempts - 1
    await session.execute(update(AlertDelivery).where(AlertDelivery.id == delivery_id).values(**values))
    await session.commit()


async def counts(session: AsyncSession) -> dict[str, int]:
    """Deliveries by status."""
    rows = await session.execute(select(AlertDelivery.status, func.count()).group_by(AlertDelivery.status))
    found = {str(status): int(n) for status, n in rows}
    return {s: found.get(s, 0) for s in (PENDING, SENT, FAILED)}


async def for_detection(session: AsyncSession, detection_id: str) -> list[AlertDelivery]:
    """The deliveries of one detection."""
    stmt = (
        select(AlertDelivery)
        .where(AlertDelivery.detection_id == detection_id)
        .order_by(AlertDelivery.sink)
        .execution_options(populate_existing=True)
    )
    return list((await session.scalars(stmt)).all())
