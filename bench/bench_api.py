"""Throughput and latency of the running service: ``/detect`` at 1, 16 and 64 concurrent clients
with micro-batching on and off, and ``/explain``, in one run.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_api.py \
        --detector artifacts/detector --explainer artifacts/explainer --data data/splits/test.json

Each configuration starts a real server (``uvicorn``, one process, a fresh SQLite file) and drives
it over HTTP from this process with ``httpx``. Prints a Markdown table with, beside throughput and
latency, the CPU time per request of the server process and of this client (both on the same
machine: on 2 cores their sum is what caps the rate).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

from serving import drive, running_server


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--detector", default="artifacts/detector")
    p.add_argument("--explainer", default="artifacts/explainer")
    p.add_argument("--data", default="data/splits/test.json")
    p.add_argument("--requests", type=int, default=256, help="/detect requests per configuration")
    p.add_argument("--explain-requests", type=int, default=8)
    p.add_argument("--clients", default="1,16,64")
    p.add_argument("--skip-explain", action="store_true")
    args = p.parse_args()
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        print("warning: OMP_WAIT_POLICY is not PASSIVE; 2-thread CPU runs will be much slower", file=sys.stderr)
    seqs = json.loads(Path(args.data).read_text(encoding="utf-8"))
    bodies = [
        {"sequences": [{"sequence_id": s["sequence_id"], "log_entries": s["log_entries"]}], "explain": "never"}
        for s in seqs
    ]
    rows: list[tuple[str, int, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for batching in (True, False):
            env = {
                "LOGTRIAGE_DETECTOR_PATH": args.detector,
                "LOGTRIAGE_LOAD_EXPLAINER": "false",
                "LOGTRIAGE_BATCHING": str(batching).lower(),
                "LOGTRIAGE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/bench-{batching}.db",
            }
            with running_server(env) as server:
                # warm-up: every body the timed runs send, once (a running service's line cache is warm)
                asyncio.run(drive(server.url, "/detect", bodies, 4, min(len(bodies), args.requests)))
                for clients in (int(c) for c in args.clients.split(",")):
                    stats = asyncio.run(drive(server.url, "/detect", bodies, clients, args.requests,
                                              server_pid=server.pid))  # fmt: skip
                    rows.append((f"/detect, batching {'on' if batching else 'off'}", clients, stats))
                    print(rows[-1], file=sys.stderr)
        if not args.skip_explain:
            anomalies = [s for s in seqs if s.get("label") == 1]
            ebodies = [{"sequence": {"log_entries": s["log_entries"]}, "wait_seconds": 300} for s in anomalies]
            env = {
                "LOGTRIAGE_DETECTOR_PATH": args.detector,
                "LOGTRIAGE_EXPLAINER_PATH": args.explainer,
                "LOGTRIAGE_WORKERS": "1",
                "LOGTRIAGE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/bench-explain.db",
            }
            with running_server(env) as server:
                for clients in (1, 4):
                    stats = asyncio.run(drive(server.url, "/explain", ebodies, clients, args.explain_requests))
                    rows.append(("/explain (1 in-process worker)", clients, stats))
                    print(rows[-1], file=sys.stderr)
    print("| endpoint | clients | requests | errors | req/s | p50 ms | p99 ms | CPU ms/request: server | client |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, clients, s in rows:
        cpu = f"{s['server_cpu_ms']:.1f} | {s['client_cpu_ms']:.1f}" if "server_cpu_ms" in s else "– | –"
        print(
            f"| {name} | {clients} | {s['requests']:.0f} | {s['errors']:.0f} | {s['rps']:.1f} | "
            f"{s['p50_ms']:.0f} | {s['p99_ms']:.0f} | {cpu} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
