"""The FastAPI app factory: ``create_app()`` builds an app; its lifespan loads the models once.

uvicorn --factory api.main:create_app     # or: logtriage serve
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from api.alerts import AlertDispatcher
from api.detecting import alert_sinks, wake_consumers
from api.errors import error_responses, install_error_handlers
from api.live import LiveSessions
from api.metrics import Metrics, MetricsMiddleware
from api.outage import install_database_outage_handler
from api.routes import detect, detections, explain, health, jobs, otlp, ui
from api.security import BodySizeLimit, auth_dependencies
from api.services import DetectorService, ExplainerService
from api.worker import ExplainWorker
from core.settings import Settings, get_settings
from db.session import Database

log = logging.getLogger(__name__)


def load_models(settings: Settings) -> tuple[Any, Any, Any]:
    """The detector, the explainer (when enabled) and the cluster model (when configured) of the settings."""
    from small_model.registry import load_detector

    detector = load_detector(settings.detector_path, device=settings.device)
    explainer = clusterer = None
    if settings.load_explainer:
        from large_model.loader import load_explainer

        explainer = load_explainer(settings.explainer_path, settings=settings)
    if settings.cluster_path is not None:
        from small_model.clusters.model import ClusterModel

        clusterer = ClusterModel.from_pretrained(settings.cluster_path)
        fitted_on = str(clusterer.meta.get("detector_version") or "")
        if fitted_on and fitted_on == str(getattr(detector, "version", "")):
            clusterer.detector = detector  # one detector in the process: the serving one gives the features
        else:
            log.warning(
                "the cluster model %s was fitted on the features of detector %s (version %s), not of the serving "
                "one (version %s): it loads that detector beside it (fit it on the serving detector: "
                "logtriage cluster --detector %s)",
                settings.cluster_path,
                clusterer.meta.get("detector_path"),
                fitted_on or "unknown",
                getattr(detector, "version", "unknown"),
                settings.detector_path,
            )
    return detector, explainer, clusterer


def create_app(
    settings: Settings | None = None, detector: Any = None, explainer: Any = None, clusterer: Any = None
) -> FastAPI:
    """Build the app. Models given here are used as they are; otherwise they load from the settings."""
    settings = settings or get_settings()
    metrics = Metrics()
    app = FastAPIOffline(  # /docs and /redoc from the package's own assets: they work offline
        title="LogTriage",
        version="0.1.0",
        summary="Log anomaly detection (MoE-BERT) with LLM explanations",
        description="Score log sequences with a small detector; the anomalous ones are explained by an LLM "
        "(category, severity, root cause, suggested response). Every result is stored.",
        lifespan=_lifespan(settings, metrics, detector, explainer, clusterer),
    )
    app.state.settings, app.state.metrics = settings, metrics
    app.state.detector = app.state.explainer = app.state.live = app.state.alerts = None
    app.state.workers = []
    _include_routers(app, settings)
    install_error_handlers(app)  # before the middleware below, so that they count its 500s
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # a database outage is answered 503 with Retry-After on every route, logged once per outage
    app.state.db_outage = install_database_outage_handler(app, settings.db_retry_after_seconds, log)
    return app


def _include_routers(app: FastAPI, settings: Settings) -> None:
    """The API's routers behind the key check (where keys are set), the health routes and the page open."""
    guarded = auth_dependencies(settings)  # the key scheme is declared (and checked) only where keys are set
    errors = error_responses(*([401] if settings.api_keys else []), 422, 500, 503)
    for module in (detect, explain, detections, otlp, jobs):
        app.include_router(module.router, dependencies=guarded, responses=errors)
    app.include_router(health.router, responses=error_responses(500))  # open, like the docs
    # the page is open too; its API calls carry the operator's key
    app.include_router(ui.router, responses=error_responses(500))
    app.mount("/ui/static", ui.static, name="ui-static")


def _lifespan(
    settings: Settings, metrics: Metrics, detector: Any, explainer: Any, clusterer: Any
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: the database and the models (those not given, loaded once), the background parts
    started; on the way out, stopped in the reverse order."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = app.state.db = Database(settings.database_url)
        if settings.migrate_on_start:
            await db.upgrade()
        det, expl, clus = detector, explainer, clusterer
        if det is None:
            det, loaded_expl, loaded_clus = await asyncio.to_thread(load_models, settings)
            expl = expl if expl is not None else loaded_expl
            clus = clus if clus is not None else loaded_clus
        await _start(app.state, db, settings, metrics, det, expl, clus)
        try:
            yield
        finally:
            await _stop(app.state, db)

    return lifespan


async def _start(
    state: Any, db: Database, settings: Settings, metrics: Metrics, detector: Any, explainer: Any, clusterer: Any
) -> None:
    """The model services, the explanation workers, the alert dispatcher and the live sessions, started."""
    state.detector = DetectorService(detector, settings, metrics, clusterer=clusterer)
    state.explainer = (
        ExplainerService(explainer, metrics, settings) if explainer is not None and settings.load_explainer else None
    )
    await state.detector.batcher.start()
    state.workers = _explain_workers(db, state.explainer, settings, metrics)
    for worker in state.workers:
        worker.start()
    state.alerts = AlertDispatcher(db, settings, metrics) if alert_sinks(settings) else None
    # live sessions stored detections: their explanations and alerts are queued
    state.live = LiveSessions(
        db, state.detector, settings, metrics, on_stored=lambda: wake_consumers(state.workers, state.alerts)
    )
    state.live.start()
    if state.alerts is not None:
        state.alerts.start()
    log.info(
        "LogTriage ready: detector %s, explainer %s, database %s",
        state.detector.version,
        state.explainer.model_name if state.explainer else None,
        db.dialect,
    )


def _explain_workers(
    db: Database, explainer: ExplainerService | None, settings: Settings, metrics: Metrics
) -> list[ExplainWorker]:
    """The in-process explanation workers (none without an explainer)."""
    if explainer is None:
        return []
    if settings.workers > explainer.concurrency:
        log.info(
            "%d explanation workers over an explainer that runs %d call(s) at a time: %d explain at once, "
            "the others wait without holding a job",
            settings.workers,
            explainer.concurrency,
            explainer.concurrency,
        )
    return [ExplainWorker(db, explainer, settings, metrics) for _ in range(settings.workers)]


async def _stop(state: Any, db: Database) -> None:
    """Everything :func:`_start` started, stopped; the database's connections closed."""
    await state.live.stop()
    if state.alerts is not None:
        await state.alerts.stop()
    # SIGTERM: no new job; running ones get the shutdown grace, then go back to the queue
    await asyncio.gather(*(worker.stop() for worker in state.workers))
    await state.detector.batcher.stop()
    await db.dispose()
