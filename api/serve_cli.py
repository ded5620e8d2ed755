"""``logtriage serve`` and ``logtriage worker``: the service and a stand-alone explanation worker."""

from __future__ import annotations

import argparse
from typing import Any


def _serve(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    for key, value in (
        ("DETECTOR_PATH", args.detector),
        ("EXPLAINER_PATH", args.explainer),
        ("DATABASE_URL", args.database_url),
        ("WORKERS", args.workers),
    ):
        if value is not None:
            os.environ[f"LOGTRIAGE_{key}"] = str(value)
    if args.no_explainer:
        os.environ["LOGTRIAGE_LOAD_EXPLAINER"] = "false"
    uvicorn.run("api.main:create_app", factory=True, host=args.host, port=args.port, log_level="info")
    return 0


def _worker(args: argparse.Namespace) -> int:
    import asyncio

    from api.metrics import Metrics
    from api.services import ExplainerService
    from api.worker import ExplainWorker
    from core.settings import get_settings
    from db.session import Database
    from large_model.inference import load_explainer

    settings = get_settings()
    if args.database_url:
        settings.database_url = args.database_url
    explainer = load_explainer(args.explainer or settings.explainer_path, settings=settings)

    async def run() -> None:
        db = Database(settings.database_url)
        await db.upgrade()
        metrics = Metrics()
        worker = ExplainWorker(db, ExplainerService(explainer, metrics), settings, metrics)
        try:
            if args.once:
                while await worker.run_once():
                    pass
            else:
                await worker.run()
        finally:
            await db.dispose()

    asyncio.run(run())
    return 0


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
    w.add_argument("--once", action="store_true", help="stop when the queue is empty")
    w.set_defaults(handler=_worker)
