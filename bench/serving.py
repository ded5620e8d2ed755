"""What the service benchmarks share: a real server of the app on a free port, the CPU time of a process,
and clients that post request bodies in turn and time them.

    from serving import drive, running_server   # beside the bench scripts (python bench/<script>.py)
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_SECONDS = 600


def free_port() -> int:
    """A TCP port nothing listens on now."""
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


@dataclass
class Server:
    """A running server: its base URL and its process."""

    url: str
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        """The server process's id."""
        return self.process.pid


def start_server(env_overrides: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    """A real uvicorn server of the app (one process, ``LOGTRIAGE_*`` settings from ``env_overrides``), once its
    ``/ready`` answers 200; SystemExit when it exits or is not ready within 600 s."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", **env_overrides}
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app", "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)
    deadline = time.time() + READY_TIMEOUT_SECONDS
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"the server did not become ready in {READY_TIMEOUT_SECONDS} s")


@contextmanager
def running_server(env_overrides: dict[str, str]) -> Iterator[Server]:
    """:func:`start_server` on a free port, terminated (and waited for) on the way out."""
    port = free_port()
    proc = start_server(env_overrides, port)
    try:
        yield Server(f"http://127.0.0.1:{port}", proc)
    finally:
        proc.terminate()
        proc.wait(30)


async def drive(
    url: str,
    path: str,
    bodies: list[dict[str, Any]],
    clients: int,
    total: int | None = None,
    seconds: float | None = None,
    server_pid: int | None = None,
) -> dict[str, float]:
    """``clients`` concurrent loops posting ``bodies`` in turn to ``path``, ``total`` requests in all or for
    ``seconds``: requests, errors (a status >= 300 or a transport error), requests/s, p50/p99 latency and, with
    ``server_pid``, the CPU time per request of the server and of this client."""
    if (total is None) == (seconds is None):
        raise ValueError("give total or seconds")
    cpu_server, cpu_client = process_cpu(server_pid), time.process_time()
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total if total is not None else 10**12))
    stop = time.perf_counter() + seconds if seconds is not None else float("inf")

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal errors
        for i in counter:
            if time.perf_counter() >= stop:
                return
            start = time.perf_counter()
            try:
                r = await client.post(path, json=bodies[i % len(bodies)])
                errors += r.status_code >= 300
            except httpx.HTTPError:
                errors += 1
            latencies.append(time.perf_counter() - start)

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=clients)) as client:
        started = time.perf_counter()
        await asyncio.gather(*[client_loop(client) for _ in range(clients)])
        wall = time.perf_counter() - started
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
        "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan"),
    }
