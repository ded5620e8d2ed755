"""Alerts out: flagged detections at or above ``alert_min_risk`` go to Alertmanager (``POST /api/v2/alerts``)
and/or a generic JSON webhook (Slack-compatible ``text``).

Deliveries are rows in the database (``db/alerts.py``), queued in the transaction that stores the
detection, so detection never waits on a receiver and a down receiver loses nothing: a background
dispatcher sends them, retries with exponential backoff (``alert_backoff_seconds`` doubling up to
5 minutes, ``alert_max_attempts``), and counts every outcome. One row per detection and sink: no
duplicate alert. An alert waits up to ``alert_wait_explanation_seconds`` for its explanation, so
that its summary and suggested response are the explainer's.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import httpx

from api.background import Poller
from api.metrics import Metrics
from api.outage import OutageLog
from core.settings import Settings
from db import alerts, crud, queue
from db.base import utcnow
from db.errors import is_database_outage
from db.models import ACTIVE_STATUSES, Detection
from db.session import Database

log = logging.getLogger(__name__)
ALERT_NAME = "LogTriageAnomaly"
MAX_BACKOFF_SECONDS = 300.0
CLAIM_BATCH = 32
WAIT_POLL_SECONDS = 2.0


def backoff(attempts: int, base: float) -> float:
    """Seconds before attempt ``attempts + 1``: ``base`` doubling per attempt, at most 5 minutes."""
    return float(min(MAX_BACKOFF_SECONDS, base * 2 ** max(0, attempts - 1)))


def describe(detection: Detection, public_url: str) -> dict[str, Any]:
    """What an alert says of a detection: service, category, risk, summary, suggested response, link."""
    window = detection.window_info or {}
    e = detection.explanation
    link = f"{public_url.rstrip('/')}/detections/{detection.id}"
    top = (detection.top_lines or [{}])[0].get("line") if detection.top_lines else None
    if e is not None:
        category, summary, response = e.category, e.summary, e.suggested_response
    else:
        category = detection.cluster_description or "unexplained"
        line = top or (detection.log_entries[-1] if detection.log_entries else "")
        summary = (
            f"anomalous log sequence {detection.sequence_id} (score {detection.score:.3f}, "
            f"{len(detection.log_entries)} lines); most suspicious line: {line[:300]}"
        )
        response = f"not explained yet: read the sequence's lines at {link}"
    return {
        "id": detection.id,
        "sequence_id": detection.sequence_id,
        "service": str(window.get("service") or "unknown"),
        "category": category,
        "risk": detection.risk_level,
        "score": round(float(detection.score), 4),
        "summary": summary,
        "suggested_response": response,
        "url": link,
        "top_lines": [t.get("line") for t in detection.top_lines or []],
        "created_at": detection.created_at,
    }


def alertmanager_body(d: dict[str, Any], duration_seconds: float) -> list[dict[str, Any]]:
    """The Alertmanager v2 ``postableAlerts`` body of one detection."""
    starts = d["created_at"]
    return [
        {
            "labels": {
                "alertname": ALERT_NAME,
                "service": d["service"],
                "category": d["category"],
                "risk": d["risk"],
                "detection_id": d["id"],
            },
            "annotations": {
                "summary": d["summary"],
                "suggested_response": d["suggested_response"],
                "detection_url": d["url"],
                "score": f"{d['score']:.4f}",
                "sequence_id": d["sequence_id"],
            },
            "startsAt": starts.isoformat(),
            "endsAt": (starts + timedelta(seconds=duration_seconds)).isoformat(),
            "generatorURL": d["url"],
        }
    ]


def webhook_body(d: dict[str, Any]) -> dict[str, Any]:
    """A JSON webhook body: Slack-compatible ``text`` plus the detection's fields."""
    text = (
        f":rotating_light: *{d['risk']} risk* {d['category']} anomaly in {d['service']} "
        f"(score {d['score']:.3f}): {d['summary']}\n*Suggested response:* {d['suggested_response']}\n<{d['url']}|detection>"
    )
    return {"text": text, "detection": {k: v for k, v in d.items() if k != "created_at"}}


