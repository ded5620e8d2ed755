"""DeepLog baseline on a toy set: loss falls, anomalies rank above normals, save/load, data errors."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from core.errors import DataError, ModelError
from core.io import write_records
from core.schema import SequenceRecord
from small_model.deeplog import DeepLogConfig, DeepLogDetector, DeepLogLSTM, windows
from small_model.deeplog_train import train_deeplog
from small_model.metrics import roc_auc
from small_model.registry import detector_kind, load_detector

torch.set_num_threads(1)

TINY: dict[str, Any] = {
    "window": 4,
    "embedding_dim": 8,
    "hidden_size": 16,
    "epochs": 40,
    "lr": 1e-2,
    "top_g": 2,
    "dropout": 0.0,
}
FLOWS = [
    [
        "gateway received request req-{r} from 10.0.0.{n}",
        "auth verified token for user {u}",
        "cart loaded with {n} items",
        "payment charged {n} EUR",
        "database committed transaction",
        "gateway answered status 200 in {n} ms",
    ],
    [
        "scheduler started nightly job job-{r}",
        "exporter read {n} rows from table invoices",
        "exporter uploaded archive to bucket backups",
        "scheduler finished job successfully",
    ],
]
UNKNOWN = "kernel panic: unable to mount root filesystem on device sda{n}"


def _fill(line: str, rng: random.Random) -> str:
    return line.format(r=rng.randint(1000, 9999), n=rng.randint(1, 250), u=rng.choice(["ann", "bob", "cy"]))


def normal(rng: random.Random) -> list[str]:
    return [_fill(x, rng) for x in rng.choice(FLOWS)]


def anomaly(rng: random.Random, kind: str) -> list[str]:
    lines = normal(rng)
    if kind == "swapped":
        i = rng.randrange(1, len(lines) - 1)
        lines[i], lines[i + 1] = lines[i + 1], lines[i]
    elif kind == "missing":
        del lines[rng.randrange(1, len(lines))]
    else:
        lines.insert(rng.randrange(1, len(lines)), _fill(UNKNOWN, rng))
    return lines


def records(n_normal: int, n_anomalous: int, seed: int) -> list[SequenceRecord]:
    rng = random.Random(seed)
    out = [SequenceRecord(sequence_id=f"n{seed}-{i}", label=0, log_entries=normal(rng)) for i in range(n_normal)]
    kinds = ["swapped", "missing", "unknown"]
    for i in range(n_anomalous):
        kind = kinds[i % 3]
        out.append(
            SequenceRecord(sequence_id=f"a{seed}-{i}", label=1, log_entries=anomaly(rng, kind), anomaly_type=kind)
        )
    return out


@pytest.fixture(scope="module")
def trained() -> DeepLogDetector:
    return DeepLogDetector(DeepLogConfig(**TINY)).fit(records(60, 0, seed=1), progress=False)


def test_windows_pad_the_start_and_predict_the_end() -> None:
    hist, tgt = windows([5, 6, 7], window=2, predict_end=True)
    assert hist.tolist() == [[0, 0], [0, 5], [5, 6], [6, 7]]
    assert tgt.tolist() == [5, 6, 7, 1]


def test_model_shapes_and_loss() -> None:
    model = DeepLogLSTM(DeepLogConfig(vocab_size=10, embedding_dim=4, hidden_size=6))
    out = model(torch.randint(0, 10, (3, 5)), torch.tensor([1, 2, 3]))
    assert out.logits.shape == (3, 10) and out.hidden.shape == (3, 6)
    assert out.loss is not None and out.loss.ndim == 0


def test_loss_falls_and_anomalies_rank_above_normals(trained: DeepLogDetector) -> None:
    assert trained.history[-1] < 0.5 * trained.history[0]
    test = records(30, 30, seed=2)
    scores = trained.score([r.log_entries for r in test])
    labels = np.array([r.label for r in test])
    assert scores.min() >= 0.0 and scores.max() <= 1.0
    assert roc_auc(labels, scores) > 0.9
    flags = np.array([d.is_anomaly for d in trained.predict([r.log_entries for r in test])])
    assert flags[labels == 1].mean() >= 0.8  # the classic any-miss rule (g = 2 of ~13 ids)
    assert flags[labels == 0].mean() < 0.1
    # the threshold 0.5 of an uncalibrated detector is the classic rule
    assert np.array_equal(flags, scores >= trained.threshold)


def test_unknown_template_is_a_miss(trained: DeepLogDetector) -> None:
    lines = normal(random.Random(3))
    lines.insert(2, UNKNOWN.format(n=1))
    raw = trained.raw_scores([lines])
    assert raw["unknown"][0] == 1 and raw["misses"][0] >= 1
    contributions = trained.line_contributions(lines)
    assert len(contributions) == len(lines)
    assert int(np.argmax(contributions)) == 2
    assert trained.line_contributions_many([lines, lines[:3]]) == [contributions, trained.line_contributions(lines[:3])]


def test_embed_shapes(trained: DeepLogDetector) -> None:
    seqs = [r.log_entries for r in records(3, 3, seed=4)]
    assert trained.embed(seqs).shape == (6, TINY["hidden_size"])
    trained.config.embed_pooling = "mean"
    try:
        assert trained.embed(seqs).shape == (6, TINY["hidden_size"])
    finally:
        trained.config.embed_pooling = "last"


def test_save_then_load_gives_identical_scores(trained: DeepLogDetector, tmp_path: Path) -> None:
    seqs = [r.log_entries for r in records(5, 5, seed=5)]
    before = trained.score(seqs)
    trained.save_pretrained(tmp_path / "dl")
    assert detector_kind(tmp_path / "dl") == "deeplog"
    loaded = load_detector(tmp_path / "dl")
    assert isinstance(loaded, DeepLogDetector)
    assert np.array_equal(loaded.score(seqs), before)
    assert loaded.version == trained.version and loaded.version.startswith("deeplog-")
    assert loaded.threshold == trained.threshold
    assert np.array_equal(loaded.embed(seqs), trained.embed(seqs))


def test_train_deeplog_calibrates_on_validation(tmp_path: Path) -> None:
    write_records(tmp_path / "train.json", records(50, 5, seed=6))
    write_records(tmp_path / "val.json", records(20, 12, seed=7))
    out = train_deeplog(
        tmp_path / "train.json",
        tmp_path / "val.json",
        tmp_path / "art",
        progress=False,
        top_g_candidates=[1, 2],
        **TINY,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train_sequences"] == 50 and metrics["n_dropped_anomalous"] == 5
    assert metrics["threshold_source"] == "validation" and metrics["top_g"] in (1, 2)
    assert metrics["val"]["roc_auc"] > 0.9
    assert "train" in metrics["seconds"]
    loaded = DeepLogDetector.from_pretrained(out)
    assert loaded.threshold == pytest.approx(metrics["threshold"])


def test_empty_or_anomalous_only_data_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(DataError):
        train_deeplog(tmp_path / "empty.json", None, tmp_path / "a", progress=False, **TINY)
    write_records(tmp_path / "bad.json", records(0, 3, seed=8))
    with pytest.raises(DataError, match="normal"):
        train_deeplog(tmp_path / "bad.json", None, tmp_path / "b", progress=False, **TINY)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(DataError):
        DeepLogDetector().fit([])


def test_untrained_or_missing_artifact_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelError):
        DeepLogDetector().score([["a line"]])
    with pytest.raises(ModelError):
        DeepLogDetector.from_pretrained(tmp_path)
    with pytest.raises(ValueError):
        DeepLogConfig(window=0)
