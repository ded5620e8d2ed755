"""The explanation job queue, kept in the database so that a crash or a restart loses no job.

Life of a job: ``enqueue`` (queued) -> ``claim`` (running, leased to one worker) -> ``complete``
(done) or ``fail`` (queued again after a backoff, or failed once ``max_attempts`` are used).
``release`` puts a running job back without spending a try (its worker is shutting down, or the
LLM backend is down: not the job's fault); ``retry_failed`` queues failed jobs again with fresh
tries (after the outage or bug that failed them is over).
A running job whose lease expired (its worker died) is claimed again by the next ``claim``, or
put back by ``requeue_stale``; one that has used all its attempts is marked failed instead.
Workers renew the lease of the job they run (``extend_lease``), so a lease can be short.

Claiming is one ``UPDATE ... WHERE id = (SELECT id ... ORDER BY ... LIMIT 1) AND <still claimable>
RETURNING *`` statement, committed at once:

- **PostgreSQL**: the sub-select carries ``FOR UPDATE SKIP LOCKED``: concurrent claimers (any
  number of processes and hosts) each lock a different row and never wait on one another; the
  outer condition is re-checked on the locked row, so a job is never taken twice.
- **SQLite**: there is no row locking; SQLite serializes writers on the whole database, and the
  single statement reads and writes under that one write lock, with the outer condition re-checked
  and the returned row counted. That is safe for the workers of one process (and for processes
  sharing the file on one host, at the cost of waiting on the file lock); run many replicas on
  PostgreSQL.

Times are taken from the application's clock in UTC (``now`` can be passed, for tests): replicas
should run NTP; leases (minutes) dwarf the usual skew.

``enqueue`` only flushes (it joins the caller's transaction, with the detection it refers to);
``claim``, ``complete``, ``fail``, ``release``, ``retry_failed`` and ``requeue_stale`` commit, because other workers must see a
claim at once and a long-running worker must not hold a transaction open.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from db._dialect import dialect_name, insert_for
from db.base import utcnow
from db.models import _ACTIVE_WHERE, ACTIVE_STATUSES, ExplanationJob, JobStatus, new_id

log = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 300.0
DEFAULT_BACKOFF_SECONDS = 5.0
MAX_BACKOFF_SECONDS = 600.0
MAX_ERROR_CHARS = 8000


def _queued_ready(j: Any, now: datetime) -> list[ColumnElement[bool]]:
    return [j.status == JobStatus.QUEUED.value, j.available_at <= now]


def _lease_expired(j: Any, cutoff: datetime) -> list[ColumnElement[bool]]:
    return [j.status == JobStatus.RUNNING.value, j.locked_at <= cutoff]


async def _update_one(
    session: AsyncSession,
    where: Any,
    order_by: Any,
    values: dict[str, Any],
) -> ExplanationJob | None:
    """Update the first row (in ``order_by``) matching ``where`` and return it, skipping locked rows."""
    j = aliased(ExplanationJob)
    pick = select(j.id).where(*where(j)).order_by(*order_by(j)).limit(1)
    if dialect_name(session) == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    stmt = (
        update(ExplanationJob)
        .where(ExplanationJob.id == pick.scalar_subquery(), *where(ExplanationJob))
        .values(**values)
        .returning(ExplanationJob)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    return (await session.scalars(stmt)).one_or_none()


async def _update_all(session: AsyncSession, where: Any, values: dict[str, Any]) -> int:
    """Update every row matching ``where`` that no other transaction holds; the number updated."""
    j = aliased(ExplanationJob)
    pick = select(j.id).where(*where(j))
    if dialect_name(session) == "postgresql":
        pick = pick.with_for_update(skip_locked=True)  # never waits, so never deadlocks
    stmt = (
        update(ExplanationJob)
        .where(ExplanationJob.id.in_(pick), *where(ExplanationJob))
        .values(**values)
        .returning(ExplanationJob.id)
        .execution_options(synchronize_session=False)
    )
    return len((await session.scalars(stmt)).all())


async def _update_where(session: AsyncSession, where: Any, values: dict[str, Any]) -> ExplanationJob | None:
    """Update the one job that ``where`` names, waiting for its row lock (never skipping it)."""
    stmt = (
        update(ExplanationJob)
        .where(*where(ExplanationJob))
        .values(**values)
        .returning(ExplanationJob)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    return (await session.scalars(stmt)).one_or_none()


def _trim(error: str) -> str:
    if len(error) <= MAX_ERROR_CHARS:
        return error
    half = MAX_ERROR_CHARS // 2
    return f"{error[:half]}\n[... {len(error) - 2 * half} characters cut ...]\n{error[-half:]}"


async def enqueue(
    session: AsyncSession,
    detection_id: str,
    lang: str = "en",
    *,
    max_attempts: int = 3,
    now: datetime | None = None,
) -> ExplanationJob:
    """Queue a detection for explanation; if it already has a queued or running job, that job is returned.

    Flushes only: the caller commits. A partial unique index makes this hold across replicas too.
    """
    now = now or utcnow()
    stmt = (
        insert_for(session, ExplanationJob)
        .values(
            id=new_id(),
            detection_id=detection_id,
            lang=lang,
            status=JobStatus.QUEUED.value,
            attempts=0,
            max_attempts=max_attempts,
            available_at=now,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=[ExplanationJob.detection_id], index_where=_ACTIVE_WHERE)
    )
    await session.execute(stmt)
    job = await session.scalars(
        select(ExplanationJob)
        .where(ExplanationJob.detection_id == detection_id, ExplanationJob.status.in_(ACTIVE_STATUSES))
        .execution_options(populate_existing=True)
    )
    return job.one()


async def claim(
    session: AsyncSession,
    worker_id: str,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    *,
    now: datetime | None = None,
) -> ExplanationJob | None:
    """Take the next job for ``worker_id`` (running, attempts + 1, leased for ``lease_seconds``); commits.

    The oldest ready queued job first; else a running job whose lease expired (its worker is
    presumed dead). Expired jobs that have used all their attempts are marked failed on the way.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=lease_seconds)
    take = {
        "status": JobStatus.RUNNING.value,
        "locked_by": worker_id,
        "locked_at": now,
        "attempts": ExplanationJob.attempts + 1,
        "updated_at": now,
    }
    try:
        job = await _update_one(
            session,
            lambda j: _queued_ready(j, now),
            lambda j: (j.available_at, j.created_at, j.id),
            take,
        )
        if job is None:
            await _fail_exhausted(session, cutoff, now)
            job = await _update_one(
                session,
                lambda j: [*_lease_expired(j, cutoff), j.attempts < j.max_attempts],
                lambda j: (j.locked_at, j.id),
                take,
            )
            if job is not None:
                log.warning("job %s: lease expired, reclaimed by %s (attempt %d)", job.id, worker_id, job.attempts)
        await session.commit()
    except BaseException:
        await session.rollback()
        raise
    return job


