"""``logtriage serve``, ``logtriage worker`` and ``logtriage jobs``: the service, a stand-alone explanation
worker, and the queue seen (and failed jobs retried) from the command line.

Both servers stop cleanly on SIGTERM or SIGINT: no new job is taken, a running job has
``LOGTRIAGE_SHUTDOWN_GRACE_SECONDS`` to finish and be stored, then goes back to the queue without
spending a try (another worker takes it at once, not after its lease).
"""

from __future__ import annotations

import argparse
from typing import Any


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.main import create_app
    from core.settings import settings_with

    settings = settings_with(
        detector_path=args.detector,
        explainer_path=args.explainer,
        database_url=args.database_url,
        workers=args.workers,
        load_explainer=False if args.no_explainer else None,
    )
    # SIGTERM: open requests get the grace to end, then the lifespan stops the workers (another grace at most)
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level="info",
        timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_seconds)),
    )
    return 0


def _worker(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal

    from api.metrics import Metrics
    from api.services import ExplainerService
    from api.worker import ExplainWorker
    from core.settings import settings_with
    from db.session import Database
    from large_model.loader import load_explainer

    log = logging.getLogger("logtriage.worker")
    settings = settings_with(database_url=args.database_url)
    n_workers = args.workers if args.workers is not None else max(1, settings.workers)
    explainer = load_explainer(args.explainer or settings.explainer_path, settings=settings)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        db = Database(settings.database_url)
        await db.upgrade()
        metrics = Metrics()
        service = ExplainerService(explainer, metrics, settings)
        workers = [ExplainWorker(db, service, settings, metrics) for _ in range(n_workers)]
        try:
            if args.once:
                once = asyncio.ensure_future(_drain(workers))
                await asyncio.wait({once, asyncio.ensure_future(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
                if not once.done():
                    log.info("stopping: the running jobs get %.0f s to finish", settings.shutdown_grace_seconds)
                    for worker in workers:
                        worker.request_stop()
                    await asyncio.wait({once}, timeout=settings.shutdown_grace_seconds)
                    once.cancel()  # a job still running is released, as the worker's own stop() does
                await asyncio.gather(once, return_exceptions=True)
                if not once.cancelled() and once.exception() is not None:
                    raise once.exception()  # type: ignore[misc]
                return
            for worker in workers:
                worker.start()
            await stop.wait()
            log.info("stopping: the running jobs get %.0f s to finish", settings.shutdown_grace_seconds)
            await asyncio.gather(*(worker.stop() for worker in workers))
        finally:
            await db.dispose()
            log.info("worker stopped")

    asyncio.run(run())
    return 0


async def _drain(workers: list[Any]) -> None:
    """``--once``: work until the queue has no ready job."""
    import asyncio

    async def one(worker: Any) -> None:
        while await worker.run_once():
            pass

    await asyncio.gather(*(one(w) for w in workers))


def _jobs(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from core.settings import settings_with
    from db import queue
    from db.session import Database

    settings = settings_with(database_url=args.database_url)
    url = settings.database_url

    async def run() -> int:
        db = Database(url)
        try:
            await db.upgrade()
            async with db.session() as session:
                if args.action == "retry":
                    ids = args.detection or None
                    requeued = await queue.retry_failed(session, ids, max_attempts=settings.job_max_attempts)
                    print(json.dumps({"requeued": requeued, "count": len(requeued)}))
                else:
                    counts = await queue.counts(session)
                    failed = await queue.list_jobs(session, "failed", args.limit)
                    print(json.dumps({"counts": counts}))
                    for job in failed:
                        error = (job.last_error or "").splitlines()[0][:200] if job.last_error else ""
                        print(json.dumps({"detection_id": job.detection_id, "status": job.status,
                                          "attempts": job.attempts, "last_error": error}))  # fmt: skip
        finally:
            await db.dispose()
        return 0

    return asyncio.run(run())


def add_commands(sub: Any) -> None:
    """Register ``serve`` and ``worker``."""
    p = sub.add_parser(
        "serve",
        help="run the HTTP API (FastAPI + uvicorn)",
        description="Serve POST /detect, POST /explain, GET /detections, /health, /ready, /metrics and "
        "the docs UI at /docs. Settings come from LOGTRIAGE_* variables; the options override them.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--detector", default=None, help="detector artifact folder (LOGTRIAGE_DETECTOR_PATH)")
    p.add_argument("--explainer", default=None, help="explainer artifact folder (LOGTRIAGE_EXPLAINER_PATH)")
    p.add_argument(
        "--database-url", default=None, help="e.g. postgresql+asyncpg://user@host/db (LOGTRIAGE_DATABASE_URL)"
    )
    p.add_argument("--workers", type=int, default=None, help="in-process explanation workers (LOGTRIAGE_WORKERS)")
    p.add_argument("--no-explainer", action="store_true", help="detection only")
    p.set_defaults(handler=_serve)

    w = sub.add_parser(
        "worker",
        help="run an explanation worker against the database queue",
        description="Take explanation jobs from the database queue (PostgreSQL: many workers on many "
        "hosts; no job is taken twice) until stopped.",
    )
    w.add_argument("--explainer", default=None)
    w.add_argument("--database-url", default=None)
    w.add_argument(
        "--workers",
        type=int,
        default=None,
        help="explanations at once (default LOGTRIAGE_WORKERS; a model in this process runs one at a time)",
    )
    w.add_argument("--once", action="store_true", help="stop when the queue is empty")
    w.set_defaults(handler=_worker)

    j = sub.add_parser(
        "jobs",
        help="the explanation queue: status, or queue failed jobs again",
        description="`logtriage jobs status` prints the jobs per status and the failed ones with their error; "
        "`logtriage jobs retry [--detection ID ...]` queues failed jobs again with fresh tries (all of them "
        "without --detection), as POST /jobs/retry does.",
    )
    j.add_argument("action", choices=["status", "retry"])
    j.add_argument("--detection", action="append", default=[], metavar="ID", help="only this detection's job")
    j.add_argument("--database-url", default=None, help="default LOGTRIAGE_DATABASE_URL")
    j.add_argument("--limit", type=int, default=20, help="failed jobs listed by status")
    j.set_defaults(handler=_jobs)
