"""User regexes (session keys, end patterns): one way to compile them and to match them, with a time limit.

Patterns come from users (settings, CLI flags, API requests), so one that backtracks catastrophically
(``^(a|aa)+$`` on a long line) must not hold its caller, least of all the service's event loop: they run
on the ``regex`` package with a timeout per match; a match that takes longer gives up, counts as no
match and is counted (:attr:`UserRegex.timeouts`). An invalid pattern is a :class:`DataError` naming it.
"""

from __future__ import annotations

import regex

from core.errors import DataError

DEFAULT_TIMEOUT_SECONDS = 0.05  # LOGTRIAGE_SESSION_REGEX_TIMEOUT_MS


def pattern_problem(pattern: str) -> str | None:
    """What the regex engine finds wrong with ``pattern``; None when it compiles."""
    try:
        regex.compile(pattern)
    except regex.error as exc:
        return str(exc)
    return None


class UserRegex:
    """A user's regex (``what`` names it in errors), matched with ``timeout_seconds`` at most per match."""

    def __init__(self, pattern: str, what: str, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        try:
            self.compiled = regex.compile(pattern)
        except regex.error as exc:
            raise DataError(f"invalid {what} regex {pattern!r}: {exc}") from None
        self.pattern = pattern
        self.timeout_seconds = timeout_seconds
        self.timeouts = 0  # matches abandoned for taking too long

    @property
    def groups(self) -> int:
        """The number of capturing groups."""
        return int(self.compiled.groups)

    def search(self, text: str) -> regex.Match[str] | None:
        """The first match in ``text``; None when there is none or it takes longer than the timeout."""
        try:
            return self.compiled.search(text, timeout=self.timeout_seconds)
        except TimeoutError:
            self.timeouts += 1
            return None

    def finditer(self, text: str) -> list[regex.Match[str]]:
        """Every non-overlapping match in ``text``; none when finding them takes longer than the timeout."""
        try:
            return list(self.compiled.finditer(text, timeout=self.timeout_seconds))
        except TimeoutError:
            self.timeouts += 1
            return []