async def _fail_exhausted(session: AsyncSession, cutoff: datetime, now: datetime) -> int:
    n = await _update_all(
        session,
        lambda j: [*_lease_expired(j, cutoff), j.attempts >= j.max_attempts],
        {
            "status": JobStatus.FAILED.value,
            "last_error": "worker lost: lease expired on the last attempt",
            "updated_at": now,
        },
    )
    if n:
        log.warning("%d job(s) failed: lease expired on their last attempt", n)
    return n


def _mine(job_id: str, worker_id: str | None) -> Any:
    def where(j: Any) -> list[ColumnElement[bool]]:
        conds = [j.id == job_id, j.status == JobStatus.RUNNING.value]
        if worker_id is not None:
            conds.append(j.locked_by == worker_id)
        return conds

    return where


async def complete(
    session: AsyncSession, job_id: str, *, worker_id: str | None = None, now: datetime | None = None
) -> bool:
    """Mark a running job done (and commit, with anything else pending, e.g. the saved explanation).

    With ``worker_id``, only while that worker still holds the job. False when the job was not
    running (or was reclaimed by another worker after this one's lease expired).
    """
    try:
        # not _update_all: a claimer's SKIP LOCKED scan may hold this row for an instant; wait for it
        done = await _update_where(
            session, _mine(job_id, worker_id), {"status": JobStatus.DONE.value, "updated_at": now or utcnow()}
        )
        await session.commit()
    except BaseException:
        await session.rollback()
        raise
    return done is not None


