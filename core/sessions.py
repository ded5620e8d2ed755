"""Live sessions: group a stream of records into sequences by a key, close them by idle time, length or an end line.

The rules (:class:`SessionRules`) and the keys (:class:`SessionKeys`) are shared by every source: the
service keeps its open sessions in the database (``api/live.py``), ``logtriage tail`` and ``/detect``
keep them in memory (:class:`Sessionizer`). A key is one of

- ``trace_id``: the record's trace id, else one written in the line (``trace_id=<hex>``) (``trace:<hex>``);
- ``regex``: the first group (else the whole match) of a regex on the line (``re:<value>``), e.g.
  ``blk_-?\\d+`` for HDFS blocks;
- ``service_window``: the service and the window of ``window_seconds`` the record's time falls in
  (``svc:<service>@<window start>``).

A record without the configured key (no trace id, no regex match) falls into its service's window,
so nothing is dropped. Regexes come from users: they run as :class:`core.user_regex.UserRegex` (a timeout
per match; a match that takes longer counts as no match and is counted in ``timeouts``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import regex

from core.errors import DataError
from core.user_regex import DEFAULT_TIMEOUT_SECONDS, UserRegex

KeyKind = Literal["trace_id", "regex", "service_window"]
# a W3C trace id written in a text line (trace_id=..., traceId: "...") when the record carries none
TRACE_IN_LINE = regex.compile(
    r"""trace[_-]?id["']?\s*[=:]\s*["']?([0-9a-fA-F]{32}|[0-9a-fA-F]{16})\b""", regex.IGNORECASE
)
CloseReason = Literal["idle", "length", "end", "evicted", "flush"]


@dataclass(frozen=True)
class LogRecord:
    """One log line with what a key may be taken from."""

    line: str
    trace_id: str | None = None  # lowercase hex
    service: str | None = None
    time: float | None = None  # unix seconds (the record's own time, for service windows)
    number: int = 0  # the record's position in its stream (1-based; 0: not tracked)


@dataclass(frozen=True)
class SessionRules:
    """How records are grouped and when a session closes."""

    key: KeyKind = "trace_id"
    key_regex: str | None = None
    window_seconds: float = 60.0
    idle_seconds: float = 30.0
    max_lines: int = 1000
    end_pattern: str | None = None
    max_open: int = 10_000
    regex_timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS

    @classmethod
    def from_settings(cls, settings: object) -> SessionRules:
        """The rules of a :class:`core.settings.Settings`."""
        return cls(
            key=settings.session_key,  # type: ignore[attr-defined]
            key_regex=settings.session_key_regex,  # type: ignore[attr-defined]
            window_seconds=settings.session_window_seconds,  # type: ignore[attr-defined]
            idle_seconds=settings.session_idle_seconds,  # type: ignore[attr-defined]
            max_lines=settings.session_max_lines,  # type: ignore[attr-defined]
            end_pattern=settings.session_end_pattern,  # type: ignore[attr-defined]
            max_open=settings.session_max_open,  # type: ignore[attr-defined]
            regex_timeout_seconds=settings.session_regex_timeout_ms / 1000.0,  # type: ignore[attr-defined]
        )


