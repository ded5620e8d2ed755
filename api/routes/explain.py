"""``POST /explain``: the explanation of a detection (or of a new sequence), waiting up to a timeout."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response, status

from api.deps import DatabaseDep, DetectorDep, SessionDep, SettingsDep, WakeDep
from api.errors import error_responses
from api.explaining import await_explanation, request_explanation
from api.schemas import ErrorOut, ExplainRequest, ExplainResponse
from api.views import explanation_out

router = APIRouter(tags=["explanation"])


@router.post(
    "/explain",
    response_model=ExplainResponse,
    summary="Explain a detection; 202 with a URL to poll when it takes longer than the wait",
    responses={
        202: {"model": ExplainResponse, "description": "queued or running: poll `poll_url`"},
        **error_responses(400, 404, 413),
        503: {"model": ErrorOut, "description": "explanations are disabled, or the database cannot be reached"},
    },
)
async def explain(
    body: ExplainRequest,
    request: Request,
    response: Response,
    session: SessionDep,
    database: DatabaseDep,
    settings: SettingsDep,
    detector: DetectorDep,
    wake: WakeDep,
) -> ExplainResponse:
    """Queue the explanation (unless there is one already) and wait for it up to ``wait_seconds``."""
    if not settings.load_explainer:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "explanations are disabled (LOGTRIAGE_LOAD_EXPLAINER)")
    lang = body.lang or settings.explain_lang
    detection_id = await request_explanation(session, detector, settings, lang, body.detection_id, body.sequence)
    if detection_id is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no detection {body.detection_id}")
    wake()
    wait = settings.explain_wait_seconds if body.wait_seconds is None else body.wait_seconds
    poll_url = str(request.url_for("get_detection", detection_id=detection_id))
    outcome = await await_explanation(database, detection_id, lang, wait)
    if outcome.status == "done":
        assert outcome.row is not None
        return ExplainResponse(detection_id=detection_id, status="done", explanation=explanation_out(outcome.row))
    if outcome.status == "failed":
        response.status_code = status.HTTP_200_OK
        return ExplainResponse(detection_id=detection_id, status="failed", error=outcome.error)
    response.status_code = status.HTTP_202_ACCEPTED
    return ExplainResponse(detection_id=detection_id, status=outcome.status, poll_url=poll_url)
