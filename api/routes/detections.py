"""``GET /detections`` (filtered, paginated), the anomaly timeline, the filter values, and
``GET /detections/{id}`` with its explanation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status

from api.deps import SessionDep
from api.errors import error_responses
from api.schemas import DetectionDetail, DetectionPage, Facets, RiskLevel, Text, Timeline, TimelineBucket, UtcDatetime
from api.views import detection_out, explanation_out
from db import crud, queue
from db.base import utcnow
from db.models import JobStatus

router = APIRouter(tags=["history"])
MAX_OFFSET = 1_000_000_000  # deeper pages: narrow the time range with since/until instead
MAX_ID_LENGTH = 200

DEFAULT_SPAN = timedelta(hours=24)
TARGET_BUCKETS = 60
# bucket widths the timeline picks from when none is asked for (seconds)
NICE_BUCKETS = (10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)


@dataclass(frozen=True)
class HistoryFilter:
    """The filters the history and its timeline share: a time range, risk levels, a service."""

    since: datetime | None = None
    until: datetime | None = None
    risk: list[RiskLevel] | None = None
    service: str | None = None


async def history_filter(
    since: Annotated[
        UtcDatetime | None,
        Query(description="from this time (inclusive, ISO 8601; the timeline: default 24 hours before until)"),
    ] = None,
    until: Annotated[
        UtcDatetime | None, Query(description="until this time (exclusive; the timeline: default now)")
    ] = None,
    risk: Annotated[list[RiskLevel] | None, Query(description="risk levels to keep (repeat the parameter)")] = None,
    service: Annotated[Text | None, Query(max_length=200, description="the service the logs came from")] = None,
) -> HistoryFilter:
    """The shared filters of a history query."""
    return HistoryFilter(since, until, risk, service)


FilterDep = Annotated[HistoryFilter, Depends(history_filter)]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@router.get("/detections", response_model=DetectionPage, summary="Stored detections, newest first")
async def list_detections(
    session: SessionDep,
    filters: FilterDep,
    anomalous_only: bool = False,
    category: Annotated[Text | None, Query(max_length=100, description="explanation category")] = None,
    limit: Annotated[int, Query(ge=1, le=crud.MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> DetectionPage:
    """One page of detections matching the filters, and how many match in all."""
    rows, total = await crud.list_detections(
        session,
        filters.since,
        filters.until,
        anomalous_only,
        category,
        limit,
        offset,
        risk=filters.risk,
        service=filters.service,
    )
    return DetectionPage(items=[detection_out(r) for r in rows], total=total, limit=limit, offset=offset)


@router.get(
    "/detections/timeline",
    response_model=Timeline,
    summary="Anomalies over time by category",
    responses=error_responses(422),
)
async def timeline(
    session: SessionDep,
    filters: FilterDep,
    bucket_seconds: Annotated[
        int | None,
        Query(
            ge=1,
            le=366 * 86400,  # a year: wider says nothing a chart can show (and stays in the databases' integers)
            description=f"bucket width in seconds (default: about {TARGET_BUCKETS} buckets over the range)",
        ),
    ] = None,
) -> Timeline:
    """Anomalous detections counted per time bucket and explanation category (counted by the database)."""
    # by default until the end of the current second (until is exclusive): whole buckets over the default span
    since, until = filters.since, filters.until
    end = _utc(until) if until is not None else utcnow().replace(microsecond=0) + timedelta(seconds=1)
    start = (_utc(since) if since is not None else end - DEFAULT_SPAN).replace(microsecond=0)
    span = (end - start).total_seconds()
    if span <= 0:  # an empty (or backwards) range holds no anomaly: no buckets
        return Timeline(since=start, until=end, bucket_seconds=bucket_seconds or 1, categories=[], buckets=[])
    width = bucket_seconds or next((b for b in NICE_BUCKETS if span / b <= TARGET_BUCKETS), NICE_BUCKETS[-1])
    if math.ceil(span / width) > crud.MAX_BUCKETS:  # finer than the limit allows: the narrowest width that fits
        width = math.ceil(span / crud.MAX_BUCKETS)
    n = math.ceil(span / width)
    counted = await crud.anomaly_timeline(session, start, end, width, risk=filters.risk, service=filters.service)
    buckets = [TimelineBucket(start=start + timedelta(seconds=i * width), total=0, counts={}) for i in range(n)]
    per_category: dict[str, int] = {}
    for (index, category), count in sorted(counted.items()):
        if not 0 <= index < n:  # a row stamped outside the range by a clock step: not this chart's
            continue
        buckets[index].counts[category] = count
        buckets[index].total += count
        per_category[category] = per_category.get(category, 0) + count
    categories = sorted(per_category, key=lambda c: (-per_category[c], c))
    return Timeline(since=start, until=end, bucket_seconds=width, categories=categories, buckets=buckets)


@router.get("/detections/facets", response_model=Facets, summary="The values the history filters can take")
async def facets(session: SessionDep) -> Facets:
    """The explanation categories and the services stored so far."""
    categories, services = await crud.facets(session)
    return Facets(categories=categories, services=services)


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
    # A worker commits the explanation with its job's "done", and each statement sees what was committed
    # before it (READ COMMITTED; SQLite reads outside a transaction), so the job goes first: a job read as
    # done has its explanation visible to the next read. A commit between the two reads shows an
    # explanation beside a job still running: then the job is read again, after the explanation
    job = await queue.latest_job(session, detection_id)
    row = await crud.get_detection(session, detection_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no detection {detection_id}")
    if row.explanation is not None and job is not None and job.status != JobStatus.DONE.value:
        job = await queue.latest_job(session, detection_id)
    return DetectionDetail(
        **detection_out(row).model_dump(),
        log_entries=list(row.log_entries),
        explanation=explanation_out(row),
        job_status=job.status if job is not None else None,
    )
