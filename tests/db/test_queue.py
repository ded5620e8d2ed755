"""The explanation job queue: order, restarts, crash recovery, retries, and concurrent workers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from db import crud, queue
from db.models import ExplanationJob, JobStatus
from db.session import Database

T0 = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)
LEASE = 60.0


async def add_detections(db: Database, n: int) -> list[str]:
    rows = [
        {
            "sequence_id": f"s{i}",
            "log_entries": [f"line {i}"],
            "score": 0.9,
            "is_anomaly": True,
            "risk_level": "high",
            "threshold": 0.5,
            "model_version": "v1",
        }
        for i in range(n)
    ]
    async with db.session() as s:
        made = await crud.create_detections(s, rows)
        await s.commit()
    return [d.id for d in made]


async def enqueue_all(db: Database, detection_ids: list[str], *, max_attempts: int = 3) -> list[str]:
    async with db.session() as s:
        jobs = [
            await queue.enqueue(s, d, "en", max_attempts=max_attempts, now=T0 + timedelta(milliseconds=i))
            for i, d in enumerate(detection_ids)
        ]
        await s.commit()
    return [j.id for j in jobs]


async def test_enqueue_is_idempotent_while_active_and_joins_the_callers_transaction(db: Database) -> None:
    (d,) = await add_detections(db, 1)
    async with db.session() as s:
        first = await queue.enqueue(s, d, "en")
        again = await queue.enqueue(s, d, "zh")
        assert again.id == first.id and again.lang == "en"
        await s.rollback()  # enqueue does not commit: nothing is left
        assert (await queue.counts(s))["queued"] == 0
        job = await queue.enqueue(s, d, "zh")
        await s.commit()
        assert (job.status, job.attempts, job.max_attempts, job.lang) == ("queued", 0, 3, "zh")

        claimed = await queue.claim(s, "w1", LEASE)
        assert claimed is not None and claimed.id == job.id
        assert (await queue.enqueue(s, d)).id == job.id  # running counts as active too
        assert await queue.complete(s, job.id, worker_id="w1")
        newer = await queue.enqueue(s, d)  # once done, a new request makes a new job
        await s.commit()
        assert newer.id != job.id
        latest = await queue.latest_job(s, d)
        assert latest is not None and latest.id == newer.id
        assert await queue.counts(s) == {"queued": 1, "running": 0, "done": 1, "failed": 0}


async def test_claim_takes_the_oldest_ready_job_once(db: Database) -> None:
    job_ids = await enqueue_all(db, await add_detections(db, 3))
    async with db.session() as s:
        taken = [await queue.claim(s, "w1", LEASE, now=T0 + timedelta(seconds=1)) for _ in range(4)]
    assert [j.id if j else None for j in taken] == [*job_ids, None]
    for j in taken[:3]:
        assert j is not None
        assert (j.status, j.locked_by, j.attempts, j.locked_at) == ("running", "w1", 1, T0 + timedelta(seconds=1))
    async with db.session() as s:
        stored = await queue.get_job(s, job_ids[0])
        assert stored is not None and stored.status == "running" and stored.locked_by == "w1"
        assert await queue.get_job(s, "no-such-job") is None
        # a job not yet available (created "in the future") is not taken
        (d,) = await add_detections(db, 1)
        await queue.enqueue(s, d, now=T0 + timedelta(hours=1))
        await s.commit()
        assert await queue.claim(s, "w1", LEASE, now=T0 + timedelta(minutes=1)) is None
        assert await queue.claim(s, "w1", LEASE, now=T0 + timedelta(hours=1)) is not None


async def test_job_survives_a_restart_and_completes(db_url: str) -> None:
    first = Database(db_url)
    await first.upgrade()
    (d,) = await add_detections(first, 1)
    (job_id,) = await enqueue_all(first, [d])
    await first.dispose()  # the app stops

    second = Database(db_url)  # and starts again on the same database
    try:
        await second.upgrade()
        async with second.session() as s:
            assert await queue.counts(s) == {"queued": 1, "running": 0, "done": 0, "failed": 0}
            job = await queue.claim(s, "after-restart", LEASE)
            assert job is not None and job.id == job_id and job.detection_id == d
            await crud.save_explanation(
                s,
                d,
                {
                    "category": "timeout",
                    "severity": "high",
                    "summary": "s",
                    "root_cause": "r",
                    "suggested_response": "x",
                    "model": "m",
                    "base": "b",
                },
            )
            assert await queue.complete(s, job.id, worker_id="after-restart")  # commits the explanation too
        async with second.session() as s:
            assert await queue.counts(s) == {"queued": 0, "running": 0, "done": 1, "failed": 0}
            stored = await crud.get_detection(s, d)
            assert stored is not None and stored.explanation is not None
            assert stored.explanation.category == "timeout"
    finally:
        await second.dispose()


async def test_expired_lease_is_reclaimed_and_the_old_worker_cannot_finish(db: Database) -> None:
    (job_id,) = await enqueue_all(db, await add_detections(db, 1))
    async with db.session() as s:
        crashed = await queue.claim(s, "w1", LEASE, now=T0)
        assert crashed is not None and crashed.id == job_id
        assert await queue.claim(s, "w2", LEASE, now=T0 + timedelta(seconds=LEASE - 1)) is None  # lease still held
        taken = await queue.claim(s, "w2", LEASE, now=T0 + timedelta(seconds=LEASE + 1))
        assert taken is not None and taken.id == job_id
        assert (taken.locked_by, taken.attempts, taken.status) == ("w2", 2, "running")
        assert not await queue.complete(s, job_id, worker_id="w1")  # w1 came back too late
        assert await queue.fail(s, job_id, "late", worker_id="w1") is None
        assert await queue.complete(s, job_id, worker_id="w2")
        assert not await queue.complete(s, job_id, worker_id="w2")  # done is done
        done = await queue.get_job(s, job_id)
        assert done is not None and done.status == "done"


async def test_extend_lease_keeps_a_slow_job(db: Database) -> None:
    (job_id,) = await enqueue_all(db, await add_detections(db, 1))
    async with db.session() as s:
        assert await queue.claim(s, "w1", LEASE, now=T0) is not None
        assert await queue.extend_lease(s, job_id, "w1", now=T0 + timedelta(seconds=LEASE - 5))
        assert not await queue.extend_lease(s, job_id, "w2")  # not w2's job
        assert await queue.claim(s, "w2", LEASE, now=T0 + timedelta(seconds=LEASE + 1)) is None  # still leased
        assert await queue.claim(s, "w2", LEASE, now=T0 + timedelta(seconds=2 * LEASE)) is not None


async def test_lease_expiring_on_the_last_attempt_marks_the_job_failed(db: Database) -> None:
    (job_id,) = await enqueue_all(db, await add_detections(db, 1), max_attempts=1)
    async with db.session() as s:
        assert await queue.claim(s, "w1", LEASE, now=T0) is not None
        assert await queue.claim(s, "w2", LEASE, now=T0 + timedelta(seconds=LEASE * 2)) is None
        job = await queue.get_job(s, job_id)
        assert job is not None and job.status == "failed" and job.attempts == 1
        assert job.last_error is not None and "lease expired" in job.last_error


async def test_requeue_stale(db: Database) -> None:
    a, b = await enqueue_all(db, await add_detections(db, 2))
    async with db.session() as s:
        assert (await queue.claim(s, "w1", LEASE, now=T0)) is not None
        assert (await queue.claim(s, "w1", LEASE, now=T0 + timedelta(seconds=30))) is not None
        assert await queue.requeue_stale(s, 20, now=T0 + timedelta(seconds=25)) == 1  # only the first is stale
        ja, jb = await queue.get_job(s, a), await queue.get_job(s, b)
        assert ja is not None and jb is not None
        assert (ja.status, ja.locked_by, ja.locked_at, ja.attempts) == ("queued", None, None, 1)
        assert jb.status == "running"
        again = await queue.claim(s, "w2", LEASE, now=T0 + timedelta(seconds=26))
        assert again is not None and again.id == a and again.attempts == 2
        assert await queue.requeue_stale(s, timedelta(hours=1), now=T0 + timedelta(seconds=26)) == 0


async def test_failures_back_off_then_fail_with_the_error_kept(db: Database) -> None:
    (job_id,) = await enqueue_all(db, await add_detections(db, 1), max_attempts=3)
    now = T0 + timedelta(seconds=1)
    async with db.session() as s:
        for attempt in (1, 2):
            job = await queue.claim(s, "w1", LEASE, now=now)
            assert job is not None and job.id == job_id and job.attempts == attempt
            retried = await queue.fail(s, job_id, f"boom {attempt}", worker_id="w1", backoff_seconds=10, now=now)
            assert retried is not None
            delay = timedelta(seconds=10 * 2 ** (attempt - 1))  # 10 s, then 20 s
            assert (retried.status, retried.last_error, retried.locked_by) == ("queued", f"boom {attempt}", None)
            assert retried.available_at == now + delay
            assert await queue.claim(s, "w1", LEASE, now=now + delay - timedelta(seconds=1)) is None  # backing off
            now += delay
        job = await queue.claim(s, "w1", LEASE, now=now)
        assert job is not None and job.attempts == 3
        final = await queue.fail(s, job_id, "boom 3\nTraceback ...", now=now)
        assert final is not None
        assert (final.status, final.attempts, final.last_error) == ("failed", 3, "boom 3\nTraceback ...")
        assert await queue.claim(s, "w1", LEASE, now=now + timedelta(days=1)) is None  # never again
        assert await queue.fail(s, job_id, "again") is None
        assert await queue.counts(s) == {"queued": 0, "running": 0, "done": 0, "failed": 1}
    async with db.session() as s:  # kept in the database, not only in the session
        stored = (await s.scalars(select(ExplanationJob).where(ExplanationJob.id == job_id))).one()
        assert stored.status == JobStatus.FAILED and stored.last_error == "boom 3\nTraceback ..."


async def test_long_errors_are_trimmed_keeping_both_ends(db: Database) -> None:
    (job_id,) = await enqueue_all(db, await add_detections(db, 1))
    error = "first line\n" + "x" * 50_000 + "\nlast line"
    async with db.session() as s:
        assert await queue.claim(s, "w1", LEASE) is not None
        job = await queue.fail(s, job_id, error)
    assert job is not None and job.last_error is not None
    assert len(job.last_error) < queue.MAX_ERROR_CHARS + 100
    assert job.last_error.startswith("first line") and job.last_error.endswith("last line")


def test_backoff_delay_grows_and_is_capped() -> None:
    assert [queue.backoff_delay(n, 5) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert queue.backoff_delay(50, 5) == queue.MAX_BACKOFF_SECONDS


async def test_two_workers_on_two_engines_never_take_a_job_twice(db_url: str) -> None:
    n_jobs = 150
    setup = Database(db_url)
    await setup.upgrade()
    job_ids = set(await enqueue_all(setup, await add_detections(setup, n_jobs)))
    await setup.dispose()

    engines = [Database(db_url), Database(db_url)]  # as two processes would have
    claimed: dict[str, list[str]] = {"w0": [], "w1": []}

    async def worker(name: str, database: Database) -> None:
        async with database.session() as s:
            while (job := await queue.claim(s, name, LEASE)) is not None:
                claimed[name].append(job.id)
                await asyncio.sleep(0)  # let the other worker in between claim and complete
                assert await queue.complete(s, job.id, worker_id=name)

    try:
        await asyncio.wait_for(asyncio.gather(*(worker(f"w{i}", e) for i, e in enumerate(engines))), 45)
        every = claimed["w0"] + claimed["w1"]
        assert len(every) == len(set(every)) == n_jobs  # no job twice
        assert set(every) == job_ids
        assert claimed["w0"] and claimed["w1"]  # both really worked
        async with engines[0].session() as s:
            assert await queue.counts(s) == {"queued": 0, "running": 0, "done": n_jobs, "failed": 0}
            rows = (await s.execute(select(ExplanationJob.id, ExplanationJob.locked_by, ExplanationJob.attempts))).all()
        owner = {job: name for name, jobs in claimed.items() for job in jobs}
        assert all(owner[job] == locked_by and attempts == 1 for job, locked_by, attempts in rows)
    finally:
        for e in engines:
            await e.dispose()


@pytest.mark.postgres
async def test_claim_skips_a_locked_job_instead_of_waiting(pg_url: str) -> None:
    holder, claimer = Database(pg_url), Database(pg_url)
    try:
        await holder.upgrade()
        first, second = await enqueue_all(holder, await add_detections(holder, 2))
        async with holder.engine.connect() as conn:
            # another transaction holds the oldest job's row, as a claimer mid-flight would
            await conn.execute(text("SELECT id FROM explanation_jobs WHERE id = :id FOR UPDATE"), {"id": first})
            async with claimer.session() as s:
                job = await asyncio.wait_for(queue.claim(s, "w2", LEASE), 5)
                assert job is not None and job.id == second
                assert await asyncio.wait_for(queue.claim(s, "w2", LEASE), 5) is None
            await conn.rollback()
        async with claimer.session() as s:
            job = await queue.claim(s, "w2", LEASE)
            assert job is not None and job.id == first
    finally:
        await holder.dispose()
        await claimer.dispose()


async def test_release_gives_the_try_back_and_backoff_is_configurable(db: Database) -> None:
    (job_id,) = await enqueue_all(db, await add_detections(db, 1), max_attempts=2)
    async with db.session() as s:
        taken = await queue.claim(s, "w1", LEASE, now=T0)
        assert taken is not None and taken.attempts == 1
        assert await queue.release(s, job_id, "w2", now=T0) is None  # not w2's job
        back = await queue.release(s, job_id, "w1", delay_seconds=30, error="LLM down", now=T0)
        assert back is not None
        assert (back.status, back.locked_by, back.attempts, back.max_attempts) == ("queued", None, 1, 3)
        assert back.last_error == "LLM down" and back.available_at == T0 + timedelta(seconds=30)
        assert await queue.claim(s, "w1", LEASE, now=T0 + timedelta(seconds=29)) is None  # waits out the delay
        for n in range(2, 4):  # two tries of its own left: the released one was not counted
            job = await queue.claim(s, "w1", LEASE, now=T0 + timedelta(hours=n))
            assert job is not None and job.attempts == n
            failed = await queue.fail(
                s, job_id, "bad input", worker_id="w1", backoff_seconds=60, max_backoff_seconds=90, now=T0
            )
            assert failed is not None
        assert failed is not None and failed.status == "failed" and failed.attempts == 3
    assert [queue.backoff_delay(n, 60, 90) for n in (1, 2, 3)] == [60, 90, 90]
    assert queue.backoff_delay(10_000, 5) == queue.MAX_BACKOFF_SECONDS  # no overflow on a long outage


async def test_retry_failed_requeues_the_latest_failed_job_of_each_detection(db: Database) -> None:
    a, b, c = await add_detections(db, 3)
    await enqueue_all(db, [a, b, c], max_attempts=1)
    async with db.session() as s:
        for _ in range(3):
            job = await queue.claim(s, "w1", LEASE)
            assert job is not None
            await queue.fail(s, job.id, f"boom {job.detection_id}", worker_id="w1")
        assert (await queue.counts(s))["failed"] == 3
        newer = await queue.enqueue(s, c)  # c was asked again meanwhile: its failed job is not retried
        await s.commit()
        assert await queue.retry_failed(s, [a], max_attempts=4) == [a]
        assert await queue.retry_failed(s, [a], max_attempts=4) == []  # queued now, not failed
        assert sorted(await queue.retry_failed(s, max_attempts=4)) == [b]
        assert await queue.retry_failed(s, []) == []
        jobs = {j.detection_id: j for j in await queue.list_jobs(s, "queued")}
        assert (jobs[a].status, jobs[a].attempts, jobs[a].max_attempts) == ("queued", 0, 4)
        assert jobs[a].last_error == f"boom {a}"  # kept until the next try
        latest_c = await queue.latest_job(s, c)
        assert latest_c is not None and latest_c.id == newer.id and latest_c.status == "queued"
        assert await queue.counts(s) == {"queued": 3, "running": 0, "done": 0, "failed": 1}
        failed = await queue.list_jobs(s, "failed")
        assert [j.detection_id for j in failed] == [c]