class SessionKeys:
    """The key of a record and whether a line ends its session, under one set of rules."""

    def __init__(self, rules: SessionRules) -> None:
        if rules.max_lines < 1 or rules.max_open < 1 or rules.window_seconds <= 0 or rules.idle_seconds <= 0:
            raise DataError(
                "session limits must be positive: max_lines, max_open, window_seconds and idle_seconds "
                f"(got {rules.max_lines}, {rules.max_open}, {rules.window_seconds}, {rules.idle_seconds})"
            )
        self.rules = rules
        timeout = rules.regex_timeout_seconds
        self.key_pattern: UserRegex | None = None
        if rules.key == "regex":
            if not rules.key_regex:
                raise DataError("session key 'regex' needs a regex (LOGTRIAGE_SESSION_KEY_REGEX, --key-regex)")
            self.key_pattern = UserRegex(rules.key_regex, "session key", timeout)
        elif rules.key not in ("trace_id", "service_window"):
            raise DataError(f"unknown session key {rules.key!r} (use trace_id, regex or service_window)")
        self.end = UserRegex(rules.end_pattern, "session end", timeout) if rules.end_pattern else None

    @property
    def timeouts(self) -> int:
        """Regex matches abandoned for taking too long."""
        return sum(p.timeouts for p in (self.key_pattern, self.end) if p is not None)

    def window_key(self, record: LogRecord, now: float | None = None) -> str:
        """``svc:<service>@<window start, UTC>``: the service's window the record's time falls in."""
        t = record.time if record.time is not None else (now if now is not None else time.time())
        start = int(t // self.rules.window_seconds * self.rules.window_seconds)
        stamp = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"svc:{record.service or 'unknown_service'}@{stamp}"

    def key_of(self, record: LogRecord, now: float | None = None) -> str:
        """The session key of a record (its service window when the configured key is missing)."""
        if self.rules.key == "trace_id":
            if record.trace_id:
                return f"trace:{record.trace_id}"
            m = TRACE_IN_LINE.search(record.line)
            if m is not None:
                return f"trace:{m.group(1).lower()}"
        if self.key_pattern is not None:
            m = self.key_pattern.search(record.line)
            if m is not None:
                value = m.group(1) if self.key_pattern.groups and m.group(1) is not None else m.group(0)
                if value:
                    return f"re:{value}"
        return self.window_key(record, now)

    def ends(self, line: str) -> bool:
        """Whether the line closes its session (the end pattern matches)."""
        return self.end is not None and self.end.search(line) is not None


@dataclass
class OpenSession:
    """A session being assembled in memory."""

    key: str
    service: str | None
    started: float
    last_seen: float
    lines: list[str] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)


@dataclass
class ClosedSession:
    """A finished session, ready to be scored."""

    key: str
    lines: list[str]
    reason: CloseReason
    service: str | None = None
    started: float = 0.0
    numbers: list[int] = field(default_factory=list)


class Sessionizer:
    """Open sessions in memory, at most ``rules.max_open`` (the least recently active closed first)."""

    def __init__(self, rules: SessionRules) -> None:
        self.keys = SessionKeys(rules)
        self.rules = rules
        self.open: OrderedDict[str, OpenSession] = OrderedDict()  # least recently active first
        self.closed_by_reason: dict[str, int] = {}

    def _close(self, session: OpenSession, reason: CloseReason) -> ClosedSession:
        self.closed_by_reason[reason] = self.closed_by_reason.get(reason, 0) + 1
        return ClosedSession(session.key, session.lines, reason, session.service, session.started, session.numbers)

    def add(self, record: LogRecord, now: float | None = None) -> list[ClosedSession]:
        """Add one record; the sessions it closed (its own, on the end pattern or length; the oldest, over the cap)."""
        now = time.time() if now is None else now
        key = self.keys.key_of(record, now)
        closed: list[ClosedSession] = []
        session = self.open.get(key)
        if session is None:
            if len(self.open) >= self.rules.max_open:
                _, oldest = self.open.popitem(last=False)
                closed.append(self._close(oldest, "evicted"))
            session = self.open[key] = OpenSession(key, record.service, now, now)
        else:
            self.open.move_to_end(key)
        session.lines.append(record.line)
        session.numbers.append(record.number)
        session.last_seen = now
        if self.keys.ends(record.line):
            closed.append(self._close(self.open.pop(key), "end"))
        elif len(session.lines) >= self.rules.max_lines:
            closed.append(self._close(self.open.pop(key), "length"))
        return closed

    def expire(self, now: float | None = None) -> list[ClosedSession]:
        """Close the sessions idle for ``rules.idle_seconds`` or more."""
        now = time.time() if now is None else now
        closed = []
        while self.open:
            key, session = next(iter(self.open.items()))
            if now - session.last_seen < self.rules.idle_seconds:
                break
            del self.open[key]
            closed.append(self._close(session, "idle"))
        return closed

    def flush(self) -> list[ClosedSession]:
        """Close every open session (the input ended)."""
        closed = [self._close(s, "flush") for s in self.open.values()]
        self.open.clear()
        return closed


def group_lines(lines: list[str], rules: SessionRules, now: float | None = None) -> list[ClosedSession]:
    """A finished list of lines cut into sessions by ``rules`` (end pattern, length, cap; the rest at the end)."""
    now = time.time() if now is None else now
    sessions = Sessionizer(rules)
    closed: list[ClosedSession] = []
    for number, line in enumerate(lines, start=1):
        closed += sessions.add(LogRecord(line=line, number=number), now)
    return closed + sessions.flush()
