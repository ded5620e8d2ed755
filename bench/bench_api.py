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
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_cpu(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` (every thread), from /proc; 0 where unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(env_overrides: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", **env_overrides}
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "api.main:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)
    deadline = time.time() + 600
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not become ready")


async def drive(
    url: str, path: str, bodies: list[dict[str, Any]], clients: int, total: int, server_pid: int | None = None
) -> dict[str, float]:
    cpu_server, cpu_client = process_cpu(server_pid), time.process_time()
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal errors
        for i in counter:
            body = bodies[i % len(bodies)]
            start = time.perf_counter()
            r = await client.post(path, json=body)
            latencies.append(time.perf_counter() - start)
            if r.status_code >= 300:
                errors += 1

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*[client_loop(client) for _ in range(clients)])
        wall = time.perf_counter() - start
    latencies.sort()
    cpu = {}
    if server_pid is not None:
        cpu["server_cpu_ms"] = 1000 * (process_cpu(server_pid) - cpu_server) / max(1, len(latencies))
        cpu["client_cpu_ms"] = 1000 * (time.process_time() - cpu_client) / max(1, len(latencies))
    return {
        **cpu,
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


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
            port = free_port()
            env = {
                "LOGTRIAGE_DETECTOR_PATH": args.detector,
                "LOGTRIAGE_LOAD_EXPLAINER": "false",
                "LOGTRIAGE_BATCHING": str(batching).lower(),
                "LOGTRIAGE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/bench-{batching}.db",
            }
            proc = start_server(env, port)
            try:
                url = f"http://127.0.0.1:{port}"
                # warm-up: every body the timed runs send, once (a running service's line cache is warm)
                asyncio.run(drive(url, "/detect", bodies, 4, min(len(bodies), args.requests)))
                for clients in (int(c) for c in args.clients.split(",")):
                    stats = asyncio.run(drive(url, "/detect", bodies, clients, args.requests, proc.pid))
                    rows.append((f"/detect, batching {'on' if batching else 'off'}", clients, stats))
                    print(rows[-1], file=sys.stderr)
            finally:
                proc.terminate()
                proc.wait()
        if not args.skip_explain:
            anomalies = [s for s in seqs if s.get("label") == 1]
            ebodies = [{"sequence": {"log_entries": s["log_entries"]}, "wait_seconds": 300} for s in anomalies]
            port = free_port()
            env = {
                "LOGTRIAGE_DETECTOR_PATH": args.detector,
                "LOGTRIAGE_EXPLAINER_PATH": args.explainer,
                "LOGTRIAGE_WORKERS": "1",
                "LOGTRIAGE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/bench-explain.db",
            }
            proc = start_server(env, port)
            try:
                url = f"http://127.0.0.1:{port}"
                for clients in (1, 4):
                    stats = asyncio.run(drive(url, "/explain", ebodies, clients, args.explain_requests))
                    rows.append(("/explain (1 in-process worker)", clients, stats))
                    print(rows[-1], file=sys.stderr)
            finally:
                proc.terminate()
                proc.wait()
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
