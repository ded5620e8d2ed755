"""Jobs and outages against the real app: the LLM backend going down and coming back (a real OpenAI-compatible
server on a port that is closed and opened again), the database going away (a TCP proxy that is cut), N
workers, and the lease of a long job."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.main import create_app
from core.settings import Settings
from db import queue
from db.session import Database
from large_model.remote import OpenAIExplainer
from tests.api.test_service import pick
from tests.llm_stub import StubLLM
from tests.tcp_proxy import TcpProxy

FAST_RETRIES = {"job_backoff_seconds": 0.2, "job_backoff_max_seconds": 0.5}


@asynccontextmanager
async def app_client(db_url: str, detector: Any, explainer: Any, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The real app (lifespan run) on ``db_url`` with these models."""
    settings = Settings(database_url=db_url, **{"workers": 1, "explain_wait_seconds": 0.0, **overrides})
    app = create_app(settings, detector=detector, explainer=explainer)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


async def wait_until(check: Callable[[], Awaitable[Any]], seconds: float = 60.0, what: str = "") -> Any:
    """Poll ``check`` until it returns something true; its value."""
    for _ in range(int(seconds * 20)):
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {seconds} s: {what}")


async def queue_counts(client: httpx.AsyncClient) -> dict[str, int]:
    r = await client.get("/jobs")
    assert r.status_code == 200, r.text
    return r.json()["counts"]  # type: ignore[no-any-return]


def remote(stub: StubLLM, folder: Path) -> OpenAIExplainer:
    """The OpenAI-compatible explainer against the stub, with the tiny explainer's tokenizer and labels."""
    return OpenAIExplainer(stub.url, "explainer", folder, timeout=5.0)


async def detect_queued(client: httpx.AsyncClient, sequences: list[dict[str, Any]]) -> list[str]:
    r = await client.post("/detect", json={"sequences": sequences, "explain": "always"})
    assert r.status_code == 200, r.text
    assert len(r.json()["queued"]) == len(sequences)
    return r.json()["queued"]  # type: ignore[no-any-return]


async def test_llm_outage_keeps_jobs_queued_until_it_is_back(
    db_url: str, models: tuple[Any, Any], tiny_explainer_path: Path, test_sequences: list, caplog: Any
) -> None:
    stub = StubLLM()  # not started: the LLM backend is down
    caplog.set_level(logging.INFO, logger="api")
    async with app_client(
        db_url, models[0], remote(stub, tiny_explainer_path), workers=2, job_max_attempts=2, **FAST_RETRIES
    ) as client:
        ids = await detect_queued(client, pick(test_sequences, 1, 3))

        async def tried_beyond_max_attempts() -> bool:
            jobs = (await client.get("/jobs")).json()["items"]
            return any(j["attempts"] > 2 for j in jobs)

        await wait_until(tried_beyond_max_attempts, what="jobs probed more often than job_max_attempts")
        counts = await queue_counts(client)
        assert counts["failed"] == 0 and counts["done"] == 0 and counts["queued"] + counts["running"] == 3
        waiting = (await client.get("/jobs", params={"status": "queued"})).json()["items"]
        assert waiting and all("did not answer" in (j["last_error"] or "") for j in waiting)
        ready = await client.get("/ready")
        assert ready.status_code == 503, ready.text
        assert ready.json()["llm"] == "down" and "did not answer" in ready.json()["llm_error"]
        assert ready.json()["database"] and ready.json()["detector"]
        outage_lines = [r for r in caplog.records if "LLM backend unavailable" in r.getMessage()]
        assert len(outage_lines) == 1, [r.getMessage() for r in outage_lines]  # one line per outage

        with stub.start():  # the LLM is back on the same port
            for detection_id in ids:

                async def explained(d: str = detection_id) -> Any:
                    body = (await client.get(f"/detections/{d}")).json()
                    return body if body["job_status"] == "done" else None

                body = await wait_until(explained, what=f"{detection_id} explained")
                assert body["explanation"]["summary"]
            ready = await client.get("/ready")
            assert ready.status_code == 200 and ready.json()["llm"] == "ok", ready.text
            assert await queue_counts(client) == {"queued": 0, "running": 0, "done": 3, "failed": 0}
        assert any("LLM backend back" in r.getMessage() for r in caplog.records)


