"""The ``logtriage`` CLI as a user runs it: a real subprocess, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from core.io import read_records


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "logtriage", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_prepare_bgl_keeps_alert_labels(tmp_path: Path, loghub_dir: Path) -> None:
    out = tmp_path / "bgl.jsonl"
    result = run_cli("prepare", str(loghub_dir / "BGL" / "BGL_2k.log"), "--input-format", "BGL", "-o", str(out))
    assert result.returncode == 0, result.stderr
    records = read_records(out)
    assert len(records) == 200 and {r.label for r in records} == {0, 1}


def test_prepare_text_sliding_and_events(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("\n".join(f"2024-01-01 10:00:{i:02d} INFO step {i}" for i in range(25)) + "\n")
    out = tmp_path / "w.json"
    result = run_cli(
        "prepare", str(log), "--window-type", "sliding", "--window-size", "10", "--step", "5", "-o", str(out)
    )
    assert result.returncode == 0, result.stderr
    windows = read_records(out)
    assert [len(w.log_entries) for w in windows] == [10, 10, 10, 10]
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps({"ts": i, "message": f"event {i}", "req": f"r{i % 2}"}) for i in range(6)))
    out2 = tmp_path / "s.csv"
    result = run_cli(
        "prepare", str(events), "--window-type", "session", "--session-key", r"event (\d)", "-o", str(out2)
    )
    assert result.returncode == 0, result.stderr
    assert len(read_records(out2)) == 6


def test_bad_input_is_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.log"
    bad.write_bytes(b"fine\n\xff\xfe broken\n")
    out = tmp_path / "out.json"
    out.write_text("[]\n")
    for args in (
        ("prepare", str(bad), "-o", str(out)),
        ("prepare", str(tmp_path / "missing.log"), "-o", str(out)),
        ("prepare", str(bad), "--window-type", "session", "-o", str(out)),
    ):
        result = run_cli(*args)
        assert result.returncode == 2
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        assert "Traceback" not in result.stderr
    assert out.read_text() == "[]\n"  # nothing already written was lost


def test_empty_input_fails_cleanly(tmp_path: Path) -> None:
    empty = tmp_path / "empty.log"
    empty.write_text("")
    result = run_cli("prepare", str(empty), "-o", str(tmp_path / "o.json"))
    assert result.returncode == 2 and "no log lines" in result.stderr
    assert not (tmp_path / "o.json").exists()


def test_command_options_override_settings_without_touching_the_cached_ones(monkeypatch: Any) -> None:
    from core.settings import get_settings, settings_with

    monkeypatch.setenv("LOGTRIAGE_WORKERS", "3")
    get_settings.cache_clear()
    try:
        cached = get_settings()
        mine = settings_with(database_url="sqlite+aiosqlite:///x.db", workers=None)
        assert mine.database_url == "sqlite+aiosqlite:///x.db" and mine.workers == 3  # None: the environment's
        assert get_settings() is cached and cached.database_url != mine.database_url
    finally:
        get_settings.cache_clear()


def test_run_cli_turns_every_failure_into_one_line(capsys: Any, monkeypatch: Any) -> None:
    from core.cli_args import run_cli
    from core.errors import DataError

    def fail(exc: BaseException) -> Any:
        def body() -> int:
            raise exc

        return body

    monkeypatch.delenv("LOGTRIAGE_DEBUG", raising=False)
    assert run_cli(fail(DataError("bad line", "f.log", 3))) == 2
    assert run_cli(fail(FileNotFoundError(2, "No such file or directory", "x.log"))) == 2
    assert run_cli(fail(RuntimeError("boom"))) == 1
    assert run_cli(fail(KeyboardInterrupt())) == 130
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: ") and "f.log" in err[0]
    assert err[1] == "error: x.log: No such file or directory"
    assert err[2].startswith("error: unexpected RuntimeError: boom") and err[3] == "interrupted"
