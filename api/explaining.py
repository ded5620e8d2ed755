"""Explanation on request, without HTTP: the detection to explain (stored, or a new sequence scored and stored
now) gets its explanation job, then the caller waits for the outcome up to a deadline."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Literal

from api.detecting import detect_and_store, queue_followups
from api.limits import check_limits
from api.schemas import SequenceIn
from api.services import DetectorService
from core.settings import Settings
from db import crud, queue
from db.models import Detection
from db.session import Database

POLL_SECONDS = 0.1


@dataclass
class ExplainOutcome:
    """Where an explanation stands: ``done`` (with the detection and its explanation), ``failed`` (with the
    job's last error), or still ``queued`` / ``running`` when the wait ran out."""

    status: Literal["done", "failed", "queued", "running"]
    row: Detection | None = None
    error: str | None = None


async def request_explanation(
    session: Any,
    detector: DetectorService,
    settings: Settings,
    lang: str,
    detection_id: str | None = None,
    sequence: SequenceIn | None = None,
) -> str | None:
    """Queue the explanation in ``lang`` (unless it is stored already) of a stored detection, or of ``sequence``
    scored and stored now (its alert queued when it is flagged high enough); committed. The detection's id,
    None when there is no detection ``detection_id``."""
    if sequence is not None:
        check_limits(settings, [sequence.log_entries])
        item = (sequence.sequence_id, sequence.log_entries, None)
        rows = await detect_and_store(session, detector, settings, [item], "api", [sequence.service])
        await queue_followups(session, settings, rows, "never")  # its alert, when it is flagged high enough
        detection_id = rows[0].id
    assert detection_id is not None
    row = await crud.get_detection(session, detection_id)
    if row is None:
        return None
    if row.explanation is None or row.explanation.lang != lang:
        await queue.enqueue(session, detection_id, lang, max_attempts=settings.job_max_attempts)
    await session.commit()
    return detection_id


async def await_explanation(database: Database, detection_id: str, lang: str, wait_seconds: float) -> ExplainOutcome:
    """The explanation in ``lang`` once it is done or has failed, else where it stands after ``wait_seconds``."""
    deadline = time.monotonic() + wait_seconds
    while True:
        async with database.session() as fresh:
            job = await queue.latest_job(fresh, detection_id)  # first: a done job's explanation is then visible
            row = await crud.get_detection(fresh, detection_id)
        assert row is not None
        if row.explanation is not None and row.explanation.lang == lang and (job is None or job.status == "done"):
            return ExplainOutcome("done", row=row)
        if job is not None and job.status == "failed":
            return ExplainOutcome("failed", error=job.last_error)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return ExplainOutcome(job.status if job is not None and job.status in ("queued", "running") else "queued")  # type: ignore[arg-type]
        await asyncio.sleep(min(POLL_SECONDS, remaining))
