"""The detector on real HDFS block sessions (a committed sample of real lines): a session cut short scores
above its whole version, a session longer than the model's positions is scored whole, gzip input."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from small_model.moe_train import TrainArgs, train_detector
from small_model.scoring import MoEBertDetector

torch.set_num_threads(1)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY: dict[str, Any] = {
    "scratch_layers": 2, "scratch_hidden": 48, "scratch_heads": 2, "scratch_intermediate": 96, "seq_heads": 2,
    "seq_intermediate": 96, "expert_hidden": 48, "head_hidden": 16, "precision": "fp32",
}  # fmt: skip


def read(name: str) -> list[dict[str, Any]]:
    with gzip.open(FIXTURES / name, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="module")
def hdfs_detector(tmp_path_factory: pytest.TempPathFactory) -> MoEBertDetector:
    """A tiny label-free detector trained on the real normal sessions (gzip JSONL read as it is), 32 positions."""
    out = tmp_path_factory.mktemp("hdfs") / "artifact"
    args = TrainArgs(
        train_file=FIXTURES / "hdfs_train_normal.jsonl.gz", output_dir=out, unsupervised=True,
        encoder="mini-scratch", seq_hidden=48, max_lines=32, threads=1, progress=False, batch_size=16,
        mlm_epochs=8.0, epochs=0.2, min_steps=1, lr=2e-3, **TINY,
    )  # fmt: skip
    return MoEBertDetector.from_pretrained(train_detector(args))


def test_a_session_cut_short_scores_above_its_whole_version(hdfs_detector: MoEBertDetector) -> None:
    rng = random.Random(0)
    whole = [r["log_entries"] for r in read("hdfs_test.jsonl.gz") if r["label"] == 0]
    cut = [lines[: rng.randint(2, min(4, len(lines) - 2))] for lines in whole]
    raw = hdfs_detector.raw_from_lines(hdfs_detector.normalize(whole + cut))
    n = len(whole)
    higher = raw["recon"][n:] > raw["recon"][:n]
    assert higher.mean() >= 0.9, higher.mean()
    # the part that sees it is the end that came too soon (forward line modeling)
    assert (raw["next"][n:] > raw["next"][:n]).mean() >= 0.9
    # and a cut session's worst line is its last one (where the end came)
    contributions = [hdfs_detector.line_contributions(lines) for lines in cut[:10]]
    assert sum(int(np.argmax(c) == len(c) - 1) for c in contributions) >= 8


def test_real_anomalies_rank_above_real_normal_sessions(hdfs_detector: MoEBertDetector) -> None:
    test = read("hdfs_test.jsonl.gz")
    raw = hdfs_detector.raw_from_lines(hdfs_detector.normalize([r["log_entries"] for r in test]))
    labels = np.array([r["label"] for r in test])
    assert roc_auc_score(labels, raw["recon"]) > 0.95


def test_a_session_longer_than_the_positions_is_scored_whole(hdfs_detector: MoEBertDetector) -> None:
    """1,000 lines (normal sessions one after another) through 32 positions: every line is scored, and a line
    never seen near the end (far past the first window) stands out where it is."""
    normal = [r["log_entries"] for r in read("hdfs_train_normal.jsonl.gz")]
    long: list[str] = []
    for lines in normal:
        long += lines
        if len(long) >= 1000:
            break
    at = len(long) - 5
    odd = [*long[:at], "081109 203615 148 ERROR dfs.DataNode: disk failure on /mnt/hadoop/dfs/data", *long[at:]]
    scores = hdfs_detector.score([long, odd])
    assert np.isfinite(scores).all() and scores[1] > scores[0]
    contributions = hdfs_detector.line_contributions(odd)
    assert len(contributions) == len(odd)
    near = contributions[at - 3 : at + 4]
    assert contributions[at] == max(near) and contributions[at] > 0.5
