"""What the dashboard reads: risk and service filters, the anomaly timeline counted in SQL, the facets."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from db import crud
from db.session import Database
from tests.db.test_crud import T0, detection, explanation


async def _seed(db: Database) -> dict[str, str]:
    # twelve detections five minutes apart from T0; i % 3 == 0 normal, else anomalous (high when i % 3 == 2)
    async with db.session() as s:
        made = await crud.create_detections(
            s,
            [
                detection(
                    sequence_id=f"s{i}",
                    created_at=T0 + timedelta(minutes=5 * i),
                    is_anomaly=i % 3 != 0,
                    risk_level=("low", "medium", "high")[i % 3],
                    service=("orders", "payments", None)[i % 3] if i < 9 else "支付服务",
                )
                for i in range(12)
            ],
        )
        ids = {d.sequence_id: d.id for d in made}
        for i, category in ((1, "timeout"), (2, "timeout"), (4, "database_error"), (10, "timeout")):
            await crud.save_explanation(s, ids[f"s{i}"], explanation(category))
        await s.commit()
    return ids


async def test_risk_and_service_filters(db: Database) -> None:
    await _seed(db)

    async def seqs(**kw: Any) -> tuple[list[str], int]:
        async with db.session() as s:
            rows, total = await crud.list_detections(s, **kw)
        return [r.sequence_id for r in rows], total

    assert await seqs(risk=["high"]) == (["s11", "s8", "s5", "s2"], 4)
    assert await seqs(risk=["high", "medium"], limit=3) == (["s11", "s10", "s8"], 8)
    assert await seqs(service="orders") == (["s6", "s3", "s0"], 3)
    assert await seqs(service="支付服务", risk=["medium"]) == (["s10"], 1)
    assert await seqs(service="payments", category="timeout") == (["s1"], 1)
    assert await seqs(service="nobody") == ([], 0)


async def test_timeline_counts_anomalies_per_bucket_and_category(db: Database) -> None:
    await _seed(db)
    async with db.session() as s:
        # 15-minute buckets from T0: bucket k holds detections 3k, 3k+1, 3k+2 (3k is normal: not counted)
        counted = await crud.anomaly_timeline(s, T0, T0 + timedelta(hours=1), 900)
        assert counted == {
            (0, "timeout"): 2,
            (1, "database_error"): 1,
            (1, crud.UNEXPLAINED): 1,
            (2, crud.UNEXPLAINED): 2,
            (3, "timeout"): 1,
            (3, crud.UNEXPLAINED): 1,
        }
        # the range and the filters apply: from s4 on (inclusive), before s10 (exclusive), high risk only
        counted = await crud.anomaly_timeline(
            s, T0 + timedelta(minutes=20), T0 + timedelta(minutes=50), 600, risk=["high"]
        )
        assert counted == {(0, crud.UNEXPLAINED): 1, (2, crud.UNEXPLAINED): 1}  # s5 (minute 25), s8 (minute 40)
        assert await crud.anomaly_timeline(s, T0, T0 + timedelta(hours=1), 3600, service="payments") == {
            (0, "timeout"): 1,
            (0, "database_error"): 1,
            (0, crud.UNEXPLAINED): 1,
        }
        assert await crud.anomaly_timeline(s, T0, T0 + timedelta(hours=1), 3600, service="orders") == {}  # all normal


async def test_facets(db: Database) -> None:
    async with db.session() as s:
        assert await crud.facets(s) == ([], [])
    await _seed(db)
    async with db.session() as s:
        categories, services = await crud.facets(s)
    assert categories == ["database_error", "timeout"]
    assert sorted(services) == sorted(["orders", "payments", "支付服务"]) and len(services) == 3