async def extend_lease(session: AsyncSession, job_id: str, worker_id: str, *, now: datetime | None = None) -> bool:
    """Renew the lease of a job this worker still holds (a heartbeat for work longer than the lease); commits."""
    now = now or utcnow()
    try:
        held = await _update_where(session, _mine(job_id, worker_id), {"locked_at": now, "updated_at": now})
        await session.commit()
    except BaseException:
        await session.rollback()
        raise
    return held is not None


def backoff_delay(
    attempts: int, base_seconds: float = DEFAULT_BACKOFF_SECONDS, max_seconds: float = MAX_BACKOFF_SECONDS
) -> float:
    """Seconds before retry number ``attempts``: base, 2x base, 4x base ... up to ``max_seconds`` (10 minutes)."""
    return float(min(max_seconds, base_seconds * 2 ** min(max(0, attempts - 1), 60)))


async def fail(
    session: AsyncSession,
    job_id: str,
    error: str,
    *,
    worker_id: str | None = None,
    backoff_seconds: float = DEFAULT_BACKOFF_SECONDS,
    max_backoff_seconds: float = MAX_BACKOFF_SECONDS,
    now: datetime | None = None,
) -> ExplanationJob | None:
    """Record a failed attempt; commits. Queued again after a backoff, or failed for good after max_attempts.

    The error text is kept in ``last_error`` either way. None when the job was not running (for
    ``worker_id``, when that worker no longer holds it).
    """
    now = now or utcnow()
    try:
        where = _mine(job_id, worker_id)
        stmt = select(ExplanationJob).where(*where(ExplanationJob)).execution_options(populate_existing=True)
        job = (await session.scalars(stmt.with_for_update())).one_or_none()
        if job is None:
            await session.rollback()
            return None
        values: dict[str, Any] = {"last_error": _trim(error), "updated_at": now}
        if job.attempts >= job.max_attempts:
            values["status"] = JobStatus.FAILED.value
        else:
            values |= {
                "status": JobStatus.QUEUED.value,
                "locked_by": None,
                "locked_at": None,
                "available_at": now
                + timedelta(seconds=backoff_delay(job.attempts, backoff_seconds, max_backoff_seconds)),
            }
        attempts = job.attempts
        updated = await _update_where(session, lambda j: [*where(j), j.attempts == attempts], values)
        await session.commit()
    except BaseException:
        await session.rollback()
        raise
    if updated is not None and updated.status == JobStatus.FAILED.value:
        log.warning("job %s failed after %d attempts: %s", job_id, updated.attempts, (error.splitlines() or [""])[0])
    return updated


async def release(
    session: AsyncSession,
    job_id: str,
    worker_id: str,
    *,
    delay_seconds: float = 0.0,
    error: str | None = None,
    now: datetime | None = None,
) -> ExplanationJob | None:
    """Put a job this worker holds back in the queue without spending a try; commits.

    For failures that are not the job's: the worker is shutting down, or the LLM backend is down.
    The job is queued again (ready after ``delay_seconds``) and its allowance grows by the try it
    took (``max_attempts + 1``), so ``attempts`` still counts every take and a backoff computed from
    it still grows. ``error`` (when given) is kept in ``last_error``. None when the worker no longer
    holds the job.
    """
    now = now or utcnow()
    values: dict[str, Any] = {
        "status": JobStatus.QUEUED.value,
        "locked_by": None,
        "locked_at": None,
        "available_at": now + timedelta(seconds=delay_seconds),
        "max_attempts": ExplanationJob.max_attempts + 1,
        "updated_at": now,
    }
    if error is not None:
        values["last_error"] = _trim(error)
    try:
        released = await _update_where(session, _mine(job_id, worker_id), values)
        await session.commit()
    except BaseException:
        await session.rollback()
        raise
    return released


