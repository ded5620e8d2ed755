"""``GET /detections`` (filtered, paginated) and ``GET /detections/{id}`` with its explanation."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, status

from api.deps import SessionDep
from api.errors import error_responses
from api.routes.detect import to_out
from api.routes.explain import explanation_out
from api.schemas import DetectionDetail, DetectionPage, Text, UtcDatetime
from db import crud, queue

router = APIRouter(tags=["history"])
MAX_OFFSET = 1_000_000_000  # deeper pages: narrow the time range with since/until instead
MAX_ID_LENGTH = 200


@router.get("/detections", response_model=DetectionPage, summary="Stored detections, newest first")
async def list_detections(
    session: SessionDep,
    since: Annotated[UtcDatetime | None, Query(description="from this time (inclusive, ISO 8601)")] = None,
    until: Annotated[UtcDatetime | None, Query(description="until this time (exclusive)")] = None,
    anomalous_only: bool = False,
    category: Annotated[Text | None, Query(max_length=100, description="explanation category")] = None,
    limit: Annotated[int, Query(ge=1, le=crud.MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> DetectionPage:
    """One page of detections matching the filters, and how many match in all."""
    rows, total = await crud.list_detections(session, since, until, anomalous_only, category, limit, offset)
    return DetectionPage(items=[to_out(r) for r in rows], total=total, limit=limit, offset=offset)


@router.get(
    "/detections/{detection_id}",
    response_model=DetectionDetail,
    summary="One detection with its explanation",
    responses=error_responses(404),
)
async def get_detection(
    detection_id: Annotated[Text, Path(max_length=MAX_ID_LENGTH)], session: SessionDep
) -> DetectionDetail:
    """The stored detection, its lines, its explanation (if done) and its job's status."""
    row = await crud.get_detection(session, detection_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no detection {detection_id}")
    job = await queue.latest_job(session, detection_id)
    return DetectionDetail(
        **to_out(row).model_dump(),
        log_entries=list(row.log_entries),
        explanation=explanation_out(row),
        job_status=job.status if job is not None else None,
    )
