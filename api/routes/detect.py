"""``POST /detect``: score sequences (or windows of raw lines), store them, queue the flagged ones."""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status

from api.deps import DetectorDep, SessionDep, SettingsDep, WorkersDep
from api.errors import error_responses
from api.schemas import DetectionOut, DetectRequest, DetectResponse, LineContribution
from api.services import DetectorService, Verdict
from core.errors import DataError
from core.sessions import SessionRules, group_lines
from core.settings import Settings
from core.windowing import Window, make_windows, window_work
from db import alerts, crud, queue
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
            size = line_bytes(line)
            if size > settings.max_line_bytes_request:
                raise HTTPException(
                    status.HTTP_413_CONTENT_TOO_LARGE,
                    f"sequence {i} line {j} has {size} bytes, over the limit of {settings.max_line_bytes_request} "
                    "(max_line_bytes_request)",
                )
        if not any(line.strip() for line in lines):
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"sequence {i} has only empty lines")
    check_work(
        settings, sum(len(lines) for lines in sequences), sum(map(line_bytes, (x for s in sequences for x in s)))
    )


def line_bytes(line: str) -> int:
    """A line's size in UTF-8 (lone surrogates counted as three bytes, as the limits count them)."""
    return len(line.encode("utf-8", errors="surrogatepass"))


def check_work(settings: Settings, lines: int, size: int) -> None:
    """Refuse a request whose scoring work (lines and bytes, windows counted with their overlaps) exceeds the
    per-request budget (413), before any of that work is done."""
    if lines > settings.max_lines_per_request:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"the request would score {lines} lines (windows counted with their overlaps), over the limit of "
            f"{settings.max_lines_per_request} per request (max_lines_per_request)",
        )
    if size > settings.max_bytes_per_request:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"the request would score {size} bytes of lines (windows counted with their overlaps), over the limit "
            f"of {settings.max_bytes_per_request} per request (max_bytes_per_request)",
        )


async def windows_within_budget(
    settings: Settings, lines: list[str], spec: Any
) -> list[tuple[str | None, list[str], dict[str, Any] | None]]:
    """Cut raw ``lines`` into ``(id, lines, window_info)`` items, refusing (413) before building any when they
    would exceed the work budget. Fixed and sliding windows are counted without building them; sessions
    follow the live-session rules (each line joins one session, so they hold the lines once); both are
    built off the event loop, the user's session regexes with a timeout per match."""
    raw = sum(line_bytes(line) for line in lines)
    work = window_work(len(lines), spec.type, spec.size, spec.step)
    if work is not None:
        check_work(settings, work, math.ceil(raw * work / max(1, len(lines))))
    else:
        check_work(settings, len(lines), raw)
    try:
        if spec.type == "session":
            rules = SessionRules.from_settings(settings)
            if spec.session_key:
                rules = replace(rules, key="regex", key_regex=spec.session_key)
            if spec.end_pattern:
                rules = replace(rules, end_pattern=spec.end_pattern)
            sessions = await asyncio.to_thread(group_lines, lines, rules)
            return [(c.key, c.lines, {"type": "session", "lines": c.numbers, "close_reason": c.reason})
                    for c in sessions]  # fmt: skip
        windows: list[Window] = await asyncio.to_thread(
            lambda: list(make_windows(lines, spec.type, spec.size, spec.step))
        )
        return [(w.id, w.lines, {"type": spec.type, "lines": w.line_numbers}) for w in windows]
    except DataError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None


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
        service=row.service,
        category=row.explanation.category if row.explanation is not None else None,
        created_at=row.created_at,
    )


async def detect_and_store(
    session: Any,
    detector: DetectorService,
    settings: Settings,
    items: list[tuple[str | None, list[str], dict[str, Any] | None]],
    source: str,
    services: list[str | None] | None = None,
    verdicts: list[Verdict] | None = None,
) -> list[Detection]:
    """Score ``(sequence_id, lines, window_info)`` items (unless their ``verdicts`` are given) and insert them
    (flushed, not committed); ``services`` names each item's service."""
    if verdicts is None:
        verdicts = await detector.detect([lines for _, lines, _ in items])
    named = services if services is not None else [None] * len(items)
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
                "service": service,
            }
            for (sequence_id, lines, window), v, service in zip(items, verdicts, named, strict=True)
        ],
    )


RISK_RANK = {"low": 0, "medium": 1, "high": 2}


def wake_alerts(request: Request) -> None:
    """Alerts were queued: the app's alert dispatcher (if any) looks now."""
    dispatcher = getattr(request.app.state, "alerts", None)
    if dispatcher is not None:
        dispatcher.wake()


def alert_sinks(settings: Settings) -> list[str]:
    """The configured alert sinks: ``alertmanager`` and/or ``webhook``."""
    return [
        name
        for name, url in (("alertmanager", settings.alertmanager_url), ("webhook", settings.alert_webhook_url))
        if url
    ]


async def queue_followups(
    session: Any, settings: Settings, rows: list[Detection], mode: str | None = None, lang: str | None = None
) -> list[str]:
    """Queue the explanations (``mode``: auto, the flagged ones; always; never) and the alerts of stored
    detections (flagged, at or above ``alert_min_risk``); the ids queued for explanation. Flushes only."""
    mode = mode or settings.explain_default
    queued: list[str] = []
    if settings.load_explainer and mode != "never":
        for row in rows:
            if mode == "always" or row.is_anomaly:
                await queue.enqueue(
                    session, row.id, lang or settings.explain_lang, max_attempts=settings.job_max_attempts
                )
                queued.append(row.id)
    sinks = alert_sinks(settings)
    floor = RISK_RANK[settings.alert_min_risk]
    alerting = [r.id for r in rows if r.is_anomaly and RISK_RANK.get(r.risk_level, 0) >= floor]
    if sinks and alerting:
        await alerts.enqueue(session, alerting, sinks)
    return queued


@router.post(
    "/detect",
    response_model=DetectResponse,
    summary="Score log sequences; queue the anomalous ones for explanation",
    responses=error_responses(400, 413),
)
async def detect(
    body: DetectRequest,
    request: Request,
    session: SessionDep,
    detector: DetectorDep,
    settings: SettingsDep,
    workers: WorkersDep,
) -> DetectResponse:
    """Score each sequence (or each window of ``lines``); store every verdict.

    With ``explain=auto`` (the default) the anomalous ones are queued for the explainer;
    ``always`` queues every sequence, ``never`` none.
    """
    items: list[tuple[str | None, list[str], dict[str, Any] | None]]
    services: list[str | None]
    if body.sequences is not None:
        items = [(s.sequence_id, s.log_entries, None) for s in body.sequences]
        services = [s.service or body.service for s in body.sequences]
    else:
        assert body.lines is not None
        spec = body.window
        items = [
            item
            for item in await windows_within_budget(settings, body.lines, spec)
            if any(line.strip() for line in item[1])  # a window of blank lines only: nothing to score
        ]
        services = [body.service] * len(items)
    check_limits(settings, [lines for _, lines, _ in items])
    rows = await detect_and_store(session, detector, settings, items, "api", services)
    queued = await queue_followups(session, settings, rows, body.explain, body.lang)
    await session.commit()
    for worker in workers:
        worker.wake()
    wake_alerts(request)
    chosen = set(queued)
    return DetectResponse(detections=[to_out(r, r.id in chosen) for r in rows], queued=queued)
