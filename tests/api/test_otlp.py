"""The OTLP/HTTP logs receiver and live sessions, through the real app with the tiny real detector.

The OpenTelemetry Python SDK (a ``LoggingHandler`` on a stdlib logger, the OTLP/HTTP protobuf
exporter) sends to a real uvicorn server; JSON bodies are OTLP/JSON as the spec writes it.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import time
from typing import Any

import httpx
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs, SeverityNumber
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from db import live
from db.base import utcnow
from db.session import Database
from tests.api.test_service import pick

FAST = {"session_idle_seconds": 1.0, "session_sweep_seconds": 0.2, "otlp_line_template": "{body}"}


async def wait_detections(client: httpx.AsyncClient, n: int, seconds: float = 60.0, **params: Any) -> list[dict]:
    """The stored detections once there are ``n`` (newest first)."""
    deadline = time.monotonic() + seconds
    while True:
        page = (await client.get("/detections", params={"limit": 1000, **params})).json()
        if page["total"] >= n or time.monotonic() > deadline:
            assert page["total"] == n, f"{page['total']} detections stored, expected {n}"
            return page["items"]  # type: ignore[no-any-return]
        await asyncio.sleep(0.2)


def otlp_json(traces: dict[str, list[str]], service: str = "shop") -> dict[str, Any]:
    """An OTLP/JSON ExportLogsServiceRequest: lowerCamelCase, hex trace ids, int64 times as strings."""
    now = time.time_ns()
    return {
        "resourceLogs": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
                "scopeLogs": [
                    {
                        "scope": {"name": "test"},
                        "logRecords": [
                            {
                                "timeUnixNano": str(now + i),
                                "severityNumber": 9,
                                "severityText": "INFO",
                                "body": {"stringValue": line},
                                "traceId": trace,
                                "spanId": trace[:16],
                            }
                            for trace, lines in traces.items()
                            for i, line in enumerate(lines)
                        ],
                    }
                ],
            }
        ]
    }


def otlp_proto(records: list[tuple[str | None, bytes]], service: str = "shop") -> ExportLogsServiceRequest:
    """A protobuf ExportLogsServiceRequest of (body or None, trace id) records."""
    logs = []
    for body, trace in records:
        record = LogRecord(time_unix_nano=time.time_ns(), severity_text="ERROR", trace_id=trace)
        record.severity_number = SeverityNumber.SEVERITY_NUMBER_ERROR
        if body is not None:
            record.body.CopyFrom(AnyValue(string_value=body))
        logs.append(record)
    resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))])
    return ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(resource=resource, scope_logs=[ScopeLogs(log_records=logs)])]
    )


async def test_opentelemetry_sdk_logs_become_scored_sessions(serve_app: Any, test_sequences: list) -> None:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource as SdkResource
    from opentelemetry.sdk.trace import TracerProvider

    sequences = pick(test_sequences, 0, 3) + pick(test_sequences, 1, 2)
    with serve_app(api_keys=["k-otlp"], **FAST) as (url, _app):
        resource = SdkResource.create({"service.name": "checkout"})
        provider = LoggerProvider(resource=resource)
        exporter = OTLPLogExporter(endpoint=f"{url}/v1/logs", headers={"X-API-Key": "k-otlp"}, timeout=30)
        provider.add_log_record_processor(BatchLogRecordProcessor(exporter, schedule_delay_millis=200))
        tracer = TracerProvider(resource=resource).get_tracer("test")
        logger = logging.getLogger("shop.checkout.sdk-test")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        handler = LoggingHandler(level=logging.INFO, logger_provider=provider)
        logger.addHandler(handler)
        sent: dict[str, list[str]] = {}
        try:
            for seq in sequences:
                with tracer.start_as_current_span(seq["sequence_id"]) as span:
                    trace = f"{span.get_span_context().trace_id:032x}"
                    for line in seq["log_entries"]:
                        logger.info("%s", line)
                sent[f"trace:{trace}"] = seq["log_entries"]
            assert await asyncio.to_thread(provider.force_flush, 30_000)
        finally:
            logger.removeHandler(handler)
            provider.shutdown()
        async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": "k-otlp"}, timeout=30) as client:
            items = await wait_detections(client, len(sequences))
            by_key = {d["sequence_id"]: d for d in items}
            assert set(by_key) == set(sent), "one session per trace, keyed by its trace id"
            flagged = [k for k in sent if by_key[k]["is_anomaly"]]
            assert any(k in flagged for k in list(sent)[3:]), "an obvious anomaly is flagged"
            for key in flagged:
                detail = (await client.get(f"/detections/{by_key[key]['id']}")).json()
                assert detail["log_entries"] == sent[key], "the flagged session is stored with all of its lines"
                assert detail["top_lines"]
            metrics = (await client.get("/metrics")).text
            assert (
                f'logtriage_otlp_log_records_total{{outcome="accepted"}} {float(sum(map(len, sent.values())))}'
                in metrics
            )
            assert 'logtriage_sessions_closed_total{reason="idle"} 5.0' in metrics
            # without the key: refused like every other endpoint
            async with httpx.AsyncClient(base_url=url) as anonymous:
                assert (await anonymous.post("/v1/logs", content=b"")).status_code == 401


async def test_json_gzip_partial_success_and_end_pattern(make_client: Any, test_sequences: list) -> None:
    normal, anomaly = pick(test_sequences, 0, 1)[0], pick(test_sequences, 1, 1)[0]
    traces = {"5b8efff798038103d269b633813fc60c": normal["log_entries"], "eee19b7ec3c1b174" * 2: anomaly["log_entries"]}
    body = otlp_json(traces)
    # one record without a body: refused on its own, the others accepted (partial success)
    body["resourceLogs"][0]["scopeLogs"][0]["logRecords"].append({"traceId": "0af7651916cd43dd8448eb211c80319c"})
    end = "ENDMARK"
    async with make_client(**{**FAST, "session_idle_seconds": 300.0, "session_end_pattern": end}) as client:
        r = await client.post(
            "/v1/logs",
            content=gzip.compress(json.dumps(body).encode()),
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["partialSuccess"]["rejectedLogRecords"] == "1"  # int64 is a string in OTLP/JSON
        assert (
            "logRecords[" in answer["partialSuccess"]["errorMessage"]
            and "no body" in answer["partialSuccess"]["errorMessage"]
        )
        # nothing closes yet (idle 300 s): the sessions are open, in the database
        async with client.app.state.db.session() as s:  # type: ignore[attr-defined]
            assert (await live.counts(s, utcnow()))[0] == 2
        # an end line closes its session at once
        closing = otlp_json({"5b8efff798038103d269b633813fc60c": [f"INFO [gateway] request done {end}"]})
        r = await client.post("/v1/logs", json=closing)
        assert r.status_code == 200 and r.json() == {}
        items = await wait_detections(client, 1)
        assert items[0]["sequence_id"] == "trace:5b8efff798038103d269b633813fc60c"
        detail = (await client.get(f"/detections/{items[0]['id']}")).json()
        assert detail["log_entries"] == [*normal["log_entries"], f"INFO [gateway] request done {end}"]


async def test_lines_get_the_record_time_severity_and_service(make_client: Any) -> None:
    trace = bytes.fromhex("11" * 16)
    request = otlp_proto([("disk quota exceeded on /var/lib/db", trace)], service="billing")
    request.resource_logs[0].scope_logs[0].log_records[0].time_unix_nano = 1_700_000_000_123_000_000
    async with make_client(session_idle_seconds=0.5, session_sweep_seconds=0.2) as client:
        r = await client.post(
            "/v1/logs", content=request.SerializeToString(), headers={"content-type": "application/x-protobuf"}
        )
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-protobuf")
        assert not ExportLogsServiceResponse.FromString(r.content).HasField("partial_success")
        items = await wait_detections(client, 1)
        detail = (await client.get(f"/detections/{items[0]['id']}")).json()
        assert detail["log_entries"] == ["2023-11-14 22:13:20.123 ERROR [billing] disk quota exceeded on /var/lib/db"]


async def test_bad_input_is_refused_clearly_and_nothing_accepted_is_lost(
    make_client: Any, test_sequences: list
) -> None:
    seq = pick(test_sequences, 1, 1)[0]
    trace = bytes.fromhex("ab" * 16)
    good = otlp_proto([(line, trace) for line in seq["log_entries"]]).SerializeToString()
    proto = {"content-type": "application/x-protobuf"}
    async with make_client(max_body_bytes=64_000, session_idle_seconds=1.0, session_sweep_seconds=0.2,
                           otlp_line_template="{body}") as client:  # fmt: skip
        assert (await client.post("/v1/logs", content=good, headers=proto)).status_code == 200
        # a malformed protobuf: 400 with a google.rpc.Status saying so
        r = await client.post("/v1/logs", content=b"\x0a\xff\xff\xff\xff\x0f garbage", headers=proto)
        assert r.status_code == 400
        status = status_pb2.Status.FromString(r.content)
        assert status.code == 3 and "malformed protobuf" in status.message
        # a wrong content type: 415 naming the two it takes
        r = await client.post("/v1/logs", content=b"hello", headers={"content-type": "text/plain"})
        assert r.status_code == 415 and "application/x-protobuf" in r.json()["detail"]
        # an oversized body, plain or as a gzip bomb: 413
        big = otlp_proto([("x" * 1000, trace)] * 100).SerializeToString()
        r = await client.post("/v1/logs", content=big, headers=proto)
        assert r.status_code == 413 and "64000" in r.json()["detail"]
        r = await client.post("/v1/logs", content=gzip.compress(big), headers={**proto, "content-encoding": "gzip"})
        assert r.status_code == 413 and "decompressed" in status_pb2.Status.FromString(r.content).message
        # records with no body only: 400 naming the record
        r = await client.post("/v1/logs", content=otlp_proto([(None, trace)]).SerializeToString(), headers=proto)
        assert r.status_code == 400
        assert "logRecords[0] has no body" in status_pb2.Status.FromString(r.content).message
        # OTLP/JSON with a base64 (not hex) trace id, and a body that is not an object
        r = await client.post("/v1/logs", json=otlp_json({"q83vEjRWeJA=": ["x"]}))
        assert r.status_code == 400 and "not hex" in r.json()["detail"]
        r = await client.post("/v1/logs", json=[1, 2])
        assert r.status_code == 400 and "ExportLogsServiceRequest" in r.json()["detail"]
        r = await client.post("/v1/logs", content=b"\x1f\x8b broken", headers={**proto, "content-encoding": "gzip"})
        assert r.status_code == 400
        # healthy afterwards, and the records accepted first became their session's detection
        assert (await client.get("/health")).status_code == 200
        items = await wait_detections(client, 1)
        detail = (await client.get(f"/detections/{items[0]['id']}")).json()
        assert detail["sequence_id"] == f"trace:{trace.hex()}" and detail["log_entries"] == seq["log_entries"]


async def test_open_sessions_survive_a_restart(make_client: Any, db_url: str) -> None:
    trace = "c0ffee" + "00" * 13
    async with make_client(session_idle_seconds=3600.0, otlp_line_template="{body}") as client:
        r = await client.post("/v1/logs", json=otlp_json({trace: ["INFO [a] one", "INFO [a] two"]}))
        assert r.status_code == 200
    database = Database(db_url)  # the app is stopped: the open session is in the database
    try:
        async with database.session() as s:
            assert (await live.counts(s, utcnow()))[0] == 1
    finally:
        await database.dispose()
    async with make_client(session_idle_seconds=3600.0, otlp_line_template="{body}") as client:
        r = await client.post("/v1/logs", json=otlp_json({trace: ["INFO [a] three"]}))
        assert r.status_code == 200
    # started again with a short idle time: the session (all three lines) closes and is scored
    async with make_client(session_idle_seconds=0.5, session_sweep_seconds=0.2) as client:
        items = await wait_detections(client, 1)
        detail = (await client.get(f"/detections/{items[0]['id']}")).json()
        assert detail["log_entries"] == ["INFO [a] one", "INFO [a] two", "INFO [a] three"]


async def test_cap_length_and_regex_keys(make_client: Any) -> None:
    lines = [f"INFO [dn] block blk_{i % 4} packet {i}" for i in range(12)] + ["INFO [dn] no block here"]
    settings = {"session_key": "regex", "session_key_regex": r"(blk_\d+)", "session_max_open": 2,
                "session_max_lines": 2, "session_idle_seconds": 3600.0, "otlp_line_template": "{body}"}  # fmt: skip
    async with make_client(**settings) as client:
        body = otlp_json({"": lines})
        for rec in body["resourceLogs"][0]["scopeLogs"][0]["logRecords"]:
            del rec["traceId"], rec["spanId"]
        r = await client.post("/v1/logs", json=body)
        assert r.status_code == 200, r.text
        # 4 blocks x 3 lines: each block closes at 2 lines (max_lines) and opens again with its third; the line
        # without a block goes to its service's window; 5 sessions open over a cap of 2: 3 closed, oldest first
        items = await wait_detections(client, 7)
        keys = [d["sequence_id"] for d in items]
        assert sorted(k for k in keys if k.startswith("re:"))[:4] == ["re:blk_0", "re:blk_0", "re:blk_1", "re:blk_1"]
        assert sum(k.startswith("re:blk_") for k in keys) >= 6 and all(
            k.startswith(("re:blk_", "svc:shop@")) for k in keys
        )
        metrics = (await client.get("/metrics")).text
        assert 'logtriage_sessions_closed_total{reason="length"} 4.0' in metrics
        assert 'logtriage_sessions_closed_total{reason="evicted"} 3.0' in metrics
        async with client.app.state.db.session() as s:  # type: ignore[attr-defined]
            assert (await live.counts(s, utcnow()))[0] == 2


async def test_too_much_backlog_answers_429_with_retry_after(make_client: Any) -> None:
    traces = {f"{i:032x}": [f"INFO [svc] step {i} END"] for i in range(1, 301)}
    async with make_client(session_end_pattern="END", ingest_max_backlog=0, ingest_retry_after_seconds=7,
                           otlp_line_template="{body}") as client:  # fmt: skip
        live = client.app.state.live  # type: ignore[attr-defined]
        await live.stop()  # the closer paused: the 300 sessions closed by their end lines wait to be scored
        assert (await client.post("/v1/logs", json=otlp_json(traces))).status_code == 200
        assert live.backlog == 300
        seen = await client.post("/v1/logs", json=otlp_json({"f" * 32: ["INFO [svc] probe"]}))
        assert seen.status_code == 429, "no 429 while 300 closed sessions waited to be scored"
        live.start()
        assert seen.headers["retry-after"] == "7" and "ingest_max_backlog" in seen.json()["detail"]
        await wait_detections(client, 300)
        await asyncio.sleep(0.5)
        assert (await client.post("/v1/logs", json=otlp_json({"e" * 32: ["INFO [svc] later"]}))).status_code == 200


async def test_detect_lines_use_the_session_rules_and_survive_a_catastrophic_regex(make_client: Any) -> None:
    lines = ["INFO [a] req=1 start", "INFO [a] req=2 start", "INFO [a] req=1 DONE", "INFO [a] req=2 more"]
    async with make_client(session_regex_timeout_ms=50.0) as client:
        window = {"type": "session", "session_key": r"req=(\d+)", "end_pattern": "DONE"}
        r = await client.post("/detect", json={"lines": lines, "window": window, "explain": "never"})
        assert r.status_code == 200, r.text
        got = [(d["sequence_id"], d["id"]) for d in r.json()["detections"]]
        assert [k for k, _ in got] == ["re:1", "re:2"]  # req=1 closed by its end line first, req=2 at the end
        detail = (await client.get(f"/detections/{got[0][1]}")).json()
        assert detail["log_entries"] == ["INFO [a] req=1 start", "INFO [a] req=1 DONE"]
        # a regex that backtracks catastrophically: each match gives up after the timeout, the loop keeps serving
        evil = {"type": "session", "session_key": r"^(a|aa)+$"}
        slow = asyncio.create_task(
            client.post("/detect", json={"lines": ["a" * 3000 + "b"] * 20, "window": evil, "explain": "never"})
        )
        await asyncio.sleep(0.05)
        start = time.monotonic()
        assert (await client.get("/health")).status_code == 200
        assert time.monotonic() - start < 0.5, "the event loop answered while the regex ran"
        r = await slow
        assert r.status_code == 200 and r.json()["detections"][0]["sequence_id"].startswith("svc:unknown_service@")
        assert "logtriage_http_requests_total" in (await client.get("/metrics")).text
