"""Assertions shared by the data_gen tests."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def assert_one_line_error(rc: int, err: str) -> None:
    """A user error: exit code 2 and one ``error: ...`` line on stderr, no traceback."""
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
