"""The request limits and the per-request work budget, checked before any scoring work is done.

A request over a limit raises :class:`core.errors.LimitError` naming the limit and the value (the API
answers 413 with it); one with nothing to score raises :class:`core.errors.DataError` (422).
"""

from __future__ import annotations

from core.errors import DataError, LimitError
from core.settings import Settings


def line_bytes(line: str) -> int:
    """A line's size in UTF-8 (lone surrogates counted as three bytes, as the limits count them)."""
    return len(line.encode("utf-8", errors="surrogatepass"))


def check_limits(settings: Settings, sequences: list[list[str]]) -> None:
    """Refuse requests over the configured limits, naming the limit and the value."""
    if len(sequences) > settings.max_sequences_per_request:
        raise LimitError(
            f"{len(sequences)} sequences exceed the limit of {settings.max_sequences_per_request} per request "
            "(max_sequences_per_request)"
        )
    for i, lines in enumerate(sequences):
        if len(lines) > settings.max_lines_per_sequence:
            raise LimitError(
                f"sequence {i} has {len(lines)} lines, over the limit of {settings.max_lines_per_sequence} "
                "(max_lines_per_sequence)"
            )
        for j, line in enumerate(lines):
            size = line_bytes(line)
            if size > settings.max_line_bytes_request:
                raise LimitError(
                    f"sequence {i} line {j} has {size} bytes, over the limit of {settings.max_line_bytes_request} "
                    "(max_line_bytes_request)"
                )
        if not any(line.strip() for line in lines):
            raise DataError(f"sequence {i} has only empty lines")
    check_work(
        settings, sum(len(lines) for lines in sequences), sum(map(line_bytes, (x for s in sequences for x in s)))
    )


def check_work(settings: Settings, lines: int, size: int) -> None:
    """Refuse a request whose scoring work (lines and bytes, windows counted with their overlaps) exceeds the
    per-request budget, before any of that work is done."""
    if lines > settings.max_lines_per_request:
        raise LimitError(
            f"the request would score {lines} lines (windows counted with their overlaps), over the limit of "
            f"{settings.max_lines_per_request} per request (max_lines_per_request)"
        )
    if size > settings.max_bytes_per_request:
        raise LimitError(
            f"the request would score {size} bytes of lines (windows counted with their overlaps), over the limit "
            f"of {settings.max_bytes_per_request} per request (max_bytes_per_request)"
        )
