"""Readers and writers for sequence records (JSON, JSONL, CSV) and raw log lines (plain text).

Readers stream where the format allows it (JSONL, CSV, text), validate every record and raise
:class:`DataError` naming the file and the line. Every reader opens its file through
:func:`open_binary` / :func:`open_text`, which decompress gzip (told by its magic bytes, whatever
the name), so rotated logs (``app.log.1.gz``) and ``x.jsonl.gz`` read like plain files; the record
format comes from the suffix before ``.gz``. Writers write to a temporary file in the same folder
and rename it, so a failed write never leaves a half-written or truncated file behind; a name
ending in ``.gz`` is written gzip-compressed.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
import sys
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, cast

from pydantic import ValidationError

from core.errors import DataError
from core.schema import SequenceRecord

RECORD_FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
DEFAULT_MAX_LINE_BYTES = 10 * 1024 * 1024
CSV_LIST_FIELDS = ("log_entries",)
GZIP_MAGIC = b"\x1f\x8b"

csv.field_size_limit(sys.maxsize)


def plain_name(path: str | Path) -> Path:
    """The path without a trailing ``.gz``: ``app.log.1.gz`` -> ``app.log.1``, ``x.jsonl.gz`` -> ``x.jsonl``."""
    p = Path(path)
    return p.with_suffix("") if p.suffix.lower() == ".gz" else p


def data_suffix(path: str | Path) -> str:
    """The lower-case suffix that names the data format, looking past ``.gz`` (``x.jsonl.gz`` -> ``.jsonl``)."""
    return plain_name(path).suffix.lower()


def record_format(path: str | Path) -> str:
    """The record format of a path by its suffix (before any ``.gz``): json, jsonl or csv."""
    suffix = data_suffix(path)
    if suffix not in RECORD_FORMATS:
        raise DataError(f"unknown record format {suffix!r} (use .json, .jsonl or .csv, optionally .gz)", path)
    return RECORD_FORMATS[suffix]


class _GzipReader(io.BufferedIOBase):
    """A gzip stream whose corrupt or truncated data raises :class:`DataError` naming the file and line."""

    def __init__(self, raw: IO[bytes], path: Path) -> None:
        super().__init__()
        self._raw = raw
        self._gz = gzip.GzipFile(fileobj=raw, mode="rb")
        self._path = path
        self._newlines = 0  # newlines handed out so far: the data breaks on the line after them

    def _read(self, method: str, size: int) -> bytes:
        try:
            data: bytes = getattr(self._gz, method)(size)
        except EOFError:
            raise DataError("truncated gzip file (the compressed data ends early)", self._path, self._line) from None
        except (gzip.BadGzipFile, zlib.error) as exc:
            raise DataError(f"corrupt gzip file ({exc})", self._path, self._line) from None
        except OSError as exc:
            raise DataError(f"cannot read ({exc.strerror or exc})", self._path, self._line) from None
        self._newlines += data.count(b"\n")
        return data

    @property
    def _line(self) -> int:
        return self._newlines + 1

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        return self._read("read", -1 if size is None else size)

    def read1(self, size: int = -1) -> bytes:
        return self._read("read1", size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._read("readline", -1 if size is None else size)

    def close(self) -> None:
        if not self.closed:
            self._gz.close()
            self._raw.close()
        super().close()


def open_binary(path: str | Path) -> IO[bytes]:
    """Open a file to read its bytes, decompressing gzip (told by the magic bytes 1f 8b, not the name)."""
    p = Path(path)
    if not p.exists():
        raise DataError("no such file", p)
    if p.is_dir():
        raise DataError("is a folder, not a file", p)
    try:
        raw = open(p, "rb")  # noqa: SIM115
        magic = raw.peek(2)[:2]
    except OSError as exc:
        raise DataError(f"cannot open ({exc.strerror or exc})", p) from None
    if magic != GZIP_MAGIC:
        return raw
    return cast(IO[bytes], _GzipReader(raw, p))


def open_text(path: str | Path) -> IO[str]:
    """Open a UTF-8 text file (gzip-compressed or not) for reading, newlines untranslated (as csv wants)."""
    return io.TextIOWrapper(open_binary(path), encoding="utf-8", errors="strict", newline="")


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; rename it over ``path`` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        kwargs: dict[str, Any] = {} if "b" in mode else {"encoding": encoding, "newline": ""}
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _atomic_text(path: str | Path) -> Iterator[IO[str]]:
    """:func:`atomic_write` for UTF-8 text; a name ending in ``.gz`` is written gzip-compressed."""
    if Path(path).suffix.lower() != ".gz":
        with atomic_write(path) as handle:
            yield handle
        return
    with (
        atomic_write(path, "wb") as raw,
        gzip.GzipFile(plain_name(path).name, mode="wb", fileobj=raw, mtime=0) as packed,
        io.TextIOWrapper(packed, encoding="utf-8", newline="") as handle,
    ):
        yield handle


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _validate(obj: Any, path: str | Path, line: int | None) -> SequenceRecord:
    if not isinstance(obj, dict):
        raise DataError(f"expected an object with sequence_id and log_entries, got {type(obj).__name__}", path, line)
    try:
        return SequenceRecord.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "record"
        raise DataError(f"invalid record ({field}: {first['msg']})", path, line) from None


def iter_text_lines(
    path: str | Path, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, keep_empty: bool = False
) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` from a UTF-8 text file (gzip or not), streaming, without the newline.

    Raises :class:`DataError` on invalid UTF-8, on a line longer than ``max_line_bytes`` or on a
    corrupt or truncated gzip file.
    """
    p = Path(path)
    handle = open_binary(p)
    with handle:
        number = 0
        while True:
            raw = handle.readline(max_line_bytes + 1)
            if not raw:
                break
            number += 1
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                raise DataError(f"line longer than {max_line_bytes} bytes", p, number)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"invalid UTF-8 at byte {exc.start}", p, number) from None
            text = text.rstrip("\r\n")
            if text.strip() or keep_empty:
                yield number, text


