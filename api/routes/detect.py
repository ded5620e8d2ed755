"""``POST /detect``: score sequences (or windows of raw lines), store them, queue the flagged ones."""

from __future__ import annotations

from fastapi import APIRouter

from api import detecting
from api.deps import DetectorDep, SessionDep, SettingsDep, WakeDep
from api.errors import error_responses
from api.schemas import DetectRequest, DetectResponse
from api.views import detection_out

router = APIRouter(tags=["detection"])


@router.post(
    "/detect",
    response_model=DetectResponse,
    summary="Score log sequences; queue the anomalous ones for explanation",
    responses=error_responses(400, 413),
)
async def detect(
    body: DetectRequest, session: SessionDep, detector: DetectorDep, settings: SettingsDep, wake: WakeDep
) -> DetectResponse:
    """Score each sequence (or each window of ``lines``); store every verdict.

    With ``explain=auto`` (the default) the anomalous ones are queued for the explainer;
    ``always`` queues every sequence, ``never`` none.
    """
    items, services = await detecting.request_items(settings, body)
    rows, queued = await detecting.detect_and_queue(
        session, detector, settings, items, services, body.explain, body.lang
    )
    wake()
    chosen = set(queued)
    return DetectResponse(detections=[detection_out(r, r.id in chosen) for r in rows], queued=queued)
