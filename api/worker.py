"""The explanation worker: takes jobs from the database queue, explains, stores, repeats.

Runs inside the API process (``LOGTRIAGE_WORKERS``) or on its own (``logtriage worker``). Jobs
live in the database, so a crash or a restart loses none: a job whose worker died is taken
again when its lease expires; a job that raises is retried with backoff, then marked failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid

from api.metrics import Metrics
from api.services import ExplainerService
from core.settings import Settings
from db import crud, queue
from db.session import Database

log = logging.getLogger(__name__)


class ExplainWorker:
    """One worker loop; ``wake()`` makes it look at the queue at once instead of at the next poll."""

    def __init__(
        self,
        database: Database,
        explainer: ExplainerService,
        settings: Settings,
        metrics: Metrics,
        poll_seconds: float = 1.0,
        backoff_seconds: float = 2.0,
    ) -> None:
        self.db = database
        self.explainer = explainer
        self.settings = settings
        self.metrics = metrics
        self.poll_seconds = poll_seconds
        self.backoff_seconds = backoff_seconds
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.done_event = asyncio.Condition()

    def wake(self) -> None:
        """A job was queued: look now."""
        self._wake.set()

    def start(self) -> None:
        """Run the loop as a background task."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"explain-worker {self.worker_id}")

    async def stop(self) -> None:
        """Cancel the loop; a job in progress stays leased and is taken again after its lease."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run(self) -> None:
        """Work until cancelled."""
        log.info("explanation worker %s started", self.worker_id)
        while True:
            try:
                worked = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database went away for a moment: keep the loop alive
                log.exception("worker %s: queue error", self.worker_id)
                worked = False
            if not worked:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_seconds)

    async def run_once(self) -> bool:
        """Take and process one job; False when the queue had none ready."""
        async with self.db.session() as session:
            job = await queue.claim(session, self.worker_id, self.settings.job_lease_seconds)
            if job is None:
                return False
            job_id, detection_id, lang = job.id, job.detection_id, job.lang
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
        try:
            fields, seconds = await self.explainer.explain(lines, lang, context)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("job %s: explanation failed: %s", job_id, exc)
            async with self.db.session() as session:
                failed = await queue.fail(
                    session,
                    job_id,
                    f"{type(exc).__name__}: {exc}",
                    worker_id=self.worker_id,
                    backoff_seconds=self.backoff_seconds,
                )
            self.metrics.explanations.labels("failed" if failed and failed.status == "failed" else "retry").inc()
            await self._notify()
            return True
        async with self.db.session() as session:
            fields = {k: v for k, v in fields.items() if k in crud.EXPLANATION_FIELDS}
            await crud.save_explanation(session, detection_id, {**fields, "lang": lang, "latency_ms": seconds * 1000})
            await queue.complete(session, job_id, worker_id=self.worker_id)
        self.metrics.explanations.labels("done").inc()
        await self._notify()
        return True

    async def _notify(self) -> None:
        async with self.done_event:
            self.done_event.notify_all()
