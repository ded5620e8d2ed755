"""Turn raw logs (plain text, JSON lines of events, loghub files) into sequence records.

Every input may be gzip-compressed (``app.log.1.gz``); its kind is told by the suffix before ``.gz``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.errors import DataError
from core.io import RECORD_FORMATS, data_suffix, iter_records, iter_text_lines, plain_name
from core.loghub import LOG_FORMATS, hdfs_sessions, iter_loghub, labelled_windows
from core.schema import SequenceRecord
from core.windowing import WindowType, make_windows

MESSAGE_FIELDS = ("message", "msg", "log", "content", "Content", "text")


def iter_event_lines(path: str | Path, field: str | None = None) -> Iterator[str]:
    """The messages of a JSON-lines event log (one object per line, text under ``field``)."""
    for number, line in iter_text_lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON ({exc.msg})", path, number) from None
        if isinstance(obj, str):
            yield obj
            continue
        if not isinstance(obj, dict):
            raise DataError("expected a JSON object per line", path, number)
        keys = [field] if field else [k for k in MESSAGE_FIELDS if k in obj]
        if not keys or keys[0] not in obj:
            raise DataError(f"no message field ({field or ' / '.join(MESSAGE_FIELDS)}) in the event", path, number)
        yield str(obj[keys[0]])


def iter_raw_lines(path: str | Path, input_format: str = "auto", field: str | None = None) -> Iterator[str]:
    """Lines of a raw log: ``text``, ``events`` (JSONL objects) or a loghub system name."""
    fmt = input_format
    if fmt == "auto":
        fmt = "events" if data_suffix(path) in (".jsonl", ".ndjson") else "text"
    if fmt == "text":
        return iter_text_lines_only(path)
    if fmt == "events":
        return iter_event_lines(path, field)
    if fmt in LOG_FORMATS:
        return (line.message for line in iter_loghub(path, fmt))
    raise DataError(f"unknown input format {input_format!r} (auto, text, events, {', '.join(LOG_FORMATS)})")


def iter_text_lines_only(path: str | Path) -> Iterator[str]:
    """The non-empty lines of a text file."""
    return (line for _, line in iter_text_lines(path))


def is_record_file(path: str | Path) -> bool:
    """Whether a file holds sequence records (JSON/CSV, or JSONL whose first object has log_entries)."""
    suffix = data_suffix(path)
    if suffix not in RECORD_FORMATS:
        return False
    if suffix in (".json", ".csv"):
        return True
    for _, line in iter_text_lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            return False
        return isinstance(obj, dict) and "log_entries" in obj
    return False


def records_from_file(
    path: str | Path,
    input_format: str = "auto",
    window_type: WindowType = "fixed",
    size: int = 10,
    step: int | None = None,
    key: str | None = None,
    field: str | None = None,
) -> Iterator[SequenceRecord]:
    """Sequence records from any supported input: record files pass through, raw logs are windowed.

    Labelled loghub logs (BGL, Thunderbird) keep their alert labels; HDFS defaults to block sessions.
    """
    if input_format == "auto" and is_record_file(path):
        yield from iter_records(path)
        return
    if input_format == "HDFS" and window_type == "session" and key is None:
        yield from hdfs_sessions(path)
        return
    if input_format in LOG_FORMATS and LOG_FORMATS[input_format].startswith("<Label>") and window_type != "session":
        yield from labelled_windows(path, size, step if window_type == "sliding" else None, input_format)
        return
    stem = plain_name(path).stem
    for window in make_windows(iter_raw_lines(path, input_format, field), window_type, size, step, key):
        yield SequenceRecord(
            sequence_id=f"{stem}-{window.id}", label=None, log_entries=window.lines, line_numbers=window.line_numbers
        )


def _prepare_command(args: Any) -> int:
    import itertools

    from core.io import write_records

    records = records_from_file(
        args.input, args.input_format, args.window_type, args.window_size, args.step, args.session_key, args.field
    )
    first = next(records, None)
    if first is None:  # checked before anything is written
        raise DataError(f"{args.input}: no log lines to window")
    count = write_records(args.output, itertools.chain([first], records))
    print(f"{count} sequences -> {args.output}")
    return 0


def add_commands(sub: Any) -> None:
    """Register ``prepare``."""
    from core.cli_args import add_window_arguments

    p = sub.add_parser(
        "prepare",
        help="turn raw logs (text, JSON events, loghub) into sequence records",
        description="Window a raw log into sequence records (JSON/JSONL/CSV by the output suffix).",
    )
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True)
    add_window_arguments(p)
    p.set_defaults(handler=_prepare_command)
