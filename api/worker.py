"""The explanation worker: takes jobs from the database queue, explains, stores, repeats.

Runs inside the API process (``LOGTRIAGE_WORKERS``) or on its own (``logtriage worker``). Jobs
live in the database, so a crash or a restart loses none:

- a job's lease (``LOGTRIAGE_JOB_LEASE_SECONDS``) is renewed every quarter lease while it runs, so a
  long explanation keeps it and a dead worker's job is taken again soon after;
- ``stop()`` (SIGTERM) takes no new job, gives the running one ``LOGTRIAGE_SHUTDOWN_GRACE_SECONDS`` to
  finish and be stored, then puts it back in the queue without spending a try;
- an LLM backend that cannot answer (refused, timed out, 5xx) opens the circuit of
  :mod:`api.llm_health`: the job goes back to the queue without spending a try, and no job is taken
  until the next probe; jobs still failing that way after ``LOGTRIAGE_JOB_RETRY_WINDOW_SECONDS``
  spend their tries;
- a job that fails by itself (bad input) is retried with backoff, then marked failed
  (``POST /jobs/retry`` or ``logtriage jobs retry`` queue it again);
- a finished explanation is stored even across a database outage (retried until the database is
  back or the worker stops), and the outage is logged once, not once per try.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
import weakref
from typing import Any

from api.metrics import Metrics
from api.outage import OutageLog
from api.services import ExplainerService
from core.errors import BackendUnavailable
from core.settings import Settings
from db import crud, queue
from db.base import utcnow
from db.errors import is_database_outage
from db.session import Database

log = logging.getLogger(__name__)

STORE_RETRY_MAX_SECONDS = 10.0  # the longest pause between two tries to store a finished explanation
RELEASE_TIMEOUT_SECONDS = 5.0


_OUTAGE_LOGS: weakref.WeakKeyDictionary[Database, OutageLog] = weakref.WeakKeyDictionary()


def _database_outage_log(database: Database) -> OutageLog:
    """The outage log of the workers on ``database``: an outage is logged once per process, not once per worker."""
    if database not in _OUTAGE_LOGS:
        _OUTAGE_LOGS[database] = OutageLog(log, "database", remind_seconds=60.0)
    return _OUTAGE_LOGS[database]


class ExplainWorker:
    """One worker loop; ``wake()`` makes it look at the queue at once instead of at the next poll."""

    def __init__(
        self,
        database: Database,
        explainer: ExplainerService,
        settings: Settings,
        metrics: Metrics,
        poll_seconds: float = 1.0,
    ) -> None:
        self.db = database
        self.explainer = explainer
        self.settings = settings
        self.metrics = metrics
        self.poll_seconds = poll_seconds
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.db_outage = _database_outage_log(database)  # shared by the workers of one database: one line
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._idle_seconds = poll_seconds
        self._task: asyncio.Task[None] | None = None
        self.done_event = asyncio.Condition()

    def wake(self) -> None:
        """A job was queued: look now."""
        self._wake.set()

    def start(self) -> None:
        """Run the loop as a background task."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"explain-worker {self.worker_id}")

    def request_stop(self) -> None:
        """Take no new job (the running one goes on); ``run`` and ``run_once`` return once it is done."""
        self._stopping.set()
        self._wake.set()

    async def stop(self, grace_seconds: float | None = None) -> None:
        """Take no new job; let the running one finish within ``grace_seconds`` (default: the shutdown grace
        setting), else put it back in the queue (not counted as a try) and end the loop."""
        self.request_stop()
        task, self._task = self._task, None
        if task is None:
            return
        grace = self.settings.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        if not task.done():
            await asyncio.wait({task}, timeout=max(0.0, grace))
        if not task.done():
            log.warning("worker %s: the running job did not finish within %.0f s; releasing it", self.worker_id, grace)
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def run(self) -> None:
        """Work until stopped (or cancelled)."""
        log.info("explanation worker %s started", self.worker_id)
        errors = OutageLog(log, f"worker {self.worker_id}: the queue", remind_seconds=60.0)
        while not self._stopping.is_set():
            try:
                worked = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_database_outage(exc):
                    self.db_outage.failed(exc, " (the explanation workers wait for it)")
                else:  # a bug: its traceback once, then one line a minute while it repeats
                    if not errors.down:
                        log.exception("worker %s: unexpected error", self.worker_id)
                    errors.failed(exc)
                worked, self._idle_seconds = False, self.poll_seconds
            else:
                self.db_outage.ok()
                errors.ok()
            if not worked and not self._stopping.is_set():
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._idle_seconds)
        log.info("explanation worker %s stopped", self.worker_id)

    async def run_once(self) -> bool:
        """Take and process one job; False when none was taken (queue empty, LLM backend down, stopping).

        A job is leased only once the explainer has room for it (``ExplainerService.slot``), so N
        workers over an explainer that runs one call at a time never hold N - 1 jobs waiting.
        """
        self._idle_seconds = self.poll_seconds
        async with self.explainer.slot():
            if self._stopping.is_set():
                return False
            wait, probe = self.explainer.health.acquire()
            if wait > 0:  # the LLM backend is down: leave the jobs in the queue until the next probe
                self._idle_seconds = wait
                return False
            try:
                return await self._take_and_process()
            finally:
                if probe:
                    self.explainer.health.release_probe()

    async def _take_and_process(self) -> bool:
        async with self.db.session() as session:
            job = await queue.claim(session, self.worker_id, self.settings.job_lease_seconds)
            if job is None:
                return False
            job_id, detection_id, lang, created_at = job.id, job.detection_id, job.lang, job.created_at
            detection = await crud.get_detection(session, detection_id)
            if detection is None:  # deleted meanwhile: nothing to explain
                await queue.complete(session, job_id, worker_id=self.worker_id)
                return True
            lines = list(detection.log_entries)
            context = {
                k: v
                for k, v in {
                    "score": round(detection.score, 3),
                    "risk_level": detection.risk_level,
                    "top_lines": [t.get("line") for t in (detection.top_lines or [])],
                    "cluster_id": detection.cluster_id,
                    "cluster_description": detection.cluster_description,
                }.items()
                if v not in (None, [], "")
            }
        heartbeat = asyncio.create_task(self._heartbeat(job_id), name=f"lease {job_id}")
        try:
            await self._process(job_id, detection_id, lang, lines, context, created_at)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        await self._notify()
        return True

    async def _process(
        self, job_id: str, detection_id: str, lang: str, lines: list[str], context: dict[str, Any], created_at: Any
    ) -> None:
        try:
            fields, seconds = await self.explainer.explain(lines, lang, context)
        except asyncio.CancelledError:  # stopping: the job goes back to the queue for another worker
            await self._release(job_id, "released: the worker stopped before the explanation finished")
            self.metrics.explanations.labels("released").inc()
            raise
        except BackendUnavailable as exc:
            delay = self.explainer.health.failed(exc)
            age = (utcnow() - created_at).total_seconds() if created_at is not None else 0.0
            if age <= self.settings.job_retry_window_seconds:  # not the job's fault: no try spent
                await self._release(job_id, f"{type(exc).__name__}: {exc}", delay)
                self.metrics.explanations.labels("waiting").inc()
                return
            await self._fail(job_id, exc)
            return
        except Exception as exc:
            log.warning("job %s: explanation failed: %s", job_id, exc)
            await self._fail(job_id, exc)
            return
        self.explainer.health.succeeded()
        fields = {k: v for k, v in fields.items() if k in crud.EXPLANATION_FIELDS}
        await self._store(job_id, detection_id, {**fields, "lang": lang, "latency_ms": seconds * 1000})
        self.metrics.explanations.labels("done").inc()
        self.metrics.explained_anomalies.labels(str(fields.get("category") or "other")).inc()

    async def _fail(self, job_id: str, exc: BaseException) -> None:
        async with self.db.session() as session:
            failed = await queue.fail(
                session,
                job_id,
                f"{type(exc).__name__}: {exc}",
                worker_id=self.worker_id,
                backoff_seconds=self.settings.job_backoff_seconds,
                max_backoff_seconds=self.settings.job_backoff_max_seconds,
            )
        self.metrics.explanations.labels("failed" if failed and failed.status == "failed" else "retry").inc()

    async def _release(self, job_id: str, error: str, delay_seconds: float = 0.0) -> None:
        """Back to the queue, not counted; a database that cannot take it leaves the job to its lease."""

        async def release() -> None:
            async with self.db.session() as session:
                await queue.release(session, job_id, self.worker_id, delay_seconds=delay_seconds, error=error)

        try:
            await asyncio.wait_for(release(), RELEASE_TIMEOUT_SECONDS)
        except Exception as exc:
            log.warning("job %s: could not be released (%s); it is taken again when its lease expires", job_id, exc)

    async def _store(self, job_id: str, detection_id: str, fields: dict[str, Any]) -> None:
        """Save the explanation and mark the job done, retrying through a database outage until it is back."""
        pause = 0.5
        while True:
            try:
                async with self.db.session() as session:
                    await crud.save_explanation(session, detection_id, fields)
                    mine = await queue.complete(session, job_id, worker_id=self.worker_id)  # commits both
                break
            except Exception as exc:
                if not is_database_outage(exc):
                    raise
                self.db_outage.failed(exc, f" (job {job_id}: keeping its explanation until it can be stored)")
                await asyncio.sleep(pause)
                pause = min(STORE_RETRY_MAX_SECONDS, pause * 2)
        self.db_outage.ok()
        if not mine:
            log.warning("job %s: its lease had expired; the explanation is stored, the job was retaken", job_id)

    async def _heartbeat(self, job_id: str) -> None:
        """Renew the lease every quarter lease while the job runs."""
        interval = max(0.05, self.settings.job_lease_seconds / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                async with self.db.session() as session:
                    held = await queue.extend_lease(session, job_id, self.worker_id)
            except Exception as exc:
                if not is_database_outage(exc):
                    log.warning("job %s: lease not renewed: %s", job_id, exc)
                else:
                    self.db_outage.failed(exc, f" (job {job_id}: its lease is not renewed)")
                continue
            self.db_outage.ok()
            if not held:
                log.warning("job %s: lease lost (its lease expired and another worker took it)", job_id)
                return

    async def _notify(self) -> None:
        async with self.done_event:
            self.done_event.notify_all()
