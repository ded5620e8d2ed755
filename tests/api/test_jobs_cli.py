"""``logtriage jobs status`` and ``logtriage jobs retry``: the queue from the command line."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from db import queue
from db.session import Database
from logtriage.cli import main
from tests.db.conftest import db  # noqa: F401  (a migrated database)
from tests.db.test_queue import add_detections, enqueue_all


async def test_jobs_status_and_retry(
    db: Database,  # noqa: F811
    db_url: str,
    capsys: Any,
) -> None:
    a, b = await add_detections(db, 2)
    await enqueue_all(db, [a, b], max_attempts=1)
    async with db.session() as s:
        for _ in range(2):
            job = await queue.claim(s, "w1")
            assert job is not None
            await queue.fail(s, job.id, f"LLM said no to {job.detection_id}\nmore", worker_id="w1")

    assert await asyncio.to_thread(main, ["jobs", "status", "--database-url", db_url]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == {"counts": {"queued": 0, "running": 0, "done": 0, "failed": 2}}
    assert {line["detection_id"] for line in lines[1:]} == {a, b}
    assert all(line["last_error"].startswith("LLM said no to") for line in lines[1:])

    assert await asyncio.to_thread(main, ["jobs", "retry", "--detection", a, "--database-url", db_url]) == 0
    assert json.loads(capsys.readouterr().out) == {"requeued": [a], "count": 1}
    assert await asyncio.to_thread(main, ["jobs", "retry", "--database-url", db_url]) == 0
    assert json.loads(capsys.readouterr().out) == {"requeued": [b], "count": 1}
    async with db.session() as s:
        assert await queue.counts(s) == {"queued": 2, "running": 0, "done": 0, "failed": 0}
        job = await queue.claim(s, "w2")
        assert job is not None and (job.attempts, job.max_attempts) == (1, 3)  # fresh tries (the setting)
