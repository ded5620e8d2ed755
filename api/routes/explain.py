"""``POST /explain``: the explanation of a detection (or of a new sequence), waiting up to a timeout."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, HTTPException, Request, Response, status

from api.deps import DetectorDep, SessionDep, SettingsDep, WorkersDep
from api.errors import error_responses
from api.routes.detect import check_limits, detect_and_store, queue_followups
from api.schemas import ErrorOut, ExplainRequest, ExplainResponse, ExplanationOut
from db import crud, queue
from db.models import Detection

router = APIRouter(tags=["explanation"])


def explanation_out(row: Detection) -> ExplanationOut | None:
    """The API view of a detection's stored explanation."""
    e = row.explanation
    if e is None:
        return None
    return ExplanationOut(
        category=e.category,
        severity=e.severity,
        summary=e.summary,
        root_cause=e.root_cause,
        suggested_response=e.suggested_response,
        model=e.model,
        base=e.base,
        lang=e.lang,
        latency_ms=e.latency_ms,
        confidence=e.confidence,
    )


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
    settings: SettingsDep,
    detector: DetectorDep,
    workers: WorkersDep,
) -> ExplainResponse:
    """Queue the explanation (unless there is one already) and wait for it up to ``wait_seconds``."""
    if not settings.load_explainer:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "explanations are disabled (LOGTRIAGE_LOAD_EXPLAINER)")
    lang = body.lang or settings.explain_lang
    if body.sequence is not None:
        check_limits(settings, [body.sequence.log_entries])
        rows = await detect_and_store(
            session,
            detector,
            settings,
            [(body.sequence.sequence_id, body.sequence.log_entries, None)],
            "api",
            [body.sequence.service],
        )
        await queue_followups(session, settings, rows, "never")  # its alert, when it is flagged high enough
        detection_id = rows[0].id
    else:
        assert body.detection_id is not None
        detection_id = body.detection_id
        if await crud.get_detection(session, detection_id) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no detection {detection_id}")
    row = await crud.get_detection(session, detection_id)
    assert row is not None
    if row.explanation is None or row.explanation.lang != lang:
        await queue.enqueue(session, detection_id, lang, max_attempts=settings.job_max_attempts)
    await session.commit()
    for worker in workers:
        worker.wake()

    wait = settings.explain_wait_seconds if body.wait_seconds is None else body.wait_seconds
    deadline = time.monotonic() + wait
    poll_url = str(request.url_for("get_detection", detection_id=detection_id))
    while True:
        async with request.app.state.db.session() as fresh:
            row = await crud.get_detection(fresh, detection_id)
            job = await queue.latest_job(fresh, detection_id)
        assert row is not None
        if row.explanation is not None and row.explanation.lang == lang and (job is None or job.status == "done"):
            return ExplainResponse(detection_id=detection_id, status="done", explanation=explanation_out(row))
        if job is not None and job.status == "failed":
            response.status_code = status.HTTP_200_OK
            return ExplainResponse(detection_id=detection_id, status="failed", error=job.last_error)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            response.status_code = status.HTTP_202_ACCEPTED
            state = job.status if job is not None and job.status in ("queued", "running") else "queued"
            return ExplainResponse(detection_id=detection_id, status=state, poll_url=poll_url)  # type: ignore[arg-type]
        await asyncio.sleep(min(0.1, remaining))