async def test_failed_jobs_are_retried_through_the_api(
    db_url: str, models: tuple[Any, Any], tiny_explainer_path: Path, test_sequences: list
) -> None:
    with StubLLM(status=400).start() as stub:  # answers, but refuses the request: the job's own failure
        async with app_client(db_url, models[0], remote(stub, tiny_explainer_path), job_max_attempts=2,
                              **FAST_RETRIES) as client:  # fmt: skip
            (detection_id,) = await detect_queued(client, pick(test_sequences, 1, 1))

            async def failed() -> Any:
                return (await queue_counts(client))["failed"] == 1

            await wait_until(failed, what="the job failed")
            (job,) = (await client.get("/jobs", params={"status": "failed"})).json()["items"]
            assert job["detection_id"] == detection_id and job["attempts"] == 2 and "400" in job["last_error"]
            stub.status = None  # fixed
            r = await client.post("/jobs/retry", json={"detection_ids": [detection_id]})
            assert r.status_code == 200 and r.json() == {"requeued": [detection_id], "count": 1}

            async def done() -> Any:
                return (await client.get(f"/detections/{detection_id}")).json()["job_status"] == "done"

            await wait_until(done, what="the retried job done")
            assert (await client.post("/jobs/retry")).json()["count"] == 0  # nothing failed any more


async def test_n_workers_explain_n_at_a_time_and_lease_only_what_can_run(
    db_url: str, models: tuple[Any, Any], tiny_explainer_path: Path, test_sequences: list
) -> None:
    anomalies = pick(test_sequences, 1, 4)
    with StubLLM(delay=0.3).start() as stub:  # each request takes 0.3 s: explanations overlap if they can
        async with app_client(db_url, models[0], remote(stub, tiny_explainer_path), workers=2) as client:
            await detect_queued(client, anomalies)

            async def all_done() -> Any:
                return (await queue_counts(client))["done"] == 4

            await wait_until(all_done, what="4 jobs done")
        assert stub.max_in_flight == 2  # two workers, two explanations at a time against a server

    with StubLLM(delay=0.2).start() as stub:
        one_at_a_time = remote(stub, tiny_explainer_path)
        one_at_a_time.max_concurrency = 1  # as a model in this process: one call at a time
        async with app_client(db_url, models[0], one_at_a_time, workers=3) as client:
            await detect_queued(client, anomalies[:3])
            most_running = 0
            for _ in range(1200):
                counts = await queue_counts(client)
                most_running = max(most_running, counts["running"])
                if counts["done"] == 3 + 4:
                    break
                await asyncio.sleep(0.02)
            assert counts["done"] == 7, counts
        assert most_running == 1  # three workers, but only the job that can run is leased
        assert stub.max_in_flight == 1


async def test_the_lease_of_a_long_job_is_renewed(
    db_url: str, models: tuple[Any, Any], tiny_explainer_path: Path, test_sequences: list
) -> None:
    lease = 1.0
    with StubLLM(delay=0.5).start() as stub:  # five requests: a job of 2.5 s, over twice the lease
        async with app_client(db_url, models[0], remote(stub, tiny_explainer_path), job_lease_seconds=lease) as client:
            (detection_id,) = await detect_queued(client, pick(test_sequences, 1, 1))

            async def running() -> Any:
                return (await queue_counts(client))["running"] == 1

            await wait_until(running, what="the job running")
            other = Database(db_url)  # another worker process, looking for expired leases
            try:
                taken = []
                while (await client.get(f"/detections/{detection_id}")).json()["job_status"] != "done":
                    async with other.session() as s:
                        job = await queue.claim(s, "other-worker", lease)
                    taken.append(job)
                    await asyncio.sleep(0.1)
                assert len(taken) > 10 and taken == [None] * len(taken)  # never taken while it ran
            finally:
                await other.dispose()
            (job,) = (await client.get("/jobs")).json()["items"]
            assert job["status"] == "done" and job["attempts"] == 1


