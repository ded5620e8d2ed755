from __future__ import annotations

import itertools
import time

import pytest

from core.errors import DataError, LimitError
from core.windowing import Window, fixed_windows, make_windows, session_windows, sliding_windows, window_work

LINES = [f"line {i}" for i in range(1, 24)]


def covered(windows) -> list[int]:
    return sorted({n for w in windows for n in w.line_numbers})


@pytest.mark.parametrize("size", [1, 4, 5, 23, 50])
def test_fixed_windows_partition_every_line(size: int) -> None:
    windows = list(fixed_windows(iter(LINES), size))
    flat = [n for w in windows for n in w.line_numbers]
    assert flat == list(range(1, 24))  # each line exactly once, in order
    assert all(len(w.lines) == size for w in windows[:-1])
    assert windows[0].lines[0] == "line 1"


@pytest.mark.parametrize("size,step", [(5, 1), (5, 2), (5, 5), (4, 3), (30, 2), (1, 1)])
def test_sliding_windows_cover_every_line(size: int, step: int) -> None:
    windows = list(sliding_windows(iter(LINES), size, step))
    assert covered(windows) == list(range(1, 24))
    assert all(len(w.lines) == min(size, len(LINES)) for w in windows)
    starts = [w.start_line for w in windows]
    # starts advance by step, except possibly the final window that ends on the last line
    assert all(b - a == step for a, b in itertools.pairwise(starts[:-1]))
    assert windows[-1].line_numbers[-1] == 23


def test_sliding_rejects_gaps() -> None:
    with pytest.raises(DataError, match="skip lines"):
        list(sliding_windows(LINES, 3, 4))


def test_windows_stream_without_materialising() -> None:
    endless = (f"x{i}" for i in itertools.count())
    first = next(iter(fixed_windows(endless, 3)))
    assert first.lines == ["x0", "x1", "x2"]
    endless2 = (f"x{i}" for i in itertools.count())
    assert len(list(itertools.islice(sliding_windows(endless2, 10, 5), 3))) == 3


def test_session_windows_group_by_regex_and_function() -> None:
    lines = ["a req=1", "b req=2", "c req=1", "d none", "e req=2 req=1"]
    by_regex = {w.id: w.line_numbers for w in session_windows(lines, r"req=(\d+)")}
    assert by_regex == {"1": [1, 3, 5], "2": [2, 5]}
    by_func = {w.id: w.lines for w in session_windows(lines, lambda s: s.split()[0] if "none" in s else None)}
    assert by_func == {"d": ["d none"]}
    own = {w.id for w in session_windows(lines, r"req=(\d+)", unmatched="own")}
    assert own == {"1", "2", "<none>"}


def test_session_windows_bound_open_sessions() -> None:
    lines = [f"k{i % 5} v" for i in range(20)]
    windows = list(session_windows(lines, r"(k\d)", max_open=2))
    assert sum(len(w.lines) for w in windows) == 20


def test_make_windows_errors() -> None:
    with pytest.raises(DataError, match="need a key"):
        make_windows(LINES, "session")
    with pytest.raises(DataError, match="unknown window type"):
        make_windows(LINES, "tumbling")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="invalid session key"):
        list(make_windows(LINES, "session", key="("))


@pytest.mark.parametrize("window_type", ["fixed", "sliding"])
def test_window_work_counts_the_lines_windows_hold(window_type: str) -> None:
    for n in range(1, 40):
        for size in range(1, 12):
            for step in [None, *range(1, size + 1)] if window_type == "sliding" else [None]:
                built = list(make_windows([f"l{i}" for i in range(n)], window_type, size, step))  # type: ignore[arg-type]
                work = window_work(n, window_type, size, step)  # type: ignore[arg-type]
                assert work == sum(len(w.lines) for w in built), (n, size, step)
    assert window_work(10, "session", 3) is None


def test_session_key_regexes_cannot_backtrack_for_ever(caplog: pytest.LogCaptureFixture) -> None:
    # (a+)+$ backtracks exponentially in Python's re: 2**40 steps on this line
    line = "a" * 40 + "!"
    started = time.perf_counter()
    assert list(session_windows([line] * 50, r"(a+)+$")) == []
    assert time.perf_counter() - started < 30.0  # generous: Python's re would need days
    # one that the regex engine cannot shortcut gives up after the timeout: no key, and a warning says so
    started = time.perf_counter()
    lines = ["a" * 3000 + "b"] * 5 + ["aa ok"]
    assert list(session_windows(lines, r"^(?:a|aa)+$|ok", timeout_seconds=0.02)) == [Window("ok", ["aa ok"], [6])]
    assert time.perf_counter() - started < 10.0
    assert "gave up on 5 lines" in caplog.text
    # the syntax of every user regex (live sessions too): backreferences and lookaround work
    lines = ["req=11 a", "req=22 b", "req=12 c"]
    assert [w.id for w in make_windows(lines, "session", key=r"(\d)\1")] == ["1", "2"]
    assert [w.id for w in make_windows(lines, "session", key=r"(?<=req=)\d+")] == ["11", "22", "12"]


def test_sessions_stop_at_their_line_budget() -> None:
    lines = [" ".join(f"k{j}" for j in range(50))] * 10  # each line joins 50 sessions: 500 lines in all
    assert sum(len(w.lines) for w in session_windows(lines, r"k\d+", max_lines=500)) == 500
    with pytest.raises(LimitError, match="more than 499 lines"):
        list(make_windows(lines, "session", key=r"k\d+", max_lines=499))
