"""The FastAPI app factory: ``create_app()`` builds an app; its lifespan loads the models once.

uvicorn --factory api.main:create_app     # or: logtriage serve
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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
        from large_model.inference import load_explainer

        explainer = load_explainer(settings.explainer_path, settings=settings)
    if settings.cluster_path is not None:
        from small_model.clustering import ClusterModel

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

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(settings.database_url)
        app.state.db = db
        if settings.migrate_on_start:
            await db.upgrade()
        det, expl, clus = detector, explainer, clusterer
        if det is None:
            det, loaded_expl, loaded_clus = await asyncio.to_thread(load_models, settings)
            expl = expl if expl is not None else loaded_expl
            clus = clus if clus is not None else loaded_clus
        app.state.detector = DetectorService(det, settings, metrics, clusterer=clus)
        app.state.explainer = (
            ExplainerService(expl, metrics, settings) if expl is not None and settings.load_explainer else None
        )
        await app.state.detector.batcher.start()
        app.state.workers = []
        if app.state.explainer is not None:
            app.state.workers = [
                ExplainWorker(db, app.state.explainer, settings, metrics) for _ in range(settings.workers)
            ]
            if settings.workers > app.state.explainer.concurrency:
                log.info(
                    "%d explanation workers over an explainer that runs %d call(s) at a time: %d explain at once, "
                    "the others wait without holding a job",
                    settings.workers,
                    app.state.explainer.concurrency,
                    app.state.explainer.concurrency,
                )
            for worker in app.state.workers:
                worker.start()
        app.state.alerts = AlertDispatcher(db, settings, metrics) if alert_sinks(settings) else None

        def stored() -> None:  # live sessions stored detections: their explanations and alerts are queued
            wake_consumers(app.state.workers, app.state.alerts)

        app.state.live = LiveSessions(db, app.state.detector, settings, metrics, on_stored=stored)
        app.state.live.start()
        if app.state.alerts is not None:
            app.state.alerts.start()
        log.info(
            "LogTriage ready: detector %s, explainer %s, database %s",
            app.state.detector.version,
            app.state.explainer.model_name if app.state.explainer else None,
            db.dialect,
        )
        try:
            yield
        finally:
            await app.state.live.stop()
            if app.state.alerts is not None:
                await app.state.alerts.stop()
            # SIGTERM: no new job; running ones get the shutdown grace, then go back to the queue
            await asyncio.gather(*(worker.stop() for worker in app.state.workers))
            await app.state.detector.batcher.stop()
            await db.dispose()

    app = FastAPIOffline(  # /docs and /redoc from the package's own assets: they work offline
        title="LogTriage",
        version="0.1.0",
        summary="Log anomaly detection (MoE-BERT) with LLM explanations",
        description="Score log sequences with a small detector; the anomalous ones are explained by an LLM "
        "(category, severity, root cause, suggested response). Every result is stored.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.detector = None
    app.state.explainer = None
    app.state.workers = []
    app.state.live = None
    app.state.alerts = None

    guarded = auth_dependencies(settings)  # the key scheme is declared (and checked) only where keys are set
    errors = error_responses(*([401] if settings.api_keys else []), 422, 500, 503)
    app.include_router(detect.router, dependencies=guarded, responses=errors)
    app.include_router(explain.router, dependencies=guarded, responses=errors)
    app.include_router(detections.router, dependencies=guarded, responses=errors)
    app.include_router(otlp.router, dependencies=guarded, responses=errors)
    app.include_router(jobs.router, dependencies=guarded, responses=errors)
    app.include_router(health.router, responses=error_responses(500))  # open, like the docs
    app.include_router(
        ui.router, responses=error_responses(500)
    )  # the page is open too; its API calls carry the operator's key
    app.mount("/ui/static", ui.static, name="ui-static")
    install_error_handlers(app)  # before the middleware below, so that they count its 500s

    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # a database outage is answered 503 with Retry-After on every route, logged once per outage
    app.state.db_outage = install_database_outage_handler(app, settings.db_retry_after_seconds, log)

    return app
