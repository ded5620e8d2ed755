from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from core.io import read_records, write_records
from core.labels import ANOMALY_TYPES
from core.schema import SequenceRecord
from data_gen.data_splitter import main, split_sizes, stratified_split
from tests.data_gen.helpers import assert_one_line_error

NAMES = ("train", "val", "test", "train_normal")


def _strata(records: list[SequenceRecord]) -> Counter[tuple[int | None, str | None]]:
    return Counter((r.label, r.anomaly_type) for r in records)


def test_default_sizes_for_8000() -> None:
    assert split_sizes(8000, (0.8, 0.1, 0.1)) == (6400, 800, 800)
    records = [
        SequenceRecord(
            sequence_id=f"s{i}",
            label=0 if i < 5600 else 1,
            log_entries=["x"],
            anomaly_type=None if i < 5600 else ANOMALY_TYPES[i % 10],
        )
        for i in range(8000)
    ]
    split = stratified_split(records, (0.8, 0.1, 0.1), seed=42)
    assert (len(split.train), len(split.val), len(split.test)) == (6400, 800, 800)
    assert _strata(split.val)[(0, None)] == 560 and _strata(split.test)[(0, None)] == 560
    for kind in ANOMALY_TYPES:
        assert (_strata(split.train)[(1, kind)], _strata(split.val)[(1, kind)], _strata(split.test)[(1, kind)]) == (
            192,
            24,
            24,
        )


@pytest.mark.parametrize("n", [1, 7, 33, 101])
def test_sizes_are_exact_for_odd_counts(n: int) -> None:
    records = [
        SequenceRecord(sequence_id=str(i), label=i % 2, log_entries=["x"], anomaly_type="timeout" if i % 2 else None)
        for i in range(n)
    ]
    split = stratified_split(records, (0.8, 0.1, 0.1), seed=1)
    assert (len(split.train), len(split.val), len(split.test)) == split_sizes(n, (0.8, 0.1, 0.1))
    assert sorted(r.sequence_id for part in (split.train, split.val, split.test) for r in part) == sorted(
        r.sequence_id for r in records
    )


def test_main_writes_proportional_disjoint_splits(
    seq_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--input", str(seq_file), "--output-dir", str(tmp_path), "--seed", "3"]) == 0
    source = read_records(seq_file)
    parts = {name: read_records(tmp_path / f"{name}.json") for name in NAMES}
    assert [len(parts[n]) for n in ("train", "val", "test")] == [400, 50, 50]
    ids = [r.sequence_id for n in ("train", "val", "test") for r in parts[n]]
    assert sorted(ids) == sorted(r.sequence_id for r in source)  # disjoint and complete
    order = {r.sequence_id: i for i, r in enumerate(source)}
    for n in ("train", "val", "test"):
        positions = [order[r.sequence_id] for r in parts[n]]
        assert positions == sorted(positions)  # input order kept
    total = _strata(source)
    for name, share in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        counts = _strata(parts[name])
        for key, size in total.items():
            assert abs(counts[key] - size * share) <= 1, (name, key)
    assert [r.sequence_id for r in parts["train_normal"]] == [r.sequence_id for r in parts["train"] if r.label == 0]
    out = capsys.readouterr().out
    assert "anomaly_type" in out and "train_normal: " in out
    assert any(line.split() == ["all", "500", "400", "50", "50"] for line in out.splitlines())


def test_seed_and_ratio_options(seq_file: Path, tmp_path: Path) -> None:
    def val_ids(seed: str, out: str, *ratios: str) -> list[str]:
        args = ["--input", str(seq_file), "--output-dir", str(tmp_path / out), "--seed", seed, "-q"]
        if ratios:
            args += ["--train-ratio", ratios[0], "--val-ratio", ratios[1], "--test-ratio", ratios[2]]
        assert main(args) == 0
        return [r.sequence_id for r in read_records(tmp_path / out / "val.json")]

    first, again, other = val_ids("1", "a"), val_ids("1", "b"), val_ids("2", "c")
    assert first == again and first != other
    for name in NAMES:
        assert (tmp_path / "a" / f"{name}.json").read_bytes() == (tmp_path / "b" / f"{name}.json").read_bytes()
    assert len(val_ids("1", "d", "0.7", "0.15", "0.15")) == 75
    assert len(read_records(tmp_path / "d" / "train.json")) == 350


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_reads_and_writes_other_formats(seq_file: Path, tmp_path: Path, fmt: str) -> None:
    source = tmp_path / f"in.{fmt}"
    write_records(source, read_records(seq_file))
    args = ["--input", str(source), "--output-dir", str(tmp_path / "out"), "--format", fmt, "-q"]
    assert main(args) == 0
    test = read_records(tmp_path / "out" / f"test.{fmt}")
    assert len(test) == 50 and _strata(test)[(0, None)] == 35


@pytest.mark.parametrize(
    "ratios", [["0.8", "0.3", "0.1"], ["1.1", "-0.05", "-0.05"]], ids=["sum_above_one", "negative"]
)
def test_bad_ratios(seq_file: Path, tmp_path: Path, ratios: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--input", str(seq_file), "--output-dir", str(tmp_path / "out")]
    rc = main([*args, "--train-ratio", ratios[0], "--val-ratio", ratios[1], "--test-ratio", ratios[2]])
    assert_one_line_error(rc, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["missing", "empty", "bad_utf8", "wrong_schema", "bad_suffix"])
def test_bad_input_gives_one_line_error(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = {
        "missing": tmp_path / "missing.json",
        "empty": tmp_path / "empty.csv",
        "bad_utf8": tmp_path / "bad.json",
        "wrong_schema": tmp_path / "wrong.json",
        "bad_suffix": tmp_path / "seq.txt",
    }[case]
    if case == "bad_utf8":
        path.write_bytes(b'[{"sequence_id": "a", "log_entries": ["\xff"]}]')
    elif case == "wrong_schema":
        path.write_text('[{"sequence_id": "a", "label": 3, "log_entries": ["x"]}]')
    elif case != "missing":
        path.write_text("")
    rc = main(["--input", str(path), "--output-dir", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert_one_line_error(rc, captured.err)
    assert str(path.name) in captured.err
    assert captured.out == ""
