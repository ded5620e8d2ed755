"""Live sessions in the service: records join open sessions kept in the database; a closer task scores
the sessions that closed (idle, length, end pattern, over the cap) and stores them like ``/detect``.

Open sessions live in the database, so they survive a restart and are shared by replicas; memory
holds nothing per session. Keys and end patterns are computed off the event loop (user regexes
run with a timeout). ``backlog`` (sessions due and not yet scored) is what ingestion checks to
answer 429 when the detector cannot keep up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from api.background import Poller
from api.detecting import detect_and_store, queue_followups
from api.metrics import Metrics
from api.outage import OutageLog
from api.services import DetectorService
from core.sessions import LogRecord, SessionKeys, SessionRules
from core.settings import Settings
from db import live
from db.base import utcnow
from db.errors import is_database_outage
from db.session import Database

log = logging.getLogger(__name__)
CLOSE_BATCH = 64


class LiveSessions:
    """Append records to their sessions; close, score and store the sessions that are done."""

    def __init__(
        self,
        database: Database,
        detector: DetectorService,
        settings: Settings,
        metrics: Metrics,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self.db = database
        self.outage = OutageLog(log, "database (live sessions)")  # an outage: one line when it starts, one when it ends
        self.detector = detector
        self.settings = settings
        self.metrics = metrics
        self.rules = SessionRules.from_settings(settings)
        self.keys = SessionKeys(self.rules)
        self.on_stored = on_stored
        self.backlog = 0  # sessions due to close at the last look
        self.closer = Poller(
            "live-session-closer", self.close_due, CLOSE_BATCH, settings.session_sweep_seconds, self.outage,
            is_database_outage, log,
            "live sessions: closing failed",
        )  # fmt: skip
        self._reported_timeouts = 0

    def _key_all(self, records: Sequence[LogRecord], now: float) -> list[tuple[str, bool]]:
        return [(self.keys.key_of(r, now), self.keys.ends(r.line)) for r in records]

    def _count_timeouts(self) -> None:
        new = self.keys.timeouts - self._reported_timeouts
        if new > 0:
            self.metrics.regex_timeouts.inc(new)
            self._reported_timeouts += new

    async def ingest(self, records: Sequence[LogRecord], source: str) -> int:
        """Add records to their open sessions (committed when this returns); the number of sessions closed now."""
        if not records:
            return 0
        now = utcnow()
        keyed = await asyncio.to_thread(self._key_all, records, now.timestamp())
        self._count_timeouts()
        groups: dict[str, list[tuple[LogRecord, bool]]] = {}
        for record, (key, ends) in zip(records, keyed, strict=True):
            groups.setdefault(key, []).append((record, ends))
        closed = 0
        async with self.db.session() as session:
            for key in sorted(groups):  # one lock order for every request: no deadlock between them
                items = groups[key]
                i = 0
                while i < len(items):
                    session_id, count = await live.open_session(session, key, now, source, items[i][0].service)
                    room = max(1, self.rules.max_lines - count)
                    take: list[str] = []
                    reason = None
                    for record, ends in items[i:]:
                        take.append(record.line)
                        if ends:
                            reason = "end"
                            break
                        if len(take) >= room:
                            reason = "length"
                            break
                    await live.append_lines(session, session_id, count, take, now, reason)
                    closed += reason is not None
                    i += len(take)
            await session.commit()
        if closed:
            self.backlog += closed  # due now: counted before the closer's next look
            self.closer.wake()
        return closed

    async def close_due(self, limit: int = CLOSE_BATCH) -> int:
        """Score and store up to ``limit`` sessions that are due; the number handled."""
        now = utcnow()
        cutoff = now - timedelta(seconds=self.rules.idle_seconds)
        async with self.db.session() as session:
            if await live.evict_over_cap(session, self.rules.max_open):
                await session.commit()
            due = await live.due_sessions(session, cutoff, limit)
            await session.commit()  # no transaction stays open while the detector runs
        if not due:
            await self._update_counts(cutoff)
            return 0
        scorable = [d for d in due if any(line.strip() for line in d.lines)]
        items: list[tuple[str | None, list[str], dict[str, Any] | None]] = [
            (
                d.key,
                d.lines,
                {
                    "type": "session",
                    "key": d.key,
                    "close_reason": d.reason,
                    "source": d.source,
                    "service": d.service,
                    "started_at": d.started_at.isoformat(),
                },
            )
            for d in scorable
        ]
        # scored before the write transaction: ingestion never waits on the detector
        verdicts = await self.detector.detect([lines for _, lines, _ in items])
        stored = 0
        async with self.db.session() as session:
            taken = [d for d in due if await live.take(session, d)]
            mine = {d.id for d in taken}
            chosen = [i for i, d in enumerate(scorable) if d.id in mine]
            if chosen:
                rows = await detect_and_store(
                    session, self.detector, self.settings, [items[i] for i in chosen], "session",
                    verdicts=[verdicts[i] for i in chosen],
                )  # fmt: skip
                for row, i in zip(rows, chosen, strict=True):
                    row.source = scorable[i].source or "session"
                await queue_followups(session, self.settings, rows)
                stored = len(rows)
            await session.commit()
        for d in taken:
            self.metrics.sessions_closed.labels(d.reason).inc()
        if stored and self.on_stored is not None:
            self.on_stored()
        await self._update_counts(cutoff)
        return len(due)

    async def _update_counts(self, cutoff: object) -> None:
        async with self.db.session() as session:
            open_n, due_n = await live.counts(session, cutoff)  # type: ignore[arg-type]
        self.backlog = due_n
        self.metrics.sessions_open.set(open_n)

    def wake(self) -> None:
        """Look for sessions to close now."""
        self.closer.wake()

    def start(self) -> None:
        """Run the closer as a background task."""
        self.closer.start()

    async def stop(self) -> None:
        """Stop the closer; open sessions stay in the database for the next start."""
        await self.closer.stop()