@pytest.mark.postgres
async def test_database_outage_answers_503_with_retry_after(
    pg_url: str, models: tuple[Any, Any], test_sequences: list, caplog: Any
) -> None:
    proxy, url = TcpProxy.for_url(pg_url)
    caplog.set_level(logging.INFO)
    try:
        async with app_client(url, models[0], None, workers=0, db_retry_after_seconds=7) as client:
            seqs = pick(test_sequences, 1, 1)
            stored = await client.post("/detect", json={"sequences": seqs, "explain": "always"})
            assert stored.status_code == 200
            detection_id = stored.json()["detections"][0]["id"]
            proxy.cut()
            calls = [
                client.post("/detect", json={"sequences": seqs}),
                client.get("/detections"),
                client.get(f"/detections/{detection_id}"),
                client.post("/explain", json={"detection_id": detection_id}),
                client.get("/jobs"),
                client.post("/jobs/retry"),
            ]
            for call in calls:
                r = await call
                assert r.status_code == 503, r.text
                assert r.headers["retry-after"] == "7" and "database is unavailable" in r.json()["detail"]
            ready = await client.get("/ready")
            assert ready.status_code == 503 and ready.json()["database"] is False
            assert (await client.get("/health")).status_code == 200
            lines = [r for r in caplog.records if r.name == "api.main" and "database unreachable" in r.getMessage()]
            assert len(lines) == 1 and lines[0].exc_info is None  # one line for the outage, no traceback
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
            proxy.restore()
            assert (await client.get(f"/detections/{detection_id}")).status_code == 200
            assert (await client.get("/ready")).status_code == 200
            assert any("database back" in r.getMessage() for r in caplog.records)
    finally:
        proxy.cut()


@pytest.mark.postgres
async def test_a_finished_explanation_survives_a_database_outage(
    pg_url: str, models: tuple[Any, Any], tiny_explainer_path: Path, test_sequences: list, caplog: Any
) -> None:
    proxy, url = TcpProxy.for_url(pg_url)
    caplog.set_level(logging.INFO, logger="api.worker")
    try:
        with StubLLM(delay=0.4).start() as stub:  # five requests: the job takes 2 s
            async with app_client(url, models[0], remote(stub, tiny_explainer_path)) as client:
                (detection_id,) = await detect_queued(client, pick(test_sequences, 1, 1))
                await wait_until(lambda: asyncio.sleep(0, stub.requests >= 1), what="the explanation started")
                proxy.cut()  # the database goes away while the LLM works
                await wait_until(lambda: asyncio.sleep(0, stub.requests >= 5 and stub.in_flight == 0), 30)
                await asyncio.sleep(2.0)  # the explanation is finished; storing it fails meanwhile
                proxy.restore()

                async def stored() -> Any:
                    body = (await client.get(f"/detections/{detection_id}")).json()
                    return body if body["job_status"] == "done" else None

                body = await wait_until(stored, what="the explanation stored after the outage")
                assert body["explanation"]["summary"]
                (job,) = (await client.get("/jobs")).json()["items"]
                assert job["attempts"] == 1
                assert stub.requests == 5  # explained once: not thrown away and redone
        messages = [r.getMessage() for r in caplog.records if r.name == "api.worker"]
        assert len([m for m in messages if "database unreachable" in m]) == 1, messages  # one line per outage
        assert len([m for m in messages if "database back" in m]) == 1, messages
        assert not [r for r in caplog.records if r.exc_info]
    finally:
        proxy.cut()


@pytest.mark.postgres
async def test_an_idle_worker_logs_a_database_outage_once(
    pg_url: str, models: tuple[Any, Any], tiny_explainer_path: Path, caplog: Any
) -> None:
    proxy, url = TcpProxy.for_url(pg_url)
    caplog.set_level(logging.INFO, logger="api.worker")
    try:
        async with app_client(url, models[0], remote(StubLLM(), tiny_explainer_path), workers=2) as client:
            workers = client.app.state.workers  # type: ignore[attr-defined]
            for w in workers:
                w.poll_seconds = 0.2  # look at the queue five times a second
            proxy.cut()
            await wait_until(lambda: asyncio.sleep(0, workers[0].db_outage.failures >= 20), 60)
            proxy.restore()
            await wait_until(lambda: asyncio.sleep(0, not any(w.db_outage.down for w in workers)), 60)
        messages = [r.getMessage() for r in caplog.records if r.name == "api.worker"]
        down = [m for m in messages if "database unreachable" in m]
        assert len(down) == 1, messages  # one line for the whole outage, not one per try or per worker
        assert len([m for m in messages if "database back" in m]) == 1
        assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    finally:
        proxy.cut()
