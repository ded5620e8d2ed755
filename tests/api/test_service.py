"""The real app through httpx against a SQLite file and the real PostgreSQL, with tiny real models."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from api.batching import IDLE_TRIM_SECONDS
from db import queue
from db.session import Database

# anomalies with an ERROR line in easy mode: what even the tiny test detector learns to flag
OBVIOUS = {"connection_failure", "database_error", "service_call_failure", "resource_exhaustion"}


def pick(seqs: list[dict[str, Any]], label: int, n: int) -> list[dict[str, Any]]:
    chosen = [s for s in seqs if s["label"] == label and (label == 0 or s["anomaly_type"] in OBVIOUS)][:n]
    assert len(chosen) == n
    return [{"sequence_id": s["sequence_id"], "log_entries": s["log_entries"]} for s in chosen]


async def wait_explained(client: Any, detection_id: str, seconds: float = 90.0) -> dict[str, Any]:
    for _ in range(int(seconds * 10)):
        body = (await client.get(f"/detections/{detection_id}")).json()
        if body["explanation"] is not None or body["job_status"] == "failed":
            return body  # type: ignore[no-any-return]
        await asyncio.sleep(0.1)
    raise AssertionError(f"{detection_id} not explained in {seconds} s: {body}")


async def test_detect_stores_and_escalates_flagged_sequences(
    make_client: Any, test_sequences: list, models: tuple[Any, Any]
) -> None:
    normals, anomalies = pick(test_sequences, 0, 3), pick(test_sequences, 1, 3)
    async with make_client() as client:
        r = await client.post("/detect", json={"sequences": normals + anomalies})
        assert r.status_code == 200, r.text
        body = r.json()
        dets = body["detections"]
        assert [d["sequence_id"] for d in dets] == [s["sequence_id"] for s in normals + anomalies]
        for d in dets:
            assert 0.0 <= d["score"] <= 1.0 and d["model_version"]
            assert d["is_anomaly"] == (d["score"] >= d["threshold"])
            assert d["risk_level"] == (
                "high" if d["is_anomaly"] and d["score"] > 0.85 else "medium" if d["is_anomaly"] else "low"
            )
            assert d["queued_for_explanation"] == d["is_anomaly"]
        flagged = [d["id"] for d in dets if d["is_anomaly"]]
        assert body["queued"] == flagged
        assert sum(d["is_anomaly"] for d in dets[3:]) >= 1, "the tiny detector should flag an obvious anomaly"
        assert all(d["top_lines"] for d in dets if d["is_anomaly"])

        explained = await wait_explained(client, flagged[0])
        e = explained["explanation"]
        assert explained["job_status"] == "done"
        # the tiny explainer's labels, or "other" below the confidence its training calibrated
        threshold = models[1].category_threshold
        assert e["category"] in {"timeout", "database_error", "permission_error", "other"}
        assert 0.0 < e["confidence"] <= 1.0  # the category's share of the label scores, stored and served
        assert (e["category"] == "other") == (e["confidence"] < threshold)
        assert e["severity"] in {"low", "high"} and e["summary"] and e["suggested_response"]
        metrics = (await client.get("/metrics")).text
        assert f'logtriage_explained_anomalies_total{{category="{e["category"]}"}}' in metrics
        sent = {d["id"]: s["log_entries"] for d, s in zip(dets, normals + anomalies, strict=True)}
        assert explained["log_entries"] == sent[flagged[0]]

        page = (await client.get("/detections", params={"anomalous_only": True, "limit": 2})).json()
        assert page["total"] == len(flagged) and len(page["items"]) == min(2, len(flagged))
        assert all(item["is_anomaly"] for item in page["items"])
        all_rows = (await client.get("/detections")).json()
        assert all_rows["total"] == 6
        by_cat = (await client.get("/detections", params={"category": e["category"]})).json()
        assert explained["id"] in [i["id"] for i in by_cat["items"]]


async def test_explain_waits_or_answers_202(make_client: Any, test_sequences: list) -> None:
    anomaly = pick(test_sequences, 1, 1)[0]
    async with make_client() as client:
        r = await client.post("/explain", json={"sequence": anomaly, "lang": "en"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "done" and body["explanation"]["category"]
        # asking again for the same detection answers from the store
        again = await client.post("/explain", json={"detection_id": body["detection_id"]})
        assert again.status_code == 200 and again.json()["explanation"] == body["explanation"]
    # no worker in this process: the job waits in the queue, the client gets 202 and a URL to poll
    async with make_client(workers=0) as client:
        r = await client.post("/explain", json={"sequence": anomaly, "wait_seconds": 0.2})
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "queued" and r.json()["poll_url"].endswith(
            f"/detections/{r.json()['detection_id']}"
        )
        missing = await client.post("/explain", json={"detection_id": "no-such-id"})
        assert missing.status_code == 404 and "no-such-id" in missing.json()["detail"]


async def test_queued_job_survives_a_restart(make_client: Any, db_url: str, test_sequences: list) -> None:
    anomaly = pick(test_sequences, 1, 1)[0]
    async with make_client(workers=0) as client:
        r = await client.post("/detect", json={"sequences": [anomaly], "explain": "always"})
        detection_id = r.json()["detections"][0]["id"]
        assert r.json()["queued"] == [detection_id]
    database = Database(db_url)  # the app is stopped: the job is in the database
    async with database.session() as s:
        assert (await queue.counts(s))["queued"] == 1
    await database.dispose()
    async with make_client(workers=1) as client:  # started again, with a worker
        body = await wait_explained(client, detection_id)
        assert body["job_status"] == "done" and body["explanation"]["category"]


async def test_raw_lines_with_windows(make_client: Any, test_sequences: list) -> None:
    lines = [line for s in test_sequences[:4] for line in s["log_entries"]]
    async with make_client() as client:
        r = await client.post(
            "/detect", json={"lines": lines, "window": {"type": "sliding", "size": 8, "step": 4}, "explain": "never"}
        )
        assert r.status_code == 200, r.text
        dets = r.json()["detections"]
        assert len(dets) >= (len(lines) - 8) // 4 + 1 and r.json()["queued"] == []
        detail = (await client.get(f"/detections/{dets[0]['id']}")).json()
        assert detail["log_entries"] == lines[:8]
        r = await client.post("/detect", json={"lines": lines, "window": {"type": "session", "session_key": "("}})
        assert r.status_code == 422 and "session key" in r.json()["detail"]


@pytest.mark.parametrize(
    "payload,status,needle",
    [
        ({}, 422, "either 'sequences' or 'lines'"),
        ({"sequences": []}, 422, "sequences: List should have at least 1 item"),
        ({"sequences": [{"log_entries": []}]}, 422, "log_entries"),
        ({"sequences": [{"log_entries": ["", "  "]}]}, 422, "only empty lines"),
        ({"sequences": [{"log_entries": ["x"]}] * 5}, 413, "5 sequences exceed the limit of 4"),
        ({"sequences": [{"log_entries": ["x"] * 11}]}, 413, "11 lines, over the limit of 10"),
        ({"sequences": [{"log_entries": ["y" * 300]}]}, 413, "300 bytes, over the limit of 256"),
        ({"sequences": [{"log_entries": ["x"]}], "explain": "sometimes"}, 422, "explain"),
        ({"lines": ["a"], "window": {"type": "fixed", "size": 0}}, 422, "window.size"),
    ],
)
async def test_bad_requests_say_what_is_wrong(make_client: Any, payload: dict, status: int, needle: str) -> None:
    async with make_client(
        max_sequences_per_request=4, max_lines_per_sequence=10, max_line_bytes_request=256, max_body_bytes=4096
    ) as client:
        r = await client.post("/detect", json=payload)
        assert r.status_code == status, r.text
        assert needle in r.json()["detail"]
        assert "Traceback" not in r.text


async def test_body_limit_and_broken_json(make_client: Any) -> None:
    async with make_client(max_body_bytes=1000) as client:
        r = await client.post("/detect", json={"sequences": [{"log_entries": ["z" * 2000]}]})
        assert r.status_code == 413 and "exceeds the limit of 1000 bytes" in r.json()["detail"]
        r = await client.post("/detect", content=b'{"sequences": [', headers={"content-type": "application/json"})
        assert r.status_code == 422 and "JSON" in r.json()["detail"]
        r = await client.get("/detections/unknown")
        assert r.status_code == 404


async def test_api_keys(make_client: Any) -> None:
    async with make_client(api_keys=["s3cret"]) as client:
        seq = {"sequences": [{"log_entries": ["INFO [gateway] GET /health 200"]}], "explain": "never"}
        assert (await client.post("/detect", json=seq)).status_code == 401
        assert (await client.post("/detect", json=seq, headers={"X-API-Key": "wrong"})).status_code == 401
        assert (await client.post("/detect", json=seq, headers={"X-API-Key": "s3cret"})).status_code == 200
        assert (await client.get("/detections")).status_code == 401
        for open_path in ("/health", "/docs", "/openapi.json", "/ready", "/metrics"):
            assert (await client.get(open_path)).status_code == 200, open_path
    async with make_client() as client:  # auth off
        assert (await client.get("/detections")).status_code == 200


async def test_health_ready_metrics_docs(make_client: Any, test_sequences: list) -> None:
    async with make_client() as client:
        assert (await client.get("/health")).json() == {"status": "ok"}
        ready = (await client.get("/ready")).json()
        assert ready["ready"] and ready["database"] and ready["detector"] and ready["explainer"]
        await client.post("/detect", json={"sequences": pick(test_sequences, 0, 2), "explain": "never"})
        text = (await client.get("/metrics")).text
        assert "logtriage_sequences_scored_total 2.0" in text
        assert 'logtriage_http_requests_total{method="POST",route="/detect",status="200"} 1.0' in text
        spec = (await client.get("/openapi.json")).json()
        assert {
            "/detect",
            "/explain",
            "/detections",
            "/detections/{detection_id}",
            "/health",
            "/ready",
            "/metrics",
        } <= set(spec["paths"])
        examples = json.dumps(spec["components"]["schemas"]["DetectRequest"])
        assert "log_entries" in examples and "examples" in examples
        assert "swagger-ui" in (await client.get("/docs")).text.lower()


async def test_micro_batching_groups_concurrent_requests(make_client: Any, test_sequences: list) -> None:
    seqs = pick(test_sequences, 0, 8)
    async with make_client(batch_window_ms=50.0, max_batch_size=64) as client:
        batcher = client.app.state.detector.batcher  # type: ignore[attr-defined]
        before = batcher.batches
        results = await asyncio.gather(
            *[client.post("/detect", json={"sequences": [s], "explain": "never"}) for s in seqs]
        )
        assert all(r.status_code == 200 for r in results)
        assert batcher.batches - before < len(seqs), "concurrent requests should share model calls"
        # idle past IDLE_TRIM_SECONDS: the batches' free memory goes back to the system (glibc's malloc_trim)
        trims = batcher.trims
        await asyncio.sleep(IDLE_TRIM_SECONDS + 1.0)
        assert batcher.trims > trims
    async with make_client(batching=False) as client:
        solo = [(await client.post("/detect", json={"sequences": [s], "explain": "never"})).json() for s in seqs]
    together = [r.json() for r in results]
    for a, b in zip(together, solo, strict=True):
        assert a["detections"][0]["score"] == pytest.approx(b["detections"][0]["score"], abs=1e-5)


async def test_work_budget_refuses_before_building_windows(make_client: Any) -> None:
    async with make_client(max_lines_per_request=2000, max_bytes_per_request=64 * 1024) as client:
        # 40,000 lines cut into windows of 1,000 every line: 39,001 windows, counted, never built
        lines = [f"INFO [svc] step {i}" for i in range(40_000)]
        r = await client.post("/detect", json={"lines": lines, "window": {"type": "sliding", "size": 1000, "step": 1}})
        assert r.status_code == 413, r.text
        assert "39001000 lines" in r.json()["detail"] and "max_lines_per_request" in r.json()["detail"]
        # the same lines' bytes, in sequences: over the byte budget
        seqs = [{"log_entries": ["x" * 1000] * 40} for _ in range(2)]
        r = await client.post("/detect", json={"sequences": seqs})
        assert r.status_code == 413 and "max_bytes_per_request" in r.json()["detail"], r.text
        # sessions: counted before grouping (each line joins one session)
        many = [f"blk_{j % 7} ok" for j in range(2001)]
        r = await client.post("/detect", json={"lines": many, "window": {"type": "session", "session_key": r"blk_\d+"}})
        assert r.status_code == 413 and "2001 lines" in r.json()["detail"], r.text
        # a pattern that backtracks catastrophically gives up after the session regex timeout: still answered
        r = await client.post(
            "/detect",
            json={
                "lines": ["a" * 40 + "!", "blk_1 ok"],
                "window": {"type": "session", "session_key": r"(a+)+$|blk_\d"},
            },
        )
        assert r.status_code == 200, r.text
        # within the budget: scored
        r = await client.post("/detect", json={"sequences": [{"log_entries": ["INFO [gateway] GET /health 200"] * 5}]})
        assert r.status_code == 200, r.text
