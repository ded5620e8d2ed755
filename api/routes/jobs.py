"""``GET /jobs`` (the explanation queue) and ``POST /jobs/retry`` (queue failed jobs again)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from api.deps import SessionDep, SettingsDep, WakeDep
from api.errors import error_responses
from api.schemas import Text
from db import queue
from db.models import ExplanationJob

router = APIRouter(tags=["jobs"])

JobState = Literal["queued", "running", "done", "failed"]


class JobOut(BaseModel):
    """One explanation job."""

    id: str
    detection_id: str
    status: JobState
    attempts: int = Field(description="times a worker took it")
    max_attempts: int = Field(description="takes allowed; an LLM outage or a shutdown gives back the take it cost")
    last_error: str | None
    available_at: datetime = Field(description="not taken before this time (retry backoff)")
    updated_at: datetime


class JobPage(BaseModel):
    """The queue: jobs per status, and the latest jobs (of one status, with ``status``)."""

    counts: dict[str, int]
    items: list[JobOut]


class RetryRequest(BaseModel):
    """Which failed jobs to queue again: those of ``detection_ids``, or every failed job when it is left out."""

    detection_ids: list[Annotated[Text, Field(max_length=64)]] | None = Field(None, max_length=1000)


class RetryResponse(BaseModel):
    """The detections whose failed job was queued again, with fresh tries."""

    requeued: list[str]
    count: int


def job_out(job: ExplanationJob) -> JobOut:
    """The API view of a job."""
    return JobOut(
        id=job.id,
        detection_id=job.detection_id,
        status=job.status,  # type: ignore[arg-type]
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        last_error=job.last_error,
        available_at=job.available_at,
        updated_at=job.updated_at,
    )


@router.get("/jobs", response_model=JobPage, summary="The explanation queue: counts and the latest jobs")
async def list_jobs(
    session: SessionDep,
    status: Annotated[JobState | None, Query(description="only jobs in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> JobPage:
    """Jobs per status, and the most recently updated jobs (e.g. ``status=failed`` with their errors)."""
    counts = await queue.counts(session)
    items = await queue.list_jobs(session, status, limit)
    return JobPage(counts=counts, items=[job_out(j) for j in items])


@router.post(
    "/jobs/retry",
    response_model=RetryResponse,
    summary="Queue failed explanation jobs again",
    responses=error_responses(400, 413),
)
async def retry_jobs(
    session: SessionDep, settings: SettingsDep, wake: WakeDep, body: RetryRequest | None = None
) -> RetryResponse:
    """Every failed job (or those of ``detection_ids``) goes back to the queue with fresh tries
    (``LOGTRIAGE_JOB_MAX_ATTEMPTS``); a detection explained or queued since is left alone."""
    ids = body.detection_ids if body is not None else None
    requeued = await queue.retry_failed(session, ids, max_attempts=settings.job_max_attempts)
    wake()
    return RetryResponse(requeued=requeued, count=len(requeued))
