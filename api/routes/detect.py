"""``POST /detect``: score sequences (or windows of raw lines), store them, queue the flagged ones."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, status

from api.deps import DetectorDep, SessionDep, SettingsDep, WorkersDep
from api.errors import error_responses
from api.schemas import DetectionOut, DetectRequest, DetectResponse, LineContribution
from api.services import DetectorService
from core.errors import DataError
from core.settings import Settings
from core.windowing import make_windows
from db import crud, queue
from db.models import Detection

router = APIRouter(tags=["detection"])


def check_limits(settings: Settings, sequences: list[list[str]]) -> None:
    """Refuse requests over the configured limits, naming the limit and the value (413)."""
    if len(sequences) > settings.max_sequences_per_request:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"{len(sequences)} sequences exceed the limit of {settings.max_sequences_per_request} per request "
            "(max_sequences_per_request)",
        )
    for i, lines in enumerate(sequences):
        if len(lines) > settings.max_lines_per_sequence:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE,
                f"sequence {i} has {len(lines)} lines, over the limit of {settings.max_lines_per_sequence} "
                "(max_lines_per_sequence)",
            )
        for j, line in enumerate(lines):
            size = len(line.encode("utf-8", errors="surrogatepass"))
            if size > settings.max_line_bytes_request:
                raise HTTPException(
                    status.HTTP_413_CONTENT_TOO_LARGE,
                    f"sequence {i} line {j} has {size} bytes, over the limit of {settings.max_line_bytes_request} "
                    "(max_line_bytes_request)",
                )
        if not any(line.strip() for line in lines):
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"sequence {i} has only empty lines")


def to_out(row: Detection, queued: bool = False) -> DetectionOut:
    """The API view of a stored detection."""
    return DetectionOut(
        id=row.id,
        sequence_id=row.sequence_id,
        score=row.score,
        is_anomaly=row.is_anomaly,
        risk_level=row.risk_level,  # type: ignore[arg-type]
        threshold=row.threshold,
        model_version=row.model_version,
        queued_for_explanation=queued,
        top_lines=[LineContribution(**t) for t in row.top_lines] if row.top_lines else None,
        cluster_id=row.cluster_id,
        cluster_description=row.cluster_description,
        created_at=row.created_at,
    )


async def detect_and_store(
    session: Any,
    detector: DetectorService,
    settings: Settings,
    items: list[tuple[str | None, list[str], dict[str, Any] | None]],
    source: str,
) -> list[Detection]:
    """Score ``(sequence_id, lines, window_info)`` items and insert them (flushed, not committed)."""
    verdicts = await detector.detect([lines for _, lines, _ in items])
    return await crud.create_detections(
        session,
        [
            {
                "sequence_id": sequence_id,
                "log_entries": lines,
                "score": v.score,
                "is_anomaly": v.is_anomaly,
                "risk_level": v.risk_level,
                "threshold": v.threshold,
                "model_version": v.model_version,
                "top_lines": v.top_lines,
                "window_info": window,
                "cluster_id": v.cluster_id,
                "cluster_description": v.cluster_description,
                "source": source,
            }
            for (sequence_id, lines, window), v in zip(items, verdicts, strict=True)
        ],
    )


@router.post(
    "/detect",
    response_model=DetectResponse,
    summary="Score log sequences; queue the anomalous ones for explanation",
    responses=error_responses(400, 413),
)
async def detect(
    body: DetectRequest, session: SessionDep, detector: DetectorDep, settings: SettingsDep, workers: WorkersDep
) -> DetectResponse:
    """Score each sequence (or each window of ``lines``); store every verdict.

    With ``explain=auto`` (the default) the anomalous ones are queued for the explainer;
    ``always`` queues every sequence, ``never`` none.
    """
    items: list[tuple[str | None, list[str], dict[str, Any] | None]]
    if body.sequences is not None:
        items = [(s.sequence_id, s.log_entries, None) for s in body.sequences]
    else:
        assert body.lines is not None
        spec = body.window
        if len(body.lines) > settings.max_lines_per_sequence * settings.max_sequences_per_request:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"{len(body.lines)} lines exceed the limit")
        try:
            windows = list(make_windows(body.lines, spec.type, spec.size, spec.step, spec.session_key))
        except DataError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
        items = [
            (w.id, w.lines, {"type": spec.type, "lines": w.line_numbers})
            for w in windows
            if any(line.strip() for line in w.lines)  # a window of blank lines only: nothing to score
        ]
    check_limits(settings, [lines for _, lines, _ in items])
    rows = await detect_and_store(session, detector, settings, items, "api")
    mode = body.explain or settings.explain_default
    lang = body.lang or settings.explain_lang
    queued: list[str] = []
    if settings.load_explainer and mode != "never":
        for row in rows:
            if mode == "always" or row.is_anomaly:
                await queue.enqueue(session, row.id, lang, max_attempts=settings.job_max_attempts)
                queued.append(row.id)
    await session.commit()
    for worker in workers:
        worker.wake()
    chosen = set(queued)
    return DetectResponse(detections=[to_out(r, r.id in chosen) for r in rows], queued=queued)
