"""Detection as a service, without HTTP: raw lines cut into items within the work budget, items scored
and stored, and their follow-ups (explanation jobs, alert deliveries) queued.

``POST /detect``, ``POST /explain``, the live sessions and the CLIs (``detect --store``, ``tail --store``)
store detections through :func:`detect_and_store` and :func:`queue_followups`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, Protocol

from api.limits import check_limits, check_work, line_bytes
from api.schemas import DetectRequest, WindowSpec
from api.services import DetectorService, Verdict
from core.sessions import SessionRules, group_lines
from core.settings import Settings
from core.windowing import Window, make_windows, window_work
from db import alerts, crud, queue
from db.models import Detection

# what is scored and stored: the sequence id, its lines and how they were cut (None for a sequence as sent)
Item = tuple[str | None, list[str], dict[str, Any] | None]
RISK_RANK = {"low": 0, "medium": 1, "high": 2}


async def cut_lines(settings: Settings, lines: list[str], spec: WindowSpec) -> list[Item]:
    """Cut raw ``lines`` into items, refusing (:class:`LimitError`) before building any when they would exceed
    the work budget. Fixed and sliding windows are counted without building them; sessions follow the
    live-session rules (each line joins one session, so they hold the lines once); both are built off the
    event loop, the user's session regexes with a timeout per match."""
    raw = sum(line_bytes(line) for line in lines)
    work = window_work(len(lines), spec.type, spec.size, spec.step)
    if work is not None:
        check_work(settings, work, math.ceil(raw * work / max(1, len(lines))))
    else:
        check_work(settings, len(lines), raw)
    if spec.type == "session":
        rules = SessionRules.from_settings(settings)
        if spec.session_key:
            rules = replace(rules, key="regex", key_regex=spec.session_key)
        if spec.end_pattern:
            rules = replace(rules, end_pattern=spec.end_pattern)
        sessions = await asyncio.to_thread(group_lines, lines, rules)
        return [(c.key, c.lines, {"type": "session", "lines": c.numbers, "close_reason": c.reason})
                for c in sessions]  # fmt: skip
    windows: list[Window] = await asyncio.to_thread(lambda: list(make_windows(lines, spec.type, spec.size, spec.step)))
    return [(w.id, w.lines, {"type": spec.type, "lines": w.line_numbers}) for w in windows]


async def request_items(settings: Settings, body: DetectRequest) -> tuple[list[Item], list[str | None]]:
    """The items of a ``/detect`` body (its sequences, or the windows of its lines that are not all blank) and
    each one's service."""
    if body.sequences is not None:
        items: list[Item] = [(s.sequence_id, s.log_entries, None) for s in body.sequences]
        return items, [s.service or body.service for s in body.sequences]
    assert body.lines is not None
    items = [
        item
        for item in await cut_lines(settings, body.lines, body.window)
        if any(line.strip() for line in item[1])  # a window of blank lines only: nothing to score
    ]
    return items, [body.service] * len(items)


async def detect_and_store(
    session: Any,
    detector: DetectorService,
    settings: Settings,
    items: list[Item],
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


async def detect_and_queue(
    session: Any,
    detector: DetectorService,
    settings: Settings,
    items: list[Item],
    services: list[str | None],
    mode: str | None = None,
    lang: str | None = None,
) -> tuple[list[Detection], list[str]]:
    """Within the request limits: score and store ``items``, queue their follow-ups, commit; the stored rows and
    the ids queued for explanation."""
    check_limits(settings, [lines for _, lines, _ in items])
    rows = await detect_and_store(session, detector, settings, items, "api", services)
    queued = await queue_followups(session, settings, rows, mode, lang)
    await session.commit()
    return rows, queued


class Wakeable(Protocol):
    """A consumer of queued work that polls, and looks at once when woken."""

    def wake(self) -> None: ...


def wake_consumers(workers: Iterable[Wakeable], alerts: Wakeable | None) -> None:
    """Work was queued: the in-process explanation workers and the alert dispatcher look now, not at their next poll."""
    for worker in workers:
        worker.wake()
    if alerts is not None:
        alerts.wake()
