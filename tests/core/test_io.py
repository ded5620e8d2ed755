from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core.errors import DataError
from core.io import iter_text_lines, read_records, write_json, write_records
from core.schema import SequenceRecord

RECORDS = [
    SequenceRecord(sequence_id="s1", label=0, log_entries=['a, "quoted"', "b\tc"], anomaly_type=None),
    SequenceRecord(
        sequence_id="s2", label=1, log_entries=["订单服务超时", "x" * 5000], anomaly_type="timeout", severity="high"
    ),
    SequenceRecord(sequence_id="s3", label=None, log_entries=["only one"]),
]


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv"])
def test_records_round_trip(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"records{suffix}"
    assert write_records(path, RECORDS) == 3
    back = read_records(path)
    assert [r.to_dict() for r in back] == [r.to_dict() for r in RECORDS]
    assert back[1].extra["severity"] == "high"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # the usual permissions, not mkstemp's 0600


def test_text_lines_round_trip_and_numbering(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    path.write_text("first\n\nsecond 第二\r\nthird", encoding="utf-8")
    assert list(iter_text_lines(path)) == [(1, "first"), (3, "second 第二"), (4, "third")]


def test_invalid_utf8_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.log"
    path.write_bytes(b"ok line\nbad \xff\xfe line\n")
    with pytest.raises(DataError) as err:
        list(iter_text_lines(path))
    assert str(err.value).startswith(f"{path}:2: invalid UTF-8")


def test_overlong_line_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "long.log"
    path.write_bytes(b"short\n" + b"y" * (10 * 1024 * 1024 + 10) + b"\nafter\n")
    with pytest.raises(DataError, match=r"long.log:2: line longer than 10485760 bytes"):
        list(iter_text_lines(path))


def test_wrong_schema_names_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"sequence_id": "a", "log_entries": ["x"]}) + "\n" + json.dumps({"id": 1}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: invalid record \(sequence_id"):
        read_records(path)


def test_bad_label_and_length_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"sequence_id": "a", "label": 3, "log_entries": ["x"]}]))
    with pytest.raises(DataError, match="label"):
        read_records(path)
    path.write_text(json.dumps([{"sequence_id": "a", "length": 5, "log_entries": ["x"]}]))
    with pytest.raises(DataError, match="length is 5"):
        read_records(path)


@pytest.mark.parametrize("content,message", [("", "file is empty"), ("{not json", "invalid JSON")])
def test_empty_and_broken_json(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_records(path)


def test_empty_jsonl_has_no_records(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match="no records"):
        read_records(path)


def test_missing_file_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_records(tmp_path / "nope.json")
    with pytest.raises(DataError, match="unknown record format"):
        read_records(tmp_path / "x.parquet")


def test_failed_write_keeps_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    write_records(path, RECORDS)
    before = path.read_bytes()

    def exploding():
        yield RECORDS[0]
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_records(path, exploding())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_write_json_atomic(tmp_path: Path) -> None:
    write_json(tmp_path / "sub" / "m.json", {"f1": 0.5, "名": "值"})
    assert json.loads((tmp_path / "sub" / "m.json").read_text(encoding="utf-8")) == {"f1": 0.5, "名": "值"}