def _iter_jsonl(path: str | Path, max_line_bytes: int) -> Iterator[SequenceRecord]:
    for number, line in iter_text_lines(path, max_line_bytes):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON ({exc.msg}, column {exc.colno})", path, number) from None
        yield _validate(obj, path, number)


def _iter_json(path: str | Path) -> Iterator[SequenceRecord]:
    p = Path(path)
    with open_binary(p) as handle:
        try:
            content = handle.read()
        except OSError as exc:
            raise DataError(f"cannot read ({exc.strerror})", p) from None
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError("invalid UTF-8", p, content[: exc.start].count(b"\n") + 1) from None
    if not text.strip():
        raise DataError("file is empty", p)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON ({exc.msg}, column {exc.colno})", p, exc.lineno) from None
    if isinstance(data, dict) and "sequences" in data:
        data = data["sequences"]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise DataError("expected a list of records or an object with 'sequences'", p)
    for index, obj in enumerate(data):
        try:
            yield _validate(obj, p, None)
        except DataError as err:
            raise DataError(f"record #{index + 1}: {err.reason}", p) from None


def _iter_csv(path: str | Path) -> Iterator[SequenceRecord]:
    handle = open_text(path)
    with handle:
        try:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None:
                raise DataError("file is empty", path)
            missing = {"sequence_id", "log_entries"} - set(reader.fieldnames)
            if missing:
                raise DataError(f"CSV header lacks column(s) {sorted(missing)}", path, 1)
            for row in reader:
                number = reader.line_num
                obj: dict[str, Any] = {k: v for k, v in row.items() if k is not None}
                for key in CSV_LIST_FIELDS:
                    try:
                        obj[key] = json.loads(obj[key]) if obj.get(key) else []
                    except json.JSONDecodeError:
                        raise DataError(f"column {key} is not a JSON list", path, number) from None
                for key, value in list(obj.items()):
                    if value == "":
                        # an empty cell is a missing value; extra columns absent from a row are dropped
                        if key in SequenceRecord.model_fields:
                            obj[key] = None
                        else:
                            del obj[key]
                    elif key in ("label", "length") and isinstance(value, str):
                        try:
                            obj[key] = int(value)
                        except ValueError:
                            raise DataError(f"column {key} is not an integer: {value!r}", path, number) from None
                yield _validate(obj, path, number)
        except UnicodeDecodeError as exc:
            raise DataError(f"invalid UTF-8 ({exc.reason})", path) from None


def iter_records(path: str | Path, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[SequenceRecord]:
    """Stream validated sequence records from a JSON, JSONL or CSV file."""
    fmt = record_format(path)
    if fmt == "jsonl":
        return _iter_jsonl(path, max_line_bytes)
    if fmt == "csv":
        return _iter_csv(path)
    return _iter_json(path)


def read_records(path: str | Path, allow_empty: bool = False) -> list[SequenceRecord]:
    """All records of a file; an empty file is an error unless ``allow_empty``."""
    records = list(iter_records(path))
    if not records and not allow_empty:
        raise DataError("no records in file", path)
    return records


def _as_dict(record: SequenceRecord | dict[str, Any]) -> dict[str, Any]:
    return record.to_dict() if isinstance(record, SequenceRecord) else dict(record)


def write_records(path: str | Path, records: Iterable[SequenceRecord | dict[str, Any]]) -> int:
    """Write records atomically in the format given by the suffix; returns how many were written."""
    fmt = record_format(path)
    count = 0
    with _atomic_text(path) as handle:
        if fmt == "jsonl":
            for record in records:
                handle.write(json.dumps(_as_dict(record), ensure_ascii=False) + "\n")
                count += 1
        elif fmt == "json":
            handle.write("[\n")
            for record in records:
                handle.write((",\n" if count else "") + json.dumps(_as_dict(record), ensure_ascii=False))
                count += 1
            handle.write("\n]\n")
        else:
            rows = [_as_dict(r) for r in records]
            fields: list[str] = ["sequence_id", "label", "length", "log_entries", "anomaly_type"]
            for row in rows:
                fields.extend(k for k in row if k not in fields)
            writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
            writer.writeheader()
            for row in rows:
                out = {
                    k: (json.dumps(v, ensure_ascii=False) if isinstance(v, list | dict) else v) for k, v in row.items()
                }
                writer.writerow(out)
                count += 1
    return count


def write_json(path: str | Path, obj: Any) -> None:
    """Write any JSON-ready object atomically (reports, metrics)."""
    with _atomic_text(path) as handle:
        json.dump(obj, handle, ensure_ascii=False, indent=2)
        handle.write("\n")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write dict rows as JSON lines atomically; returns the count."""
    count = 0
    with _atomic_text(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count
