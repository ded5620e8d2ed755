"""Open live sessions in the database: append lines, find the ones due to close, take them away.

Appending and closing are safe across replicas: at most one open session per key (a partial
unique index, appended to through an upsert), and a session is taken only by a ``DELETE`` that
names the line count its taker read, so a line that arrived meanwhile keeps the session open and
two takers never both store it. Functions only flush unless they say so; the caller commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from db._dialect import insert_for
from db.models import _OPEN_WHERE, LiveSession, SessionLine, new_id

OPEN = "open"
CLOSING = "closing"


@dataclass
class DueSession:
    """A session ready to be scored, with its lines in order."""

    id: str
    key: str
    source: str | None
    service: str | None
    started_at: datetime
    line_count: int
    reason: str
    lines: list[str]


async def open_session(
    session: AsyncSession, key: str, now: datetime, source: str | None, service: str | None
) -> tuple[str, int]:
    """The open session of ``key`` (created when there is none), touched at ``now``: its id and line count."""
    stmt = insert_for(session, LiveSession).values(
        id=new_id(),
        key=key,
        status=OPEN,
        source=source,
        service=service[:256] if service else None,
        line_count=0,
        started_at=now,
        last_seen_at=now,
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[LiveSession.key], index_where=_OPEN_WHERE, set_={"last_seen_at": now}
    ).returning(LiveSession.id, LiveSession.line_count)
    row = (await session.execute(stmt)).one()
    return str(row[0]), int(row[1])


async def append_lines(
    session: AsyncSession, session_id: str, first_seq: int, lines: Sequence[str], now: datetime, close: str | None
) -> None:
    """Add ``lines`` after line ``first_seq - 1``; ``close`` (a reason) marks the session closing."""
    await session.execute(
        insert(SessionLine),
        [{"session_id": session_id, "seq": first_seq + i, "line": ln} for i, ln in enumerate(lines)],
    )
    values: dict[str, object] = {"line_count": first_seq + len(lines), "last_seen_at": now}
    if close is not None:
        values |= {"status": CLOSING, "close_reason": close}
    await session.execute(update(LiveSession).where(LiveSession.id == session_id).values(**values))


def _due(idle_cutoff: datetime):  # type: ignore[no-untyped-def]
    return or_(LiveSession.status == CLOSING, and_(LiveSession.status == OPEN, LiveSession.last_seen_at <= idle_cutoff))


async def evict_over_cap(session: AsyncSession, max_open: int) -> int:
    """Mark the least recently active open sessions beyond ``max_open`` closing (reason ``evicted``)."""
    count = (await session.execute(select(func.count()).where(LiveSession.status == OPEN))).scalar_one()
    extra = int(count) - max_open
    if extra <= 0:
        return 0
    oldest = select(LiveSession.id).where(LiveSession.status == OPEN).order_by(LiveSession.last_seen_at).limit(extra)
    result = await session.execute(
        update(LiveSession)
        .where(LiveSession.id.in_(oldest.scalar_subquery()), LiveSession.status == OPEN)
        .values(status=CLOSING, close_reason="evicted")
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def due_sessions(session: AsyncSession, idle_cutoff: datetime, limit: int) -> list[DueSession]:
    """Up to ``limit`` sessions to close (closing ones, and open ones idle since ``idle_cutoff``), with their lines."""
    rows = (
        await session.execute(
            select(LiveSession).where(_due(idle_cutoff)).order_by(LiveSession.last_seen_at).limit(limit)
        )
    ).scalars()
    found = [
        DueSession(r.id, r.key, r.source, r.service, r.started_at, r.line_count, r.close_reason or "idle", [])
        for r in rows
    ]
    if not found:
        return []
    by_id = {d.id: d for d in found}
    lines = await session.execute(
        select(SessionLine.session_id, SessionLine.line)
        .where(SessionLine.session_id.in_(list(by_id)))
        .order_by(SessionLine.session_id, SessionLine.seq)
    )
    for session_id, line in lines:
        by_id[session_id].lines.append(line)
    return found


async def take(session: AsyncSession, due: DueSession) -> bool:
    """Delete the session (and its lines) if it still has the lines it was read with; True when this call took it."""
    result = await session.execute(
        delete(LiveSession)
        .where(LiveSession.id == due.id, LiveSession.line_count == due.line_count)
        .returning(LiveSession.id)
    )
    return result.first() is not None


async def counts(session: AsyncSession, idle_cutoff: datetime) -> tuple[int, int]:
    """(open sessions, sessions due to close)."""
    open_n = (await session.execute(select(func.count()).where(LiveSession.status == OPEN))).scalar_one()
    due_n = (await session.execute(select(func.count()).where(_due(idle_cutoff)))).scalar_one()
    return int(open_n), int(due_n)