class AlertDispatcher:
    """Sends pending alert deliveries; ``wake()`` makes it look at once instead of at the next poll."""

    def __init__(
        self,
        database: Database,
        settings: Settings,
        metrics: Metrics,
        client: httpx.AsyncClient | None = None,
        poll_seconds: float = 1.0,
    ) -> None:
        self.db = database
        self.outage = OutageLog(
            log, "database (alert dispatcher)"
        )  # an outage: one line when it starts, one when it ends
        self.settings = settings
        self.metrics = metrics
        self.sinks = {
            name: url
            for name, url in (
                ("alertmanager", f"{settings.alertmanager_url.rstrip('/')}/api/v2/alerts"
                 if settings.alertmanager_url else None),
                ("webhook", settings.alert_webhook_url),
            )
            if url
        }  # fmt: skip
        self.client = client or httpx.AsyncClient(timeout=settings.alert_timeout_seconds)
        self.poller = Poller(
            "alert-dispatcher",
            self.run_once,
            CLAIM_BATCH,
            poll_seconds,
            self.outage,
            is_database_outage,
            log,
            "alert dispatcher: error",
        )

    def wake(self) -> None:
        """Deliveries were queued: look now."""
        self.poller.wake()

    def start(self) -> None:
        """Run the dispatcher as a background task."""
        self.poller.start()

    async def stop(self) -> None:
        """Stop; pending deliveries stay in the database for the next start."""
        await self.poller.stop()
        await self.client.aclose()

    async def run_once(self) -> int:
        """Send the deliveries that are due; the number taken."""
        lease = self.settings.alert_timeout_seconds * 2 + 30
        async with self.db.session() as session:
            taken = await alerts.claim(session, CLAIM_BATCH, lease)
        await asyncio.gather(*(self._deliver(d.id, d.detection_id, d.sink, d.attempts, d.created_at) for d in taken))
        async with self.db.session() as session:
            for status, n in (await alerts.counts(session)).items():
                self.metrics.alert_queue.labels(status).set(n)
        return len(taken)

    async def _deliver(self, delivery_id: int, detection_id: str, sink: str, attempts: int, created: Any) -> None:
        async with self.db.session() as session:
            job = await queue.latest_job(session, detection_id)  # first: a done job's explanation is then visible
            detection = await crud.get_detection(session, detection_id)
            if detection is None:
                await alerts.mark_retry(session, delivery_id, "the detection was deleted", 0, failed=True)
                return
            if sink not in self.sinks:
                await alerts.mark_retry(session, delivery_id, f"sink {sink!r} is not configured", 0, failed=True)
                return
            waiting = utcnow() - created < timedelta(seconds=self.settings.alert_wait_explanation_seconds)
            coming = job is not None and job.status in ACTIVE_STATUSES
            if detection.explanation is None and waiting and coming:  # its explanation is coming: wait for it
                await alerts.mark_retry(session, delivery_id, None, WAIT_POLL_SECONDS, refund=True)
                return
            d = describe(detection, self.settings.public_url)
        body: Any = (
            alertmanager_body(d, self.settings.alert_duration_seconds) if sink == "alertmanager" else webhook_body(d)
        )
        error: str | None = None
        permanent = False
        try:
            response = await self.client.post(self.sinks[sink], json=_jsonable(body))
            if response.status_code >= 300:
                error = f"HTTP {response.status_code}: {response.text[:300]}"
                permanent = 400 <= response.status_code < 500 and response.status_code not in (408, 425, 429)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        async with self.db.session() as session:
            if error is None:
                await alerts.mark_sent(session, delivery_id)
                self.metrics.alerts.labels(sink, "sent").inc()
                log.info("alert for detection %s sent to %s", detection_id, sink)
            elif permanent or attempts >= self.settings.alert_max_attempts:
                await alerts.mark_retry(session, delivery_id, error, 0, failed=True)
                self.metrics.alerts.labels(sink, "failed").inc()
                log.warning("alert for detection %s to %s failed for good after %d attempts: %s", detection_id,
                            sink, attempts, error)  # fmt: skip
            else:
                await alerts.mark_retry(
                    session, delivery_id, error, backoff(attempts, self.settings.alert_backoff_seconds)
                )
                self.metrics.alerts.labels(sink, "retry").inc()
                log.info("alert for detection %s to %s: attempt %d failed (%s); retrying", detection_id, sink,
                         attempts, error)  # fmt: skip


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
