"""Signals to real processes: SIGTERM to ``logtriage worker`` and ``logtriage serve`` with a job running, and
``kill -9`` of a server under load with queued jobs (restarted: every acknowledged detection there, every job
done once). The LLM is a real OpenAI-compatible server on a local port (:mod:`tests.llm_stub`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from db import crud, queue
from db.session import Database
from tests.api.test_service import pick
from tests.db.test_queue import add_detections, enqueue_all
from tests.llm_stub import StubLLM, free_port

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 180.0  # a cold start imports torch and transformers on a busy machine


def service_env(db_url: str, stub: StubLLM, explainer: Path, **settings: Any) -> dict[str, str]:
    """The environment of a worker or server on ``db_url`` explaining through ``stub``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGTRIAGE_")}
    env.update(
        {
            "LOGTRIAGE_DATABASE_URL": db_url,
            "LOGTRIAGE_LLM_BACKEND": "openai",
            "LOGTRIAGE_OPENAI_BASE_URL": stub.url,
            "LOGTRIAGE_EXPLAINER_PATH": str(explainer),
            "OMP_WAIT_POLICY": "PASSIVE",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    env.update({f"LOGTRIAGE_{k.upper()}": str(v) for k, v in settings.items()})
    return env


@contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``logtriage ARGS`` as a child process (output to ``log``); killed at the end if still running."""
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "logtriage", *args], cwd=REPO, env=env, stdout=out, stderr=out)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def wait_for(
    check: Any, seconds: float, what: str, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None
) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"the process exited ({proc.returncode}) before {what}: {log and log.read_text()[-3000:]}"
            )
        time.sleep(0.1)
    raise AssertionError(f"not within {seconds} s: {what}; {log and log.read_text()[-3000:]}")


def stopped_cleanly(proc: subprocess.Popen[bytes], log: Path) -> bool:
    """Exited after a clean shutdown: 0, or uvicorn's SIGTERM raised again once its shutdown is complete."""
    rc = proc.wait(60)
    return rc == 0 or (rc == -signal.SIGTERM and "Application shutdown complete" in log.read_text())


def serving(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


async def job_of(db_url: str, detection_id: str) -> Any:
    database = Database(db_url)
    try:
        async with database.session() as s:
            return await queue.latest_job(s, detection_id), await crud.get_detection(s, detection_id)
    finally:
        await database.dispose()


async def test_sigterm_lets_the_worker_finish_its_job(db_url: str, tiny_explainer_path: Path, tmp_path: Path) -> None:
    database = Database(db_url)
    await database.upgrade()
    (detection_id,) = await add_detections(database, 1)
    await enqueue_all(database, [detection_id])
    await database.dispose()
    log = tmp_path / "worker.log"
    with StubLLM(delay=0.5).start() as stub:  # five requests: a job of 2.5 s, within the grace
        env = service_env(db_url, stub, tiny_explainer_path, shutdown_grace_seconds=120)
        with process(["worker"], env, log) as proc:
            wait_for(lambda: stub.requests >= 1, START_TIMEOUT, "the job started", proc, log)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(120) == 0, log.read_text()[-3000:]
    job, detection = await job_of(db_url, detection_id)
    assert (job.status, job.attempts) == ("done", 1), log.read_text()[-3000:]
    assert detection.explanation is not None and detection.explanation.summary
    assert "worker stopped" in log.read_text()


async def test_sigterm_releases_the_job_a_worker_cannot_finish(
    db_url: str, tiny_explainer_path: Path, tmp_path: Path
) -> None:
    database = Database(db_url)
    await database.upgrade()
    (detection_id,) = await add_detections(database, 1)
    await enqueue_all(database, [detection_id], max_attempts=3)
    await database.dispose()
    log = tmp_path / "worker.log"
    with StubLLM(delay=300).start() as stub:  # an LLM call far longer than the grace
        env = service_env(db_url, stub, tiny_explainer_path, shutdown_grace_seconds=1, job_lease_seconds=300)
        with process(["worker"], env, log) as proc:
            wait_for(lambda: stub.requests >= 1, START_TIMEOUT, "the job started", proc, log)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0, log.read_text()[-3000:]  # does not wait for the call
    job, detection = await job_of(db_url, detection_id)
    # back in the queue at once (not stranded for its 300 s lease), the interrupted try given back
    assert (job.status, job.locked_by, job.attempts, job.max_attempts) == ("queued", None, 1, 4)
    assert "worker stopped" in (job.last_error or "") and detection.explanation is None


async def test_sigterm_to_serve_releases_the_running_job(
    db_url: str, tiny_detector_path: Path, tiny_explainer_path: Path, test_sequences: list, tmp_path: Path
) -> None:
    log, port = tmp_path / "serve.log", free_port()
    with StubLLM(delay=300).start() as stub:
        env = service_env(db_url, stub, tiny_explainer_path, detector_path=tiny_detector_path,
                          shutdown_grace_seconds=1, job_lease_seconds=300)  # fmt: skip
        with process(["serve", "--port", str(port)], env, log) as proc:
            wait_for(lambda: serving(port), START_TIMEOUT, "the server up", proc, log)
            r = httpx.post(f"http://127.0.0.1:{port}/detect",
                           json={"sequences": pick(test_sequences, 1, 1), "explain": "always"}, timeout=60)  # fmt: skip
            assert r.status_code == 200, r.text
            (detection_id,) = r.json()["queued"]
            wait_for(lambda: stub.requests >= 1, 60, "the job started", proc, log)
            proc.send_signal(signal.SIGTERM)
            assert stopped_cleanly(proc, log), log.read_text()[-3000:]
    job, _ = await job_of(db_url, detection_id)
    assert (job.status, job.locked_by, job.attempts, job.max_attempts) == ("queued", None, 1, 4), log.read_text()[
        -3000:
    ]


class Load:
    """Clients sending one-sequence /detect requests (explain always) until the server stops answering."""

    def __init__(self, port: int, sequences: list[dict[str, Any]], clients: int = 3) -> None:
        self.port, self.sequences = port, sequences
        self.acknowledged: list[str] = []
        self._lock = threading.Lock()
        self._counter = 0
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def _client(self) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60) as client:
            while True:
                with self._lock:
                    self._counter += 1
                    seq = {
                        **self.sequences[self._counter % len(self.sequences)],
                        "sequence_id": f"load-{self._counter}",
                    }
                try:
                    r = client.post("/detect", json={"sequences": [seq], "explain": "always"})
                except httpx.HTTPError:
                    return  # the server went away: what it answered before is what counts
                if r.status_code == 200:
                    with self._lock:
                        self.acknowledged.append(r.json()["detections"][0]["id"])

    def join(self) -> None:
        for t in self.threads:
            t.join(120)


@pytest.mark.postgres
async def test_kill_9_and_sigterm_lose_no_detection_and_do_every_job_once(
    pg_url: str, tiny_detector_path: Path, tiny_explainer_path: Path, test_sequences: list, tmp_path: Path
) -> None:
    log, port = tmp_path / "serve.log", free_port()
    sequences = pick(test_sequences, 1, 4) + pick(test_sequences, 0, 4)
    with StubLLM(delay=0.1).start() as stub:  # half a second per explanation: jobs queue up under load
        env = service_env(pg_url, stub, tiny_explainer_path, detector_path=tiny_detector_path, workers=2,
                          shutdown_grace_seconds=2, job_lease_seconds=4)  # fmt: skip
        serve = ["serve", "--port", str(port)]
        with process(serve, env, log) as proc:
            wait_for(lambda: serving(port), START_TIMEOUT, "the server up", proc, log)
            load = Load(port, sequences)
            wait_for(lambda: len(load.acknowledged) >= 20 and stub.requests >= 3, 120, "load acknowledged", proc, log)
            proc.send_signal(signal.SIGKILL)  # kill -9 mid-load, jobs queued and running
            proc.wait(30)
            load.join()
        acknowledged = list(load.acknowledged)

        with process(serve, env, log) as proc:  # restarted; then SIGTERM while jobs run
            wait_for(lambda: serving(port), START_TIMEOUT, "the server up again", proc, log)
            load = Load(port, sequences)
            before = stub.requests
            wait_for(lambda: len(load.acknowledged) >= 10 and stub.requests > before, 120, "jobs running", proc, log)
            proc.send_signal(signal.SIGTERM)
            assert stopped_cleanly(proc, log), log.read_text()[-3000:]
            load.join()
        acknowledged += load.acknowledged

        with process(serve, env, log) as proc:  # restarted: drains the queue
            wait_for(lambda: serving(port), START_TIMEOUT, "the server up a third time", proc, log)
            url = f"http://127.0.0.1:{port}"

            def drained() -> Any:
                counts = httpx.get(f"{url}/jobs", timeout=30).json()["counts"]
                return counts["queued"] == counts["running"] == 0

            wait_for(drained, 300, "every job finished", proc, log)
            jobs = httpx.get(f"{url}/jobs", params={"limit": 1000}, timeout=30).json()
            for detection_id in acknowledged:
                r = httpx.get(f"{url}/detections/{detection_id}", timeout=30)
                assert r.status_code == 200, detection_id  # every acknowledged detection is there
                assert r.json()["job_status"] == "done" and r.json()["explanation"] is not None
            proc.send_signal(signal.SIGTERM)
            assert stopped_cleanly(proc, log)
    assert len(acknowledged) >= 30
    per_detection: dict[str, int] = {}
    for job in jobs["items"]:
        per_detection[job["detection_id"]] = per_detection.get(job["detection_id"], 0) + 1
    assert set(acknowledged) <= set(per_detection)
    assert all(n == 1 for n in per_detection.values())  # one job per detection...
    assert jobs["counts"]["failed"] == 0 and jobs["counts"]["done"] == len(jobs["items"])  # ...done once
    assert "Traceback" not in log.read_text()
