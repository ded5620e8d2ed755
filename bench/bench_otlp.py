"""OTLP ingestion throughput (log records/s) of the running service, the detector's scoring in the loop.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_otlp.py --detector artifacts/detector \
        --data data/splits/test.json --sessions 400 --exporters 1,16

For each number of concurrent exporters: a real server (``uvicorn``, one process, a fresh SQLite
file, no explainer), and that many exporters sending protobuf ``ExportLogsServiceRequest`` bodies
(``--batch`` records each, one trace per sequence of the data file) over HTTP, honouring 429/503
``Retry-After`` as the Collector does. Prints a Markdown table: records/s accepted while sending, and
records/s end to end (until every session is closed, scored and stored).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from typing import Any

import httpx
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from serving import running_server

from core.io import iter_records


def bodies(sequences: list[list[str]], batch: int, offset: int) -> list[tuple[bytes, int]]:
    """Protobuf requests of ``batch`` records, the sequences' lines in order, one trace id per sequence."""
    records = []
    for i, lines in enumerate(sequences):
        trace = (offset + i + 1).to_bytes(16, "big")
        for line in lines:
            records.append(LogRecord(time_unix_nano=time.time_ns(), body=AnyValue(string_value=line), trace_id=trace))
    resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value="bench"))])
    out = []
    for start in range(0, len(records), batch):
        chunk = records[start : start + batch]
        request = ExportLogsServiceRequest(
            resource_logs=[ResourceLogs(resource=resource, scope_logs=[ScopeLogs(log_records=chunk)])]
        )
        out.append((request.SerializeToString(), len(chunk)))
    return out


async def exporter(client: httpx.AsyncClient, work: list[tuple[bytes, int]], stats: dict[str, int]) -> None:
    headers = {"content-type": "application/x-protobuf"}
    for body, n in work:
        while True:
            r = await client.post("/v1/logs", content=body, headers=headers)
            if r.status_code == 200:
                stats["records"] += n
                break
            if r.status_code in (429, 503):
                stats["throttled"] += 1
                await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                continue
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")


async def export_all(url: str, sequences: list[list[str]], exporters: int, batch: int) -> dict[str, Any]:
    """``exporters`` concurrent exporters send the sequences' records, then wait until every session is stored."""
    per = [sequences[i::exporters] for i in range(exporters)]
    offsets = [sum(len(p) for p in per[:i]) for i in range(exporters)]
    work = [bodies(p, batch, off) for p, off in zip(per, offsets, strict=True)]
    stats = {"records": 0, "throttled": 0}
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        start = time.perf_counter()
        await asyncio.gather(*(exporter(client, w, stats) for w in work))
        sent = time.perf_counter() - start
        while (await client.get("/detections", params={"limit": 1})).json()["total"] < len(sequences):
            await asyncio.sleep(0.1)
        done = time.perf_counter() - start
        metrics = (await client.get("/metrics")).text
    closed = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("logtriage_sessions_closed_total{")
    )
    return {"exporters": exporters, "records": stats["records"], "sessions": int(closed), "sent_s": sent,
            "done_s": done, "throttled": stats["throttled"]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--detector", required=True)
    p.add_argument("--data", required=True, help="sequence records (JSON/JSONL/CSV); each becomes one trace")
    p.add_argument("--sessions", type=int, default=400)
    p.add_argument("--exporters", default="1,16")
    p.add_argument("--batch", type=int, default=512, help="records per export request (the SDK's default batch)")
    p.add_argument("--idle", type=float, default=1.0, help="LOGTRIAGE_SESSION_IDLE_SECONDS")
    args = p.parse_args(argv)
    sequences = [r.log_entries for _, r in zip(range(args.sessions), iter_records(args.data), strict=False)]
    n_records = sum(map(len, sequences))
    print(f"{len(sequences)} sessions, {n_records} records, {os.cpu_count()} CPUs, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY')}", file=sys.stderr)  # fmt: skip
    rows = []
    for exporters in (int(x) for x in args.exporters.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            env = {"LOGTRIAGE_DETECTOR_PATH": args.detector, "LOGTRIAGE_LOAD_EXPLAINER": "false",
                   "LOGTRIAGE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/bench.db",
                   "LOGTRIAGE_SESSION_IDLE_SECONDS": str(args.idle), "LOGTRIAGE_SESSION_SWEEP_SECONDS": "0.2",
                   "LOGTRIAGE_OTLP_LINE_TEMPLATE": "{body}"}  # fmt: skip
            with running_server(env) as server:
                rows.append(asyncio.run(export_all(server.url, sequences, exporters, args.batch)))
    print("| exporters | records | sessions | accepted records/s | end to end records/s (scored, stored) | 429s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['exporters']} | {r['records']} | {r['sessions']} | {r['records'] / r['sent_s']:.0f} | "
              f"{r['records'] / r['done_s']:.0f} | {r['throttled']} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
