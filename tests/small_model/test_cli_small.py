"""``logtriage train-small`` / ``evaluate-small`` as a user runs them (DeepLog: seconds to train)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "logtriage", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from data_gen import data_splitter, log_sequence_generator

    folder = tmp_path_factory.mktemp("cli-small")
    log_sequence_generator.main(
        ["--num-sequences", "300", "--difficulty", "easy", "--seed", "5", "--output", str(folder / "s.json"), "--quiet"]
    )
    data_splitter.main(["--input", str(folder / "s.json"), "--output-dir", str(folder), "--quiet"])
    return folder


def test_train_and_evaluate_deeplog_through_the_cli(splits: Path, tmp_path: Path) -> None:
    out = tmp_path / "deeplog"
    r = run(
        "train-small",
        "--model",
        "deeplog",
        "--train",
        str(splits / "train.json"),
        "--val",
        str(splits / "val.json"),
        "--test",
        str(splits / "test.json"),
        "--out",
        str(out),
        "--epochs",
        "8",
        "--no-progress",
        "--threads",
        "1",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out) and "test: F1" in r.stderr
    assert json.loads((out / "config.json").read_text())["detector"] == "deeplog"
    report_dir = tmp_path / "eval"
    r = run("evaluate-small", str(out), "--data", str(splits / "test.json"), "--out", str(report_dir), "--top", "5")
    assert r.returncode == 0, r.stderr
    report = json.loads((report_dir / "report.json").read_text())
    m = report["metrics"]
    assert m["n"] == 30 and 0.5 <= m["roc_auc"] <= 1.0
    assert sum(map(sum, m["confusion_matrix"])) == 30
    for png in ("score_hist.png", "roc_curve.png", "pr_curve.png", "tsne_label.png", "tsne_type.png"):
        assert (report_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    top = (report_dir / "top_anomalies.txt").read_text()
    ids = {s["sequence_id"] for s in json.loads((splits / "test.json").read_text())}
    assert any(i in top for i in ids)
    assert "| deeplog (deeplog) |" in r.stdout


def test_train_small_refuses_bad_data_before_training(tmp_path: Path) -> None:
    only_anomalies = tmp_path / "bad.json"
    only_anomalies.write_text(json.dumps([{"sequence_id": "a", "label": 1, "log_entries": ["x", "y"]}]))
    for model in ("deeplog", "moe-bert"):
        r = run(
            "train-small",
            "--model",
            model,
            "--train",
            str(only_anomalies),
            "--unsupervised",
            "--out",
            str(tmp_path / model),
        )
        assert r.returncode == 2 and r.stderr.startswith("error: "), r.stderr
        assert not (tmp_path / model).exists()
    r = run("train-small", "--train", str(tmp_path / "missing.json"))
    assert r.returncode == 2 and "no such file" in r.stderr
