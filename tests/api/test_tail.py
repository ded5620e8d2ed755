"""``logtriage tail``: a real process following a file that grows and is rotated, and reading stdin."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.api.test_service import pick

REPO = Path(__file__).resolve().parents[2]


def _collect(stream: Any, into: list[dict[str, Any]]) -> None:
    for line in stream:
        if line.startswith("{"):
            into.append(json.loads(line))


def _collect_text(stream: Any, into: list[str]) -> None:
    into.extend(stream)


def _wait(
    items: list[Any], n: int, proc: subprocess.Popen[str], stderr: list[str] | None = None, seconds: float = 120.0
) -> None:
    deadline = time.monotonic() + seconds
    while len(items) < n:
        if stderr is None:
            assert proc.poll() is None, f"tail exited early: {proc.stderr.read() if proc.stderr else ''}"
        else:
            assert proc.poll() is None, f"tail exited early: {''.join(stderr)}"
        assert time.monotonic() < deadline, f"{len(items)} of {n} sessions reported"
        time.sleep(0.1)


def test_tail_follows_a_growing_rotated_file_and_reports_the_anomalous_session(
    tiny_detector_path: Path, test_sequences: list, tmp_path: Path
) -> None:
    normal, anomaly = pick(test_sequences, 0, 1)[0], pick(test_sequences, 1, 2)
    log = tmp_path / "app.log"
    log.write_text("old line written before tail started: not read\n", encoding="utf-8")
    env = {**os.environ, "LOGTRIAGE_DETECTOR_PATH": str(tiny_detector_path), "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "logtriage", "tail", str(log), "--session-key", "service_window",
         "--window-seconds", "86400", "--idle", "1.5", "--poll", "0.1", "--json"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    reported: list[dict[str, Any]] = []
    stderr: list[str] = []
    threading.Thread(target=_collect, args=(proc.stdout, reported), daemon=True).start()
    err_reader = threading.Thread(target=_collect_text, args=(proc.stderr, stderr), daemon=True)
    err_reader.start()
    try:
        # tail says when it follows (from the end of the file: the old line is not read); what is appended
        # from then on is read, also while the detector still loads
        _wait(stderr, 1, proc, stderr)
        assert stderr[0].startswith(f"following {log} from its end"), stderr
        with log.open("a", encoding="utf-8") as f:  # a normal session, appended line by line
            for line in normal["log_entries"]:
                f.write(line + "\n")
                f.flush()
        _wait(reported, 1, proc, stderr)
        with log.open("a", encoding="utf-8") as f:  # an anomalous one
            f.write("\n".join(anomaly[0]["log_entries"]) + "\n")
        _wait(reported, 2, proc, stderr)
        log.rename(tmp_path / "app.log.1")  # rotated: the next session is in a new file
        log.write_text("\n".join(anomaly[1]["log_entries"]) + "\n", encoding="utf-8")
        _wait(reported, 3, proc, stderr)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [r["log_entries"] for r in reported] == [
        normal["log_entries"], anomaly[0]["log_entries"], anomaly[1]["log_entries"]
    ]  # fmt: skip
    assert all(r["close_reason"] == "idle" and r["sequence_id"].startswith("svc:app.log@") for r in reported)
    assert reported[1]["is_anomaly"] or reported[2]["is_anomaly"], "an obvious anomaly is flagged"
    flagged = next(r for r in reported[1:] if r["is_anomaly"])
    assert flagged["top_lines"] and flagged["score"] >= 0.0
    err_reader.join(10)  # the process has exited: its stderr is at its end
    assert any("3 sessions" in line for line in stderr), stderr


def test_tail_reads_stdin_until_it_ends_and_stores(
    tiny_detector_path: Path, test_sequences: list, tmp_path: Path
) -> None:
    seqs = pick(test_sequences, 1, 1) + pick(test_sequences, 0, 1)
    lines = [f"{line} req={i}" for i, s in enumerate(seqs) for line in s["log_entries"]]
    db = tmp_path / "tail.db"
    env = {**os.environ, "LOGTRIAGE_DETECTOR_PATH": str(tiny_detector_path), "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(
        [sys.executable, "-m", "logtriage", "tail", "-", "--session-key", "regex", "--key-regex", r"req=(\d+)$",
         "--json", "--store", "--database-url", f"sqlite+aiosqlite:///{db}"],
        cwd=REPO, env=env, input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(o["sequence_id"], o["close_reason"]) for o in out] == [("re:0", "flush"), ("re:1", "flush")]
    assert all(o["id"] for o in out) and "2 sessions" in done.stderr
    bad = subprocess.run([sys.executable, "-m", "logtriage", "tail", str(tmp_path / "missing.log")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "missing.log: no such file" in bad.stderr
