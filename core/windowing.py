"""Cut a stream of log lines into windows without holding the stream in memory.

Three strategies behind one function (:func:`make_windows`): fixed windows of ``size`` lines,
sliding windows of ``size`` lines every ``step`` lines, and sessions grouped by a key taken
from each line by a regex (first group, or the whole match) or from a field of a parsed record.

Session key regexes are user input, so they run as every user regex does
(:class:`core.user_regex.UserRegex`: a timeout per line, no catastrophic backtracking holds the caller;
a line whose matching gives up has no key and is counted in a warning).
:func:`window_work` gives the lines a windowing will produce before any window is built.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from core.errors import DataError, LimitError
from core.user_regex import DEFAULT_TIMEOUT_SECONDS, UserRegex

log = logging.getLogger(__name__)

WindowType = Literal["fixed", "sliding", "session"]


@dataclass
class Window:
    """A group of consecutive (or same-session) lines; ``line_numbers`` are 1-based stream positions."""

    id: str
    lines: list[str]
    line_numbers: list[int] = field(default_factory=list)

    @property
    def start_line(self) -> int:
        """The stream position of the first line."""
        return self.line_numbers[0] if self.line_numbers else 0


def fixed_windows(lines: Iterable[str], size: int) -> Iterator[Window]:
    """Consecutive non-overlapping windows of ``size`` lines; the last one may be shorter."""
    if size < 1:
        raise DataError(f"window size must be >= 1, got {size}")
    buf: list[str] = []
    nums: list[int] = []
    for number, line in enumerate(lines, start=1):
        buf.append(line)
        nums.append(number)
        if len(buf) == size:
            yield Window(f"w{nums[0]}-{nums[-1]}", buf, nums)
            buf, nums = [], []
    if buf:
        yield Window(f"w{nums[0]}-{nums[-1]}", buf, nums)


def sliding_windows(lines: Iterable[str], size: int, step: int) -> Iterator[Window]:
    """Windows of ``size`` lines starting every ``step`` lines; a last window ends on the last line.

    Every line lands in at least one window (when ``step <= size``).
    """
    if size < 1 or step < 1:
        raise DataError(f"window size and step must be >= 1, got size={size} step={step}")
    if step > size:
        raise DataError(f"step {step} larger than size {size} would skip lines")
    buf: deque[tuple[int, str]] = deque(maxlen=size)
    last_emitted_end = 0
    since_start = 0
    total = 0
    for number, line in enumerate(lines, start=1):
        total = number
        buf.append((number, line))
        if len(buf) == size:
            if since_start % step == 0:
                nums = [n for n, _ in buf]
                yield Window(f"w{nums[0]}-{nums[-1]}", [t for _, t in buf], nums)
                last_emitted_end = nums[-1]
            since_start += 1
    if total > last_emitted_end:
        # the lines after the last emitted window: one more window of the last ``size`` lines
        nums = [n for n, _ in buf]
        yield Window(f"w{nums[0]}-{nums[-1]}", [t for _, t in buf], nums)


def session_windows(
    lines: Iterable[str],
    key: str | Callable[[str], str | None],
    max_open: int = 100_000,
    unmatched: Literal["drop", "own"] = "drop",
    max_lines: int | None = None,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> Iterator[Window]:
    """Group lines by a session key: a regex (its first group, else the whole match; ``timeout_seconds`` per
    line) or a function.

    Sessions are emitted when the stream ends; to keep memory bounded the oldest open session is
    emitted when more than ``max_open`` are open. Lines without a key are dropped, or with
    ``unmatched="own"`` collected into a session named ``<none>``. A line carrying several keys
    (HDFS lines naming two blocks) joins each of their sessions. With ``max_lines``, a
    :class:`LimitError` is raised as soon as the sessions hold more lines than that in all.
    """
    pattern: UserRegex | None = None
    if isinstance(key, str):
        user = pattern = UserRegex(key, "session key", timeout_seconds)

        def keys_of(line: str) -> list[str]:
            found = []
            for m in user.finditer(line):
                value = m.group(1) if user.groups else m.group(0)
                if value is not None and value not in found:
                    found.append(value)
            return found
    else:
        func = key

        def keys_of(line: str) -> list[str]:
            value = func(line)
            return [value] if value is not None else []

    open_sessions: OrderedDict[str, Window] = OrderedDict()
    held = 0
    for number, line in enumerate(lines, start=1):
        keys = keys_of(line)
        if not keys:
            if unmatched == "drop":
                continue
            keys = ["<none>"]
        for k in keys:
            window = open_sessions.get(k)
            if window is None:
                if len(open_sessions) >= max_open:
                    _, oldest = open_sessions.popitem(last=False)
                    yield oldest
                window = open_sessions[k] = Window(k, [], [])
            window.lines.append(line)
            window.line_numbers.append(number)
            held += 1
            if max_lines is not None and held > max_lines:
                raise LimitError(f"the sessions hold more than {max_lines} lines in all")
    if pattern is not None and pattern.timeouts:
        log.warning(
            "the session key regex %r gave up on %d lines after %.0f ms each: they had no key",
            key, pattern.timeouts, 1000 * timeout_seconds,
        )  # fmt: skip
    yield from open_sessions.values()


def window_work(n_lines: int, window_type: WindowType, size: int, step: int | None = None) -> int | None:
    """How many lines fixed or sliding windows of ``n_lines`` lines hold in all (overlaps counted), without
    building them; None for sessions (their size depends on the keys: count while grouping)."""
    if window_type == "fixed" or n_lines <= size:
        return n_lines
    if window_type == "sliding":
        stride = step or max(1, size // 2)
        if size < 1 or stride < 1:
            return n_lines
        full = (n_lines - size) // stride + 1
        last = 1 if (full - 1) * stride + size < n_lines else 0
        return (full + last) * size
    return None


def make_windows(
    lines: Iterable[str],
    window_type: WindowType = "fixed",
    size: int = 10,
    step: int | None = None,
    key: str | Callable[[str], str | None] | None = None,
    max_lines: int | None = None,
) -> Iterator[Window]:
    """One entry point for the three strategies (the CLI and the API use this); ``max_lines`` bounds the
    lines sessions may hold (fixed and sliding windows are counted beforehand with :func:`window_work`)."""
    if window_type == "fixed":
        return fixed_windows(lines, size)
    if window_type == "sliding":
        return sliding_windows(lines, size, step or max(1, size // 2))
    if window_type == "session":
        if key is None:
            raise DataError("session windows need a key (a regex such as 'blk_-?\\d+')")
        return session_windows(lines, key, max_lines=max_lines)
    raise DataError(f"unknown window type {window_type!r} (use fixed, sliding or session)")