async def retry_failed(
    session: AsyncSession,
    detection_ids: list[str] | None = None,
    *,
    max_attempts: int = 3,
    now: datetime | None = None,
) -> list[str]:
    """Queue failed jobs again with ``max_attempts`` fresh tries (all failed ones, or those of ``detection_ids``);
    commits; the detection ids requeued.

    Only a detection's latest job is taken, and only while the detection has no queued or running
    job (a newer job, or an explanation done since, means there is nothing to retry). The last error
    stays in ``last_error`` until the next try.
    """
    now = now or utcnow()
    other = aliased(ExplanationJob)
    superseded = (
        select(other.id)
        .where(
            other.detection_id == ExplanationJob.detection_id,
            other.id != ExplanationJob.id,
            or_(
                other.status.in_(ACTIVE_STATUSES),
                other.created_at > ExplanationJob.created_at,
                and_(other.created_at == ExplanationJob.created_at, other.id > ExplanationJob.id),
            ),
        )
        .exists()
    )
    where = [ExplanationJob.status == JobStatus.FAILED.value, ~superseded]
    if detection_ids is not None:
        if not detection_ids:
            return []
        where.append(ExplanationJob.detection_id.in_(detection_ids))
    stmt = (
        update(ExplanationJob)
        .where(*where)
        .values(
            status=JobStatus.QUEUED.value,
            attempts=0,
            max_attempts=max_attempts,
            locked_by=None,
            locked_at=None,
            available_at=now,
            updated_at=now,
        )
        .returning(ExplanationJob.detection_id)
        .execution_options(synchronize_session=False)
    )
    try:
        requeued = list((await session.scalars(stmt)).all())
        await session.commit()
    except BaseException:
        await session.rollback()
        raise
    if requeued:
        log.warning("%d failed job(s) queued again", len(requeued))
    return requeued


async def requeue_stale(session: AsyncSession, older_than: float | timedelta, *, now: datetime | None = None) -> int:
    """Put back running jobs locked longer than ``older_than`` (seconds); commits; the number requeued.

    Those that have used all their attempts are marked failed instead (and not counted).
    """
    now = now or utcnow()
    cutoff = now - (older_than if isinstance(older_than, timedelta) else timedelta(seconds=older_than))
    try:
        await _fail_exhausted(session, cutoff, now)
        n = await _update_all(
            session,
            lambda j: [*_lease_expired(j, cutoff), j.attempts < j.max_attempts],
            {
                "status": JobStatus.QUEUED.value,
                "locked_by": None,
                "locked_at": None,
                "available_at": now,
                "last_error": "worker lost: lease expired",
                "updated_at": now,
            },
        )
        await session.commit()
    except BaseException:
        await session.rollback()
        raise
    if n:
        log.warning("%d stale job(s) requeued", n)
    return n


async def counts(session: AsyncSession) -> dict[str, int]:
    """Number of jobs per status (every status present, zeros included)."""
    rows = await session.execute(select(ExplanationJob.status, func.count()).group_by(ExplanationJob.status))
    result = {s.value: 0 for s in JobStatus}
    result.update({status: int(n) for status, n in rows.all()})
    return result


async def get_job(session: AsyncSession, job_id: str) -> ExplanationJob | None:
    """One job by id (fresh from the database), or None."""
    return await session.get(ExplanationJob, job_id, populate_existing=True)


async def latest_job(session: AsyncSession, detection_id: str) -> ExplanationJob | None:
    """The most recent job of a detection (to report its status), or None."""
    stmt = (
        select(ExplanationJob)
        .where(ExplanationJob.detection_id == detection_id)
        .order_by(ExplanationJob.created_at.desc(), ExplanationJob.id.desc())
        .limit(1)
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(stmt)).one_or_none()


async def list_jobs(session: AsyncSession, status: str | None = None, limit: int = 50) -> list[ExplanationJob]:
    """Jobs (of one status, or all), the most recently updated first."""
    stmt = select(ExplanationJob).order_by(ExplanationJob.updated_at.desc(), ExplanationJob.id.desc()).limit(limit)
    if status is not None:
        stmt = stmt.where(ExplanationJob.status == status)
    return list((await session.scalars(stmt.execution_options(populate_existing=True))).all())
