"""Alerts out, to a real Alertmanager (Debian's ``prometheus-alertmanager``) and to a real HTTP receiver."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from db import alerts
from tests.api.test_service import pick, wait_explained
from tests.llm_stub import free_port

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager on a free local port (its base URL)."""
    if ALERTMANAGER is None:
        pytest.skip("prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager)")
    config = tmp_path / "alertmanager.yml"
    config.write_text('route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n', encoding="utf-8")
    port = free_port()
    proc = subprocess.Popen(
        [ALERTMANAGER, f"--config.file={config}", f"--storage.path={tmp_path / 'am-data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"alertmanager exited: {proc.stderr.read().decode()[-2000:]}"  # type: ignore[union-attr]
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "alertmanager did not become ready"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


class Receiver:
    """A real HTTP server on ``port`` that keeps every JSON body POSTed to it."""

    def __init__(self, port: int) -> None:
        self.bodies: list[Any] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("content-length", 0)))
                received.append(json.loads(data))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def wait_for(check: Any, seconds: float = 60.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = await check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.2)


async def test_flagged_detection_reaches_alertmanager_with_its_explanation(
    make_client: Any, alertmanager: str, test_sequences: list
) -> None:
    normals, anomalies = pick(test_sequences, 0, 2), pick(test_sequences, 1, 2)
    async with make_client(
        alertmanager_url=alertmanager, alert_min_risk="medium", public_url="http://lt.example"
    ) as client:
        r = await client.post("/detect", json={"sequences": normals + anomalies})
        assert r.status_code == 200, r.text
        dets = r.json()["detections"]
        flagged = [d for d in dets if d["is_anomaly"]]
        assert flagged, "the tiny detector flags an obvious anomaly"
        explained = await wait_explained(client, flagged[0]["id"])

        async def alerts_in_alertmanager() -> list[dict[str, Any]]:
            got = httpx.get(f"{alertmanager}/api/v2/alerts", timeout=5).json()
            return got if len(got) >= len(flagged) else []

        got = await wait_for(alerts_in_alertmanager)
        assert len(got) == len(flagged), got  # one alert per flagged detection, none for the normal ones
        by_id = {a["labels"]["detection_id"]: a for a in got}
        alert = by_id[flagged[0]["id"]]
        assert alert["labels"]["alertname"] == "LogTriageAnomaly"
        assert alert["labels"]["risk"] == flagged[0]["risk_level"]
        assert alert["labels"]["service"] == "unknown"  # a /detect sequence names no service
        e = explained["explanation"]
        assert alert["labels"]["category"] == e["category"]  # it waited for the explanation
        assert alert["annotations"]["summary"] == e["summary"]
        assert alert["annotations"]["suggested_response"] == e["suggested_response"]
        assert alert["annotations"]["detection_url"] == f"http://lt.example/detections/{flagged[0]['id']}"
        assert alert["status"]["state"] == "active"
        metrics = (await client.get("/metrics")).text
        assert f'logtriage_alerts_total{{outcome="sent",sink="alertmanager"}} {float(len(flagged))}' in metrics


async def test_webhook_survives_a_down_receiver_and_never_alerts_twice(make_client: Any, test_sequences: list) -> None:
    anomaly = pick(test_sequences, 1, 1)[0]
    port = free_port()  # nothing listens there yet: the receiver is down
    settings = {"alert_webhook_url": f"http://127.0.0.1:{port}/hook", "alert_min_risk": "medium",
                "alert_backoff_seconds": 0.3, "alert_max_attempts": 50, "load_explainer": False}  # fmt: skip
    async with make_client(**settings) as client:
        r = await client.post("/detect", json={"sequences": [anomaly]})
        detection = r.json()["detections"][0]
        assert detection["is_anomaly"], "the tiny detector flags an obvious anomaly"

        async def retried() -> bool:
            return 'logtriage_alerts_total{outcome="retry",sink="webhook"}' in (await client.get("/metrics")).text

        assert await wait_for(retried, 30), "the failed delivery is counted and retried"
        receiver = Receiver(port)  # the receiver comes back
        try:

            async def delivered() -> list[Any]:
                return list(receiver.bodies)

            bodies = await wait_for(delivered, 60)
            assert len(bodies) == 1
            body = bodies[0]
            assert body["detection"]["id"] == detection["id"] and body["detection"]["risk"] == detection["risk_level"]
            assert "anomaly" in body["text"] and detection["id"] in body["text"]  # Slack-compatible text with the link

            # the dispatcher marks the delivery sent once the receiver has answered (a moment after the body lands)
            async def marked_sent() -> list[Any]:
                async with client.app.state.db.session() as s:  # type: ignore[attr-defined]
                    found = await alerts.for_detection(s, detection["id"])
                return found if [d.status for d in found] == ["sent"] else []

            assert await wait_for(marked_sent, 30), "the delivery is marked sent"
            # queueing the same detection's alert again (a replayed request, a second replica): no duplicate
            async with client.app.state.db.session() as s:  # type: ignore[attr-defined]
                await alerts.enqueue(s, [detection["id"]], ["webhook"])
                await s.commit()
                deliveries = await alerts.for_detection(s, detection["id"])
            assert [(d.sink, d.status) for d in deliveries] == [("webhook", "sent")] and deliveries[0].attempts >= 2
            client.app.state.alerts.wake()  # type: ignore[attr-defined]
            await asyncio.sleep(1.5)
            assert len(receiver.bodies) == 1
        finally:
            receiver.close()


async def test_a_receiver_that_refuses_the_alert_fails_it_for_good(
    make_client: Any, alertmanager: str, test_sequences: list
) -> None:
    anomaly = pick(test_sequences, 1, 1)[0]
    # Alertmanager answers 404 under another path: a permanent client error, not retried
    async with make_client(alert_webhook_url=f"{alertmanager}/no/such/path", alert_min_risk="medium",
                           load_explainer=False) as client:  # fmt: skip
        r = await client.post("/detect", json={"sequences": [anomaly]})
        detection_id = r.json()["detections"][0]["id"]

        async def failed() -> bool:
            async with client.app.state.db.session() as s:  # type: ignore[attr-defined]
                return [d.status for d in await alerts.for_detection(s, detection_id)] == ["failed"]

        assert await wait_for(failed, 30)
        async with client.app.state.db.session() as s:  # type: ignore[attr-defined]
            delivery = (await alerts.for_detection(s, detection_id))[0]
        assert delivery.attempts == 1 and delivery.last_error and "HTTP 404" in delivery.last_error
        assert 'logtriage_alerts_total{outcome="failed",sink="webhook"} 1.0' in (await client.get("/metrics")).text
