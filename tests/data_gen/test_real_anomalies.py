"""Real-log records for the explainer: category other, texts that quote only the sequence's lines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from data_gen.real_anomalies import (
    EVAL_FILE,
    OTHER,
    TRAIN_FILE,
    component_of,
    failure_line,
    grounded_texts,
    main,
    severity_of,
)
from large_model.grounding import ungrounded

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_texts_quote_the_failure_line_or_the_last_line() -> None:
    lines = [
        "INFO dfs.DataNode: Receiving block blk_1",
        "WARN dfs.DataNode$DataXceiver: writeBlock blk_1 received exception",
    ]
    texts = grounded_texts(lines)
    assert (
        texts["summary"].startswith('A line reports a failure: "WARN dfs')
        and "dfs.DataNode$DataXceiver" in texts["root_cause"]
    )
    assert ungrounded([texts["summary"], texts["root_cause"]], "\n".join(lines)) == []
    quiet = ["081109 203600 9888 INFO dfs.DataNode$DataXceiver: Receiving block blk_15 src: /10.251.71.68:44457"]
    texts = grounded_texts(quiet)
    assert texts["summary"].startswith("No line reports a failure; the sequence ends after one line with")
    assert "blk_15" in texts["root_cause"]
    assert ungrounded([texts["summary"], texts["root_cause"]], quiet[0]) == []
    assert failure_line(quiet) is None and severity_of(quiet) == "low"
    assert severity_of(["RAS KERNEL FATAL data TLB error interrupt"]) == "high"
    assert severity_of(lines) == "medium"
    assert component_of("WARNING nova.virt.libvirt.imagecache Unknown base file") == "nova.virt.libvirt.imagecache"
    assert component_of("dn228 sshd[24200]: connection lost") == "sshd"
    assert component_of("LabSZ reverse mapping for ns.example.com failed") is None  # a host is no component


def test_builds_training_and_held_out_system_records(loghub_dir: Path, tmp_path: Path) -> None:
    sessions = tmp_path / "hdfs_sessions"
    sessions.mkdir()
    shutil.copy(FIXTURES / "hdfs_test.jsonl.gz", sessions / "val.jsonl.gz")
    shutil.copy(FIXTURES / "hdfs_test.jsonl.gz", sessions / "test.jsonl.gz")
    out = tmp_path / "data"
    argv = [
        "--loghub",
        str(loghub_dir),
        "--hdfs-sessions",
        str(sessions),
        "--output-dir",
        str(out),
        "--per-system",
        "4",
    ]
    assert main(argv) == 0
    train = [json.loads(x) for x in (out / TRAIN_FILE).read_text(encoding="utf-8").splitlines()]
    held = [json.loads(x) for x in (out / EVAL_FILE).read_text(encoding="utf-8").splitlines()]
    assert {r["source"] for r in train} == {"HDFS", "BGL"}
    assert {r["source"] for r in held} == {"HDFS", "BGL", "OpenStack", "OpenSSH", "Thunderbird"}
    assert all(sum(r["source"] == s for r in held) == 4 for s in ("BGL", "OpenStack", "OpenSSH", "Thunderbird"))
    assert not {r["sequence_id"] for r in train if r["source"] == "BGL"} & {r["sequence_id"] for r in held}
    hdfs = [r for r in train if r["source"] == "HDFS"]
    assert len(hdfs[0]["log_entries"]) <= 5 < len(hdfs[1]["log_entries"])  # stopped early, then a long one
    for r in train + held:
        assert r["category"] == OTHER and r["severity"] in {"low", "medium", "high"} and r["lang"] == "en"
        shown = "\n".join([f"Log ({len(r['log_entries'])} lines):", *r["log_entries"]])  # what the prompt holds
        assert ungrounded([r["summary"], r["root_cause"]], shown) == [], r["sequence_id"]
    assert all(r["alert"] for r in train + held if r["source"] == "BGL")


def test_a_missing_loghub_folder_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--loghub", str(tmp_path / "nope"), "--output-dir", str(tmp_path)]) == 2
    assert "no loghub folder" in capsys.readouterr().err
