"""``GET /health`` (alive), ``GET /ready`` (models and database), ``GET /metrics`` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import DatabaseDep, DatabaseOutageDep, ExplainerDep, LoadedDetectorDep, MetricsDep, SettingsDep
from api.schemas import Health, Ready
from db import queue

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Health, summary="Liveness")
async def health() -> Health:
    """The process answers."""
    return Health()


@router.get("/ready", response_model=Ready, summary="Readiness", responses={503: {"model": Ready}})
async def ready(
    response: Response,
    database: DatabaseDep,
    outage: DatabaseOutageDep,
    settings: SettingsDep,
    detector: LoadedDetectorDep,
    explainer: ExplainerDep,
) -> Ready:
    """Models loaded, the database reachable and (``LOGTRIAGE_READY_REQUIRES_LLM``) the LLM backend up; 503 otherwise."""
    reachable = await database.ping()
    if reachable and outage is not None:
        outage.ok()  # logs the end of an outage the routes saw
    explainer_needed = settings.load_explainer and settings.workers > 0
    llm = explainer.health.report() if explainer is not None else None
    llm_down = llm is not None and llm["state"] == "down" and explainer_needed
    ok = reachable and detector is not None and (explainer is not None or not explainer_needed)
    ok = ok and not (llm_down and settings.ready_requires_llm)
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Ready(
        ready=ok,
        detector=detector is not None,
        explainer=explainer is not None,
        database=reachable,
        detector_version=detector.version if detector is not None else None,
        explainer_model=explainer.model_name if explainer is not None else None,
        detector_profile=getattr(detector, "profile", None) if detector is not None else None,
        explainer_profile=getattr(explainer.explainer, "profile", None) if explainer is not None else None,
        llm=llm["state"] if llm else None,
        llm_error=llm["last_error"] if llm else None,
        llm_retry_in_seconds=llm["retry_in_seconds"] if llm else None,
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics(database: DatabaseDep, metrics: MetricsDep) -> Response:
    """Request counts and latencies, sequences scored, anomalies, explanation queue depth."""
    try:
        async with database.session() as session:
            for name, count in (await queue.counts(session)).items():
                metrics.queue_depth.labels(name).set(count)
    except Exception:  # metrics must answer even while the database is away
        pass
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
