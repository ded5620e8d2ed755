"""Every reader in core/ reads a gzip-compressed file like the plain one; a broken gzip is a DataError."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import DataError
from core.io import iter_text_lines, read_records, write_records
from core.loghub import hdfs_sessions, iter_loghub, iter_structured, labelled_windows, read_hdfs_labels
from core.prepare import is_record_file, iter_event_lines, iter_raw_lines, records_from_file
from core.schema import SequenceRecord

RECORDS = [
    SequenceRecord(sequence_id="s1", label=0, log_entries=['a, "quoted"', "b\tc"]),
    SequenceRecord(sequence_id="s2", label=1, log_entries=["订单服务超时", "x" * 5000], anomaly_type="timeout"),
    SequenceRecord(sequence_id="s3", label=None, log_entries=["only one"]),
]


def gzipped(plain: Path, name: str | None = None) -> Path:
    """A gzip-compressed copy of ``plain`` beside it (``name`` or the plain name + ``.gz``)."""
    target = plain.with_name(name or plain.name + ".gz")
    target.write_bytes(gzip.compress(plain.read_bytes()))
    return target


def truncated(packed: Path) -> Path:
    """A copy of a gzip file cut in the middle, as a copy interrupted mid-way leaves it."""
    data = packed.read_bytes()
    target = packed.with_name("cut-" + packed.name)
    target.write_bytes(data[: len(data) // 2])
    return target


def dicts(records: list[SequenceRecord]) -> list[dict[str, object]]:
    return [r.to_dict() for r in records]


@pytest.fixture
def app_log(tmp_path: Path) -> Path:
    path = tmp_path / "app.log"
    lines = [f"2024-01-01 10:00:{i:02d} INFO order {i} accepted 第{i}" for i in range(40)]
    path.write_text("\n".join(lines[:20]) + "\n\n" + "\n".join(lines[20:]) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".ndjson", ".csv"])
def test_record_files_read_the_same_gzipped(tmp_path: Path, suffix: str) -> None:
    plain = tmp_path / f"records{suffix}"
    write_records(plain, RECORDS)
    packed = gzipped(plain)
    assert dicts(read_records(packed)) == dicts(read_records(plain)) == dicts(RECORDS)
    assert is_record_file(packed)
    assert dicts(list(records_from_file(packed))) == dicts(RECORDS)


def test_gzip_is_told_by_its_magic_bytes_not_its_name(tmp_path: Path, app_log: Path) -> None:
    plain = tmp_path / "records.jsonl"
    write_records(plain, RECORDS)
    disguised = gzipped(plain, "disguised.jsonl")  # gzip content, no .gz suffix
    assert dicts(read_records(disguised)) == dicts(RECORDS)
    rotated = gzipped(app_log, "app.log.1")
    assert list(iter_text_lines(rotated)) == list(iter_text_lines(app_log))


def test_plain_text_log_reads_the_same_gzipped(app_log: Path) -> None:
    packed = gzipped(app_log, "app.log.1.gz")
    assert list(iter_text_lines(packed, keep_empty=True)) == list(iter_text_lines(app_log, keep_empty=True))
    assert list(iter_raw_lines(packed)) == list(iter_raw_lines(app_log))
    windows = list(records_from_file(packed, window_type="sliding", size=10, step=5))
    assert [len(w.log_entries) for w in windows] == [10] * 7


def test_text_windows_keep_the_log_name_without_gz(app_log: Path) -> None:
    packed = gzipped(app_log)
    assert dicts(list(records_from_file(packed))) == dicts(list(records_from_file(app_log)))
    assert next(records_from_file(packed)).sequence_id.startswith("app-")


def test_json_events_read_the_same_gzipped(tmp_path: Path) -> None:
    plain = tmp_path / "events.jsonl"
    plain.write_text("\n".join(json.dumps({"ts": i, "msg": f"event {i}", "req": f"r{i % 3}"}) for i in range(30)))
    packed = gzipped(plain)
    assert not is_record_file(packed)
    assert list(iter_event_lines(packed)) == list(iter_event_lines(plain)) == [f"event {i}" for i in range(30)]
    assert list(iter_raw_lines(packed)) == list(iter_raw_lines(plain))  # "auto" looks past .gz: events
    session = records_from_file(packed, window_type="session", key=r"event \d*(\d)")
    assert dicts(list(session)) == dicts(list(records_from_file(plain, window_type="session", key=r"event \d*(\d)")))


def test_hdfs_log_reads_the_same_gzipped(tmp_path: Path, loghub_dir: Path) -> None:
    plain = tmp_path / "HDFS_2k.log"
    plain.write_bytes((loghub_dir / "HDFS" / "HDFS_2k.log").read_bytes())
    packed = gzipped(plain)
    assert [line.fields for line in iter_loghub(packed)] == [line.fields for line in iter_loghub(plain)]
    sessions = hdfs_sessions(packed)
    assert len(sessions) > 100 and dicts(sessions) == dicts(hdfs_sessions(plain))
    prepared = records_from_file(packed, "HDFS", window_type="session")
    assert dicts(list(prepared)) == dicts(sessions)


def test_bgl_log_and_structured_csv_read_the_same_gzipped(tmp_path: Path, loghub_dir: Path) -> None:
    log = tmp_path / "BGL_2k.log"
    log.write_bytes((loghub_dir / "BGL" / "BGL_2k.log").read_bytes())
    assert dicts(list(labelled_windows(gzipped(log)))) == dicts(list(labelled_windows(log)))
    structured = tmp_path / "BGL_2k.log_structured.csv"
    structured.write_bytes((loghub_dir / "BGL" / "BGL_2k.log_structured.csv").read_bytes())
    rows = list(iter_structured(gzipped(structured)))
    assert len(rows) == 2000 and rows == list(iter_structured(structured))


def test_hdfs_labels_read_the_same_gzipped(tmp_path: Path) -> None:
    plain = tmp_path / "anomaly_label.csv"
    plain.write_text("BlockId,Label\nblk_1,Normal\nblk_-2,Anomaly\nblk_3,Normal\n")
    assert read_hdfs_labels(gzipped(plain)) == read_hdfs_labels(plain) == {"blk_1": 0, "blk_-2": 1, "blk_3": 0}
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("Block,Verdict\nblk_1,Normal\n")
    with pytest.raises(DataError, match=r"wrong.csv.gz:1: not a loghub label CSV"):
        read_hdfs_labels(gzipped(wrong))


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv"])
def test_truncated_gzip_records_are_a_data_error(tmp_path: Path, suffix: str) -> None:
    plain = tmp_path / f"records{suffix}"
    write_records(plain, RECORDS * 200)
    cut = truncated(gzipped(plain))
    with pytest.raises(DataError, match=r"truncated gzip file") as err:
        read_records(cut)
    assert err.value.path == str(cut)


def test_truncated_gzip_text_names_the_file_and_line(tmp_path: Path) -> None:
    plain = tmp_path / "big.log"
    plain.write_text("".join(f"line {i} of a long log that compresses {i * 7919 % 1000}\n" for i in range(20000)))
    cut = truncated(gzipped(plain))
    lines_read: list[tuple[int, str]] = []
    with pytest.raises(DataError) as err:
        lines_read.extend(iter_text_lines(cut))
    assert err.value.path == str(cut) and err.value.reason.startswith("truncated gzip file")
    assert err.value.line == len(lines_read) + 1 and 1000 < len(lines_read) < 20000


def test_truncated_gzip_csv_of_labels_is_a_data_error(tmp_path: Path) -> None:
    plain = tmp_path / "anomaly_label.csv"
    plain.write_text("BlockId,Label\n" + "".join(f"blk_{i * 7919},Normal\n" for i in range(20000)))
    with pytest.raises(DataError, match=r"cut-anomaly_label.csv.gz:\d+: truncated gzip"):
        read_hdfs_labels(truncated(gzipped(plain)))


def test_corrupt_gzip_is_a_data_error(tmp_path: Path, app_log: Path) -> None:
    stub = tmp_path / "stub.log.gz"
    stub.write_bytes(gzip.compress(app_log.read_bytes())[:6])  # a header and nothing else
    with pytest.raises(DataError, match=r"stub.log.gz:1: truncated gzip"):
        list(iter_text_lines(stub))
    trailing = tmp_path / "trailing.log.gz"
    trailing.write_bytes(gzip.compress(b"one\ntwo\n") + b"not gzip")
    with pytest.raises(DataError, match=r"trailing.log.gz:3: corrupt gzip file"):
        list(iter_text_lines(trailing))


def test_invalid_utf8_inside_gzip_names_the_line(tmp_path: Path) -> None:
    packed = tmp_path / "bad.log.gz"
    packed.write_bytes(gzip.compress(b"ok line\nbad \xff\xfe line\n"))
    with pytest.raises(DataError, match=r"bad.log.gz:2: invalid UTF-8"):
        list(iter_text_lines(packed))


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".json.gz", ".csv.gz"])
def test_records_written_to_gz_are_gzip(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"out{suffix}"
    assert write_records(path, RECORDS) == 3
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    assert dicts(read_records(path)) == dicts(RECORDS)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_prepare_cli_reads_and_writes_gzip(tmp_path: Path, loghub_dir: Path) -> None:
    log = tmp_path / "BGL_2k.log"
    log.write_bytes((loghub_dir / "BGL" / "BGL_2k.log").read_bytes())
    packed, out = gzipped(log), tmp_path / "bgl.jsonl.gz"
    cmd = [sys.executable, "-m", "logtriage", "prepare", str(packed), "--input-format", "BGL", "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert dicts(read_records(out)) == dicts(list(labelled_windows(log)))
    cut = truncated(packed)
    cmd[4] = str(cut)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {cut}:") and "truncated gzip file" in result.stderr
    assert "Traceback" not in result.stderr
