"""The perturbed copies of normal sequences: the synthetic anomalies of the one-class head and the
extra anomalies of supervised training."""

from __future__ import annotations

import random
import re

import pytest

from small_model.data import PERTURBATIONS, _slow_down, perturb_lines

NORMAL = [
    "[gateway] received PUT <path> from <ip> port <port> request_id=req-<id>",
    "[inventory] applying stock delta sku=SKU-<id> delta=<num>",
    "redis-<id> cache[<num>]: DEL stock:SKU-<id> took <dur:1e0ms>",
    "[gateway] completed PUT <path> status=<num> latency=<dur:1e1ms>",
]


def test_slow_down_moves_one_bucket_two_or_three_orders_up() -> None:
    rng = random.Random(0)
    seen = set()
    for _ in range(50):
        out = _slow_down("DEL took <dur:1e0ms> then <dur:1e-1ms>", rng)
        assert out is not None
        before = [int(x) for x in re.findall(r"<dur:1e(-?\d+)ms>", "DEL took <dur:1e0ms> then <dur:1e-1ms>")]
        after = [int(x) for x in re.findall(r"<dur:1e(-?\d+)ms>", out)]
        shifts = [b - a for a, b in zip(before, after, strict=True)]
        assert sorted(shifts)[0] == 0 and sorted(shifts)[1] in (2, 3), out  # exactly one bucket moved
        seen.add(tuple(shifts))
    assert len(seen) >= 3  # both buckets and both shifts occur
    assert _slow_down("no duration here", rng) is None


@pytest.mark.parametrize("seed", range(20))
def test_perturbed_copy_always_differs_and_keeps_lines(seed: int) -> None:
    rng = random.Random(seed)
    out = perturb_lines(NORMAL, rng, NORMAL)
    assert out != NORMAL
    assert all(isinstance(x, str) and x for x in out)


def test_every_operation_occurs() -> None:
    rng = random.Random(1)
    kinds = set()
    for _ in range(400):
        out = perturb_lines(NORMAL, rng, ["[search] reindexed sku=SKU-<id> took <dur:1e1ms>"])
        if len(out) < len(NORMAL):
            kinds.add("shorter")
        if len(out) > len(NORMAL):
            kinds.add("longer")
        if len(out) == len(NORMAL) and sorted(out) == sorted(NORMAL):
            kinds.add("reordered")
        if any(re.search(r"<dur:1e[2-4]ms>", x) for x in out if "DEL" in x or "completed" in x):
            kinds.add("slowed")
    assert kinds == {"shorter", "longer", "reordered", "slowed"}
    assert "slow" in PERTURBATIONS
