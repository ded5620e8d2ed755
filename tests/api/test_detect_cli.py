"""``logtriage detect`` as a user runs it: files, stdin, --logs, JSON output, --explain into the database."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from db import crud
from db.session import Database


def run(
    args: list[str], env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "logtriage", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **(env or {})},
        timeout=600,
    )


def test_detect_file_json_and_human(tiny_detector_path: Path, synthetic: Path) -> None:
    r = run(["detect", str(synthetic / "test.json"), "--detector", str(tiny_detector_path), "--json"])
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    expected = json.loads((synthetic / "test.json").read_text())
    assert [x["sequence_id"] for x in rows] == [s["sequence_id"] for s in expected]
    for x in rows:
        assert 0 <= x["score"] <= 1 and x["risk_level"] in {"low", "medium", "high"}
        assert ("top_lines" in x) == x["is_anomaly"]
    from sklearn.metrics import roc_auc_score

    # the tiny detector ranks anomalies above normal sequences (its quality is tested in tests/small_model)
    assert roc_auc_score([s["label"] for s in expected], [x["score"] for x in rows]) > 0.7
    human = run(["detect", str(synthetic / "test.json"), "--detector", str(tiny_detector_path)])
    assert human.returncode == 0 and "score=" in human.stdout and "windows," in human.stderr


def test_detect_stdin_and_logs_with_windows(
    tiny_detector_path: Path, test_sequences: list[dict[str, Any]], tmp_path: Path
) -> None:
    lines = [line for s in test_sequences[:3] for line in s["log_entries"]]
    spool = tmp_path / "tmp"
    spool.mkdir()
    r = run(
        [
            "detect",
            "-",
            "--detector",
            str(tiny_detector_path),
            "--window-type",
            "sliding",
            "--window-size",
            "6",
            "--step",
            "3",
            "--json",
        ],
        stdin="\n".join(lines) + "\n",
        env={"TMPDIR": str(spool)},
    )
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == len(range(0, len(lines) - 6, 3)) + 1
    assert not any(spool.iterdir())  # the copy of stdin is gone
    r = run(["detect", "--logs", *lines[:12], "--window-size", "6", "--detector", str(tiny_detector_path), "--json"])
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2


def test_detect_errors_are_one_line(tiny_detector_path: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.log"
    empty.write_text("")
    for args in (
        ["detect", str(empty), "--detector", str(tiny_detector_path)],
        ["detect", str(tmp_path / "missing.json"), "--detector", str(tiny_detector_path)],
        ["detect", "--logs", "x", "--detector", str(tmp_path / "no-model")],
    ):
        r = run(args)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_detect_explain_stores_in_the_database(
    tiny_detector_path: Path, tiny_explainer_path: Path, test_sequences: list[dict[str, Any]], tmp_path: Path
) -> None:
    data = tmp_path / "few.json"
    few = [s for s in test_sequences if s["label"] == 1][:2] + [s for s in test_sequences if s["label"] == 0][:2]
    data.write_text(json.dumps(few))
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    r = run(
        [
            "detect",
            str(data),
            "--detector",
            str(tiny_detector_path),
            "--explainer",
            str(tiny_explainer_path),
            "--explain",
            "--json",
            "--database-url",
            url,
        ]
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 4
    assert all(("explanation" in x) == x["is_anomaly"] for x in rows)

    async def stored() -> tuple[int, list[Any]]:
        db = Database(url)
        try:
            async with db.session() as s:
                items, total = await crud.list_detections(s)
                return total, [i.explanation for i in items if i.is_anomaly]
        finally:
            await db.dispose()

    total, explanations = asyncio.run(stored())
    assert total == 4 and all(e is not None and e.category for e in explanations)
