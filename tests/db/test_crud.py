"""Detections and explanations: round trip, filters, pagination, upsert, cascades."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from db import crud
from db.models import Detection, Explanation, ExplanationJob
from db.queue import enqueue
from db.session import Database

T0 = datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)


def detection(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "sequence_id": "req-7f3a",
        "log_entries": ["INFO [orders] creating order", "ERROR [orders] call to payments timed out after 30000ms"],
        "score": 0.93,
        "is_anomaly": True,
        "risk_level": "high",
        "threshold": 0.5,
        "model_version": "moe-bert@abc123",
    }
    return fields | overrides


def explanation(category: str = "timeout", **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "category": category,
        "severity": "high",
        "summary": "payments timed out",
        "root_cause": "the payments service did not answer within 30 s",
        "suggested_response": "check the payments pods and their database",
        "model": "explainer@def456",
        "base": "Qwen/Qwen2.5-0.5B-Instruct",
        "latency_ms": 812.5,
    }
    return fields | overrides


async def test_round_trip_every_field(db: Database) -> None:
    full = detection(
        created_at=T0,
        window_info={"type": "sliding", "size": 6, "step": 3, "start": 12},
        top_lines=[{"index": 1, "line": "ERROR ... timed out", "contribution": 0.71}],
        cluster_id=3,
        cluster_description="payment timeouts",
        request_id="r-1",
        source="cli:orders.log",
        log_entries=["ünïcode ✓ line", "second"],
    )
    async with db.session() as s:
        made = await crud.create_detections(s, [full, detection(sequence_id=None)])
        await s.commit()
    assert made[0].explanation is None  # readable without a lazy load
    ids = [d.id for d in made]
    assert len(set(ids)) == 2 and all(len(i) == 36 for i in ids)

    async with db.session() as s:  # a new session reads from the database, not the identity map
        got = await crud.get_detection(s, ids[0])
        other = await crud.get_detection(s, ids[1])
        assert await crud.get_detection(s, "no-such-id") is None
    assert got is not None and other is not None
    for key, value in full.items():
        assert getattr(got, key) == value, key
    assert got.created_at.tzinfo is not None and got.created_at.utcoffset() == timedelta(0)
    assert got.explanation is None
    assert other.sequence_id.startswith("seq-")  # generated when not given
    assert other.created_at.tzinfo is not None
    assert abs((other.created_at - datetime.now(UTC)).total_seconds()) < 60
    assert other.window_info is None and other.top_lines is None and other.cluster_id is None


async def test_unknown_fields_are_refused(db: Database) -> None:
    async with db.session() as s:
        with pytest.raises(ValueError, match="unknown detection field"):
            await crud.create_detections(s, [detection(scroe=1.0)])
        with pytest.raises(ValueError, match="unknown explanation field"):
            await crud.save_explanation(s, "x", explanation(catgory="x"))


async def test_explanation_upsert_and_loaded_with_detection(db: Database) -> None:
    async with db.session() as s:
        (d,) = await crud.create_detections(s, [detection()])
        first = await crud.save_explanation(s, d.id, explanation("timeout"))
        await s.commit()
        assert d.explanation is first  # the loaded detection is kept in step
        second = await crud.save_explanation(
            s, d.id, explanation("resource_exhaustion", severity="critical", lang="zh")
        )
        await s.commit()
        assert second.id == first.id and second.category == "resource_exhaustion"
        assert d.explanation is not None and d.explanation.category == "resource_exhaustion"
    async with db.session() as s:
        got = await crud.get_detection(s, d.id)
        assert got is not None and got.explanation is not None
        assert (got.explanation.category, got.explanation.severity, got.explanation.lang) == (
            "resource_exhaustion",
            "critical",
            "zh",
        )
        assert got.explanation.latency_ms == 812.5
        assert got.explanation.created_at.tzinfo is not None
        assert (await s.execute(select(func.count()).select_from(Explanation))).scalar_one() == 1


async def test_foreign_keys_are_enforced_and_cascade(db: Database) -> None:
    async with db.session() as s:
        with pytest.raises(IntegrityError):
            await crud.save_explanation(s, "no-such-detection", explanation())
        await s.rollback()
        (d,) = await crud.create_detections(s, [detection()])
        await crud.save_explanation(s, d.id, explanation())
        await enqueue(s, d.id)
        await s.commit()
        await s.execute(delete(Detection).where(Detection.id == d.id))
        await s.commit()
        assert (await s.execute(select(func.count()).select_from(Explanation))).scalar_one() == 0
        assert (await s.execute(select(func.count()).select_from(ExplanationJob))).scalar_one() == 0


async def test_list_filters_and_pagination(db: Database) -> None:
    # ten detections one minute apart; odd ones anomalous; explained: 1, 3 (timeout), 5 (crash)
    async with db.session() as s:
        made = await crud.create_detections(
            s,
            [
                detection(sequence_id=f"s{i}", created_at=T0 + timedelta(minutes=i), is_anomaly=i % 2 == 1)
                for i in range(10)
            ],
        )
        by_seq = {d.sequence_id: d.id for d in made}
        for i, category in ((1, "timeout"), (3, "timeout"), (5, "crash")):
            await crud.save_explanation(s, by_seq[f"s{i}"], explanation(category))
        await s.commit()

    async def seqs(**kw: Any) -> tuple[list[str], int]:
        async with db.session() as s:
            rows, total = await crud.list_detections(s, **kw)
        return [r.sequence_id for r in rows], total

    assert await seqs() == ([f"s{i}" for i in range(9, -1, -1)], 10)  # newest first
    assert await seqs(anomalous_only=True) == (["s9", "s7", "s5", "s3", "s1"], 5)
    assert await seqs(category="timeout") == (["s3", "s1"], 2)
    assert await seqs(category="crash", anomalous_only=True) == (["s5"], 1)
    assert await seqs(category="nothing-like-this") == ([], 0)
    # since inclusive, until exclusive; naive datetimes are UTC
    assert await seqs(since=T0 + timedelta(minutes=2), until=T0 + timedelta(minutes=5)) == (["s4", "s3", "s2"], 3)
    naive = (T0 + timedelta(minutes=8)).replace(tzinfo=None)
    assert await seqs(since=naive) == (["s9", "s8"], 2)
    assert await seqs(since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=6), anomalous_only=True) == (
        ["s5", "s3", "s1"],
        3,
    )

    # pages of 3 cover everything once, in order, with the total on every page
    pages = [await seqs(limit=3, offset=o) for o in (0, 3, 6, 9, 12)]
    assert [p[0] for p in pages] == [["s9", "s8", "s7"], ["s6", "s5", "s4"], ["s3", "s2", "s1"], ["s0"], []]
    assert {p[1] for p in pages} == {10}
    assert await seqs(anomalous_only=True, limit=2, offset=2) == (["s5", "s3"], 5)

    async with db.session() as s:
        rows, _ = await crud.list_detections(s, category="crash")
        assert rows[0].explanation is not None and rows[0].explanation.category == "crash"
        with pytest.raises(ValueError, match="limit"):
            await crud.list_detections(s, limit=100_000)
        with pytest.raises(ValueError, match="offset"):
            await crud.list_detections(s, offset=-1)
