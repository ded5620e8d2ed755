"""A sustained load on the running service: ``/detect`` from many clients for a fixed time, with the
server's memory watched before, during and after.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_load.py --detector artifacts/detector \\
        --data ../shared/datasets/hdfs_sessions/test.jsonl.gz --clients 64 --seconds 60

One real server (``uvicorn``, one process, a fresh SQLite file, explanations off: the load is the
detection path), warmed with every body once; then ``--clients`` clients send one sequence per request
for ``--seconds`` seconds, cycling over the data (flagged sequences included: they carry top lines and
cluster work). Printed: requests, errors (any status >= 300 or transport error), requests/s, p50/p99,
the server's resident memory at the start (after warm-up), its high-water mark during the load and
after ``--settle`` seconds of quiet, and whether it came back within ``--memory-tolerance`` of the start.
Figures only, no assertions; the exit status is 0 unless the server could not be started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving import drive, process_cpu, running_server

from core.io import read_records


def rss_mb(pid: int) -> tuple[float, float]:
    """Resident and high-water resident memory (MB) of process ``pid``."""
    rss = hwm = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    return rss, hwm


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--detector", default="artifacts/detector")
    p.add_argument("--data", default="../shared/datasets/hdfs_sessions/test.jsonl.gz")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--settle", type=float, default=15.0, help="quiet seconds before the memory is read again")
    p.add_argument("--memory-tolerance", type=float, default=0.20)
    p.add_argument("--limit", type=int, default=512, help="distinct sequences to cycle over")
    args = p.parse_args()
    records = list(read_records(args.data))[: args.limit]
    bodies = [
        {"sequences": [{"sequence_id": r.sequence_id, "log_entries": r.log_entries}], "explain": "never"}
        for r in records
    ]
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "LOGTRIAGE_DETECTOR_PATH": args.detector,
            "LOGTRIAGE_LOAD_EXPLAINER": "false",
            "LOGTRIAGE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/load.db",
        }
        with running_server(env) as server:
            asyncio.run(drive(server.url, "/detect", bodies, 8, len(bodies)))  # warm-up: every body once
            time.sleep(2)
            start_rss, _ = rss_mb(server.pid)
            peak = [start_rss]
            done = threading.Event()

            def watch() -> None:
                while not done.wait(0.5):
                    peak.append(rss_mb(server.pid)[0])

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            cpu0 = process_cpu(server.pid)
            stats = asyncio.run(drive(server.url, "/detect", bodies, args.clients, seconds=args.seconds))
            cpu = process_cpu(server.pid) - cpu0
            done.set()
            watcher.join()
            time.sleep(args.settle)
            after_rss, hwm = rss_mb(server.pid)
            health = httpx.get(f"{server.url}/health", timeout=10).status_code
    lengths = [len(r.log_entries) for r in records]
    back = after_rss <= start_rss * (1 + args.memory_tolerance)
    result = {
        **stats,
        "server_cpu_ms_per_request": 1000 * cpu / max(1, stats["requests"]),
        "rss_start_mb": start_rss,
        "rss_peak_mb": max(peak),
        "rss_after_mb": after_rss,
        "vm_hwm_mb": hwm,
        "memory_back": back,
        "health_after": health,
        "sequences": len(records),
        "mean_lines": sum(lengths) / max(1, len(lengths)),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result), file=sys.stderr)
    print("| clients | seconds | requests | errors | req/s | p50 ms | p99 ms | server CPU ms/req | RSS start MB | "
          "RSS peak MB | RSS after MB | back within tolerance |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    print(
        f"| {args.clients} | {args.seconds:.0f} | {stats['requests']:.0f} | {stats['errors']:.0f} | "
        f"{stats['rps']:.1f} | {stats['p50_ms']:.0f} | {stats['p99_ms']:.0f} | "
        f"{result['server_cpu_ms_per_request']:.1f} | {start_rss:.0f} | {max(peak):.0f} | {after_rss:.0f} | "
        f"{'yes' if back else 'no'} ({100 * args.memory_tolerance:.0f}%) |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
