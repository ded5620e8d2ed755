"""Evaluation: metrics on hand-made scores, the report folder, the comparison table, the BGL protocol."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from core.errors import DataError
from core.schema import SequenceRecord
from small_model.evaluate import compare_table, evaluate_bgl, evaluate_detector, write_report
from small_model.metrics import best_f1_threshold, evaluate_scores, roc_auc
from tests.fake_detector import FakeDetector

PNG = b"\x89PNG\r\n\x1a\n"


def test_perfect_separation() -> None:
    m = evaluate_scores([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], threshold=0.5)
    assert m["f1"] == 1.0 and m["accuracy"] == 1.0
    assert m["roc_auc"] == 1.0 and m["pr_auc"] == pytest.approx(1.0)
    assert m["best_f1"] == 1.0 and 0.2 < m["best_f1_threshold"] < 0.8
    assert m["confusion_matrix"] == [[2, 0], [0, 2]]


def test_known_confusion_matrix() -> None:
    labels = [0, 0, 0, 1, 1, 1]
    scores = [0.1, 0.6, 0.2, 0.7, 0.4, 0.9]
    m = evaluate_scores(labels, scores, threshold=0.5)
    assert m["confusion_matrix"] == [[2, 1], [1, 2]]
    assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (2, 1, 1, 2)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(4 / 6)
    assert m["roc_auc"] == pytest.approx(8 / 9)  # one of the 9 (anomaly, normal) pairs is inverted


def test_threshold_is_inclusive_and_best_f1() -> None:
    m = evaluate_scores([0, 1], [0.5, 0.7], threshold=0.5)
    assert m["fp"] == 1
    thr, f1 = best_f1_threshold([0, 1, 1, 0, 1], [0.1, 0.9, 0.8, 0.7, 0.3])
    assert f1 == pytest.approx(6 / 7) and thr == pytest.approx(0.2)


def test_one_class_gives_json_safe_nones() -> None:
    m = evaluate_scores([0, 0, 0], [0.1, 0.9, 0.3], threshold=0.5)
    assert m["roc_auc"] is None and m["pr_auc"] is None and m["best_f1"] is None
    json.dumps(m, allow_nan=False)
    with pytest.raises(ValueError):
        evaluate_scores([0, 1], [0.2], 0.5)


def test_single_figures_refuse_what_one_class_leaves_undefined() -> None:
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="anomalous"):
        best_f1_threshold([0, 0], [0.1, 0.2])
    assert best_f1_threshold([1, 1], [0.3, 0.6])[1] == 1.0  # anomalies only: flag them all


def test_compare_table() -> None:
    rows = [
        {"model": "moe-bert", "data": "hard", "f1": 0.98, "roc_auc": 0.995},
        {"model": "deeplog", "data": "hard", "f1": 0.9, "roc_auc": None},
    ]
    table = compare_table(rows).splitlines()
    assert table[0] == "| model | data | f1 | roc_auc |"
    assert table[2] == "| moe-bert | hard | 0.980 | 0.995 |"
    assert table[3] == "| deeplog | hard | 0.900 | n/a |"


def _records(n: int, rng: np.random.Generator) -> tuple[list[SequenceRecord], np.ndarray, np.ndarray, np.ndarray]:
    labels = (np.arange(n) % 3 == 0).astype(int)
    types = [None if y == 0 else ("timeout" if i % 2 else "db_error") for i, y in enumerate(labels)]
    recs = [
        SequenceRecord(
            sequence_id=f"seq-{i:03d}", label=int(y), log_entries=[f"line {i} a", f"line {i} b"], anomaly_type=t
        )
        for i, (y, t) in enumerate(zip(labels, types, strict=True))
    ]
    scores = np.clip(0.3 + 0.5 * labels + rng.normal(0, 0.1, n), 0, 1)
    emb = rng.normal(0, 1, (n, 8)) + 4 * labels[:, None]
    return recs, labels, scores, emb


def test_write_report(tmp_path: Path) -> None:
    recs, labels, scores, emb = _records(40, np.random.default_rng(0))
    report = write_report(tmp_path / "r", labels, scores, 0.55, recs, embeddings=emb, top_n=5, title="toy")
    out = tmp_path / "r"
    saved = json.loads((out / "report.json").read_text())
    assert saved["metrics"]["n"] == 40 and saved["metrics"]["roc_auc"] == pytest.approx(report["metrics"]["roc_auc"])
    for name in ("score_hist.png", "roc_curve.png", "pr_curve.png", "tsne_label.png", "tsne_type.png"):
        assert (out / name).read_bytes()[:8] == PNG, name
    top = (out / "top_anomalies.txt").read_text()
    best = recs[int(np.argmax(scores))].sequence_id
    assert best in top and top.count("score=") == 5
    assert report["top"][0]["sequence_id"] == best
    assert set(saved["per_type"]) == {"normal", "timeout", "db_error"}


def test_write_report_without_embeddings_and_mismatch(tmp_path: Path) -> None:
    recs, labels, scores, _ = _records(10, np.random.default_rng(1))
    report = write_report(tmp_path, labels, scores, 0.5, recs)
    assert "tsne_label.png" not in report["files"] and (tmp_path / "score_hist.png").exists()
    with pytest.raises(ValueError):
        write_report(tmp_path, labels[:5], scores, 0.5, recs)


class FailureWords(FakeDetector):
    """Scores a sequence by how many of its lines mention a failure word."""

    def rule(self, sequences: Sequence[Sequence[str]]) -> list[float]:
        words = ("error", "fatal", "fail", "severe", "exception")
        return [float(np.mean([any(w in x.lower() for w in words) for x in s])) for s in sequences]


def test_evaluate_detector_and_unlabeled(tmp_path: Path) -> None:
    recs = [
        SequenceRecord(sequence_id="a", label=0, log_entries=["all good"]),
        SequenceRecord(sequence_id="b", label=1, log_entries=["fatal error"]),
    ]
    result = evaluate_detector(FailureWords(), recs)
    assert result["metrics"]["f1"] == 1.0 and result["sequences_per_second"] > 0
    with pytest.raises(DataError):
        evaluate_detector(FailureWords(), [SequenceRecord(sequence_id="u", log_entries=["x"])])


def test_bgl_protocol_with_any_detector(loghub_dir: Path, tmp_path: Path) -> None:
    seen: list[SequenceRecord] = []

    def trainer(records: list[SequenceRecord], folder: Path) -> FailureWords:
        seen.extend(records)
        return FailureWords()

    result = evaluate_bgl(trainer, loghub_dir / "BGL" / "BGL_2k.log", tmp_path, name="fake", report=False)
    assert seen and all(r.label == 0 for r in seen)  # normal windows only
    assert result["n_train_windows"] == len(seen)
    assert result["n_test_windows"] == 80 and result["metrics"]["n"] == 80  # 2000 lines, 10-line windows, last 40%
    assert result["metrics"]["roc_auc"] is not None
