"""``GET /health`` (alive), ``GET /ready`` (models and database), ``GET /metrics`` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST

from api.schemas import Health, Ready
from db import queue

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Health, summary="Liveness")
async def health() -> Health:
    """The process answers."""
    return Health()


@router.get("/ready", response_model=Ready, summary="Readiness", responses={503: {"model": Ready}})
async def ready(request: Request, response: Response) -> Ready:
    """Models loaded, the database reachable and (``LOGTRIAGE_READY_REQUIRES_LLM``) the LLM backend up; 503 otherwise."""
    state = request.app.state
    database = await state.db.ping()
    if database and getattr(state, "db_outage", None) is not None:
        state.db_outage.ok()  # logs the end of an outage the routes saw
    detector = state.detector is not None
    explainer_needed = state.settings.load_explainer and state.settings.workers > 0
    explainer = state.explainer is not None
    llm = state.explainer.health.report() if explainer else None
    llm_down = llm is not None and llm["state"] == "down" and explainer_needed
    ok = database and detector and (explainer or not explainer_needed)
    ok = ok and not (llm_down and state.settings.ready_requires_llm)
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Ready(
        ready=ok,
        detector=detector,
        explainer=explainer,
        database=database,
        detector_version=state.detector.version if detector else None,
        explainer_model=state.explainer.model_name if explainer else None,
        detector_profile=getattr(state.detector, "profile", None) if detector else None,
        explainer_profile=getattr(getattr(state.explainer, "explainer", None), "profile", None) if explainer else None,
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
async def metrics(request: Request) -> Response:
    """Request counts and latencies, sequences scored, anomalies, explanation queue depth."""
    state = request.app.state
    try:
        async with state.db.session() as session:
            for name, count in (await queue.counts(session)).items():
                state.metrics.queue_depth.labels(name).set(count)
    except Exception:  # metrics must answer even while the database is away
        pass
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
