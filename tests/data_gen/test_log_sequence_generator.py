from __future__ import annotations

import math
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from core.io import read_records
from core.labels import ANOMALY_TYPES, SEVERITIES
from core.normalize import Normalizer
from core.schema import SequenceRecord
from data_gen.anomalies import SUBTLE_TYPES
from data_gen.catalog import FLOWS, SERVICES
from data_gen.log_sequence_generator import GeneratorConfig, generate_sequences, main
from tests.data_gen.helpers import REPO, assert_one_line_error

CJK = re.compile(r"[\u4e00-\u9fff]")
KEYWORD_TYPES = [t for t in ANOMALY_TYPES if t not in SUBTLE_TYPES]
TIMESTAMP = re.compile(
    r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3} "
    r"|\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z "
    r"|\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2},\d{3} "
    r"|[A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2} )"
)
RARE_MARKERS = (
    "second factor required",
    " miss took ",
    "3-D Secure challenge",
    "below reorder threshold",
    "page=2",
    "applied coupon",
    "retrying call to",
)
NORMALIZER = Normalizer()


def _normalized(record: SequenceRecord) -> tuple[str, ...]:
    return tuple(NORMALIZER.normalize_many(record.log_entries))


def _service(line: str) -> str:
    for pattern in (r" (\w+)\[\d+\]: ", r"\[(\w+)\]", r"^\S+ \S+ (\w+) "):
        match = re.search(pattern, line)
        if match:
            return match.group(1)
    raise AssertionError(f"no service in {line!r}")


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    outputs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        path = tmp_path / name / "seq.json"
        assert main(["--num-sequences", "300", "--seed", str(seed), "--output", str(path), "-q"]) == 0
        outputs[name] = (path.read_bytes(), path.with_suffix(".csv").read_bytes())
    assert outputs["a"] == outputs["b"]
    assert outputs["a"][0] != outputs["c"][0]
    assert outputs["a"][1] != outputs["c"][1]


def test_csv_beside_json_holds_the_same_records(tmp_path: Path) -> None:
    path = tmp_path / "out" / "seq.json"
    assert main(["--num-sequences", "120", "--lang", "zh", "--output", str(path), "-q"]) == 0
    from_json, from_csv = read_records(path), read_records(path.with_suffix(".csv"))
    assert len(from_json) == len(from_csv) == 120
    for a, b in zip(from_json, from_csv, strict=True):
        assert (a.sequence_id, a.label, a.anomaly_type, a.log_entries) == (
            b.sequence_id,
            b.label,
            b.anomaly_type,
            b.log_entries,
        )
        assert a.extra.get("severity") == b.extra.get("severity")


def test_anomaly_ratio_and_type_balance(hard_records: list[SequenceRecord]) -> None:
    anomalous = [r for r in hard_records if r.label == 1]
    assert len(anomalous) == round(0.3 * len(hard_records))
    counts = Counter(r.anomaly_type for r in anomalous)
    assert set(counts) == set(ANOMALY_TYPES)
    assert max(counts.values()) - min(counts.values()) <= 1
    assert len({r.sequence_id for r in hard_records}) == len(hard_records)


@pytest.mark.parametrize("ratio", [0.0, 0.05, 0.5, 1.0])
def test_anomaly_ratio_knob(ratio: float) -> None:
    records = generate_sequences(GeneratorConfig(num_sequences=200, anomaly_ratio=ratio, seed=3), progress=False)
    assert sum(r.label for r in records if r.label is not None) == round(200 * ratio)


def test_record_fields(hard_records: list[SequenceRecord]) -> None:
    for r in hard_records:
        extra = r.extra
        assert r.length == len(r.log_entries)
        assert extra["flow"] in FLOWS
        assert extra["difficulty"] == "hard" and extra["lang"] == "en"
        explained = ("root_cause_service", "root_cause", "severity", "suggested_response")
        if r.label == 0:
            assert r.anomaly_type is None
            assert all(extra[key] is None for key in explained)
        else:
            assert r.anomaly_type in ANOMALY_TYPES
            assert extra["severity"] in SEVERITIES
            assert extra["root_cause_service"] in SERVICES
            assert (
                extra["root_cause_service"] in extra["suggested_response"]
                or extra["root_cause_service"] in (extra["root_cause"])
            )
            assert len(extra["suggested_response"]) > 60


def test_lengths_timestamps_and_addresses(hard_records: list[SequenceRecord]) -> None:
    noisy = generate_sequences(GeneratorConfig(num_sequences=300, noise=0.6, seed=5), progress=False)
    for r in [*hard_records, *noisy]:
        assert 6 <= r.length <= 15
        for line in r.log_entries:
            assert TIMESTAMP.match(line), line
    text = "\n".join(line for r in hard_records for line in r.log_entries)
    assert re.search(r"from \d+\.\d+\.\d+\.\d+ port \d+", text)
    assert re.search(r"from 2001:db8:[0-9a-f:]+ port \d+", text)
    assert re.search(r"latency=\d+ms", text) and re.search(r"took \d+ ms", text)
    assert len({_service(line) for line in text.splitlines()}) == len(SERVICES)


def test_chinese_output() -> None:
    records = generate_sequences(
        GeneratorConfig(num_sequences=200, lang="zh", difficulty="easy", seed=4), progress=False
    )
    for r in records:
        assert sum(bool(CJK.search(line)) for line in r.log_entries) >= r.length // 2
        if r.label == 1:
            assert CJK.search(r.extra["suggested_response"]) and CJK.search(r.extra["root_cause"])
    timeouts = [line for r in records if r.anomaly_type == "timeout" for line in r.log_entries]
    assert any(re.search(r"服务调用\S*服务超时", line) for line in timeouts)
    english = generate_sequences(GeneratorConfig(num_sequences=50, seed=4), progress=False)
    assert not any(CJK.search(line) for r in english for line in r.log_entries)


@pytest.mark.parametrize("records_fixture", ["hard_records", "easy_records"])
def test_every_anomaly_differs_from_every_normal_after_normalization(
    records_fixture: str, request: pytest.FixtureRequest
) -> None:
    records: list[SequenceRecord] = request.getfixturevalue(records_fixture)
    normals = {_normalized(r) for r in records if r.label == 0}
    clashes = [r.sequence_id for r in records if r.label == 1 and _normalized(r) in normals]
    assert clashes == []


def test_normal_flows_keep_a_fixed_skeleton(easy_records: list[SequenceRecord]) -> None:
    shapes: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for r in easy_records:
        if r.label == 0:
            shapes[r.extra["flow"]].add(tuple(_service(line) for line in r.log_entries))
    assert set(shapes) == set(FLOWS)
    assert all(len(s) == 1 for s in shapes.values()), shapes
    hard = generate_sequences(GeneratorConfig(num_sequences=1000, noise=0.0, seed=9), progress=False)
    templates = {line for r in hard if r.label == 0 for line in _normalized(r)}
    assert 40 <= len(templates) <= 200  # values are masked: few templates, each reused many times


def test_subtle_anomalies_have_no_telltale_line() -> None:
    records = generate_sequences(GeneratorConfig(num_sequences=3000, noise=0.0, seed=21), progress=False)
    normal_lines = {line for r in records if r.label == 0 for line in _normalized(r)}
    for kind in ("missing_step", "out_of_order"):
        group = [r for r in records if r.anomaly_type == kind]
        only_normal_lines = [r for r in group if set(_normalized(r)) <= normal_lines]
        assert len(only_normal_lines) >= 0.9 * len(group), kind
    # a latency spike shows as a duration bucket never seen for that line in normal flows
    for r in records:
        if r.anomaly_type == "latency_spike":
            assert not set(_normalized(r)) <= normal_lines, r.log_entries
    # retries: normal flows hold at most one (hard negative), a storm at least four
    retries = {r.sequence_id: sum("retrying call to" in line for line in r.log_entries) for r in records}
    assert max(retries[r.sequence_id] for r in records if r.label == 0) == 1
    assert min(retries[r.sequence_id] for r in records if r.anomaly_type == "retry_storm") >= 4


def test_difficulty_changes_the_phrasing(
    hard_records: list[SequenceRecord], easy_records: list[SequenceRecord]
) -> None:
    def has_error(r: SequenceRecord) -> bool:
        return any(re.search(r" ERROR[: ]", line) for line in r.log_entries)

    def has_warn(r: SequenceRecord) -> bool:
        return any(re.search(r" WARN(ING)?[: ]", line) for line in r.log_entries)

    easy_keyword = [r for r in easy_records if r.anomaly_type in KEYWORD_TYPES]
    assert easy_keyword and all(has_error(r) for r in easy_keyword)
    assert not any(has_warn(r) or has_error(r) for r in easy_records if r.label == 0)
    easy_normals = [r for r in easy_records if r.label == 0]
    assert not any(marker in line for r in easy_normals for line in r.log_entries for marker in RARE_MARKERS)

    hard_keyword = [r for r in hard_records if r.anomaly_type in KEYWORD_TYPES]
    soft = sum(not has_error(r) for r in hard_keyword) / len(hard_keyword)
    assert soft >= 0.5  # most hard keyword anomalies are phrased at WARN/INFO level
    normals = [r for r in hard_records if r.label == 0]
    assert not any(has_error(r) for r in normals)
    warned = sum(has_warn(r) for r in normals) / len(normals)
    rare = sum(any(m in line for line in r.log_entries for m in RARE_MARKERS) for r in normals) / len(normals)
    assert 0.08 <= warned <= 0.35  # harmless deprecation/GC warnings in normal flows
    assert 0.04 <= rare <= 0.2  # rare but normal paths (2FA, cache miss, 3-D Secure, ...)


def test_noise_knob_adds_background_lines() -> None:
    def background(noise: float) -> tuple[float, int]:
        records = generate_sequences(
            GeneratorConfig(num_sequences=300, difficulty="easy", noise=noise, seed=6), progress=False
        )
        lines = [line for r in records for line in r.log_entries]
        marks = sum("health check passed" in line or "metrics rps=" in line for line in lines)
        return sum(r.length for r in records) / len(records), marks

    quiet_len, quiet_marks = background(0.0)
    noisy_len, noisy_marks = background(0.4)
    assert quiet_marks == 0 and noisy_marks > 0
    assert noisy_len - quiet_len >= 1.5


def test_latency_ranges_stay_inside_one_decade() -> None:
    for flow in FLOWS.values():
        for step in (*flow.steps, *flow.rare.steps):
            if step.lat is not None:
                lo, hi = step.lat
                assert 1 <= lo <= hi and math.floor(math.log10(lo)) == math.floor(math.log10(hi)), step.key
                assert "{lat}" in step.text[0] and "{lat}" in step.text[1]


def test_help_runs_as_a_script() -> None:
    proc = subprocess.run(
        [sys.executable, "data_gen/log_sequence_generator.py", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for option in ("--difficulty", "--noise", "--anomaly-ratio", "--num-sequences", "--lang", "--output", "--seed"):
        assert option in proc.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--anomaly-ratio", "1.5"],
        ["--noise", "-0.1"],
        ["--num-sequences", "0"],
        ["--output", "out.txt"],
    ],
)
def test_bad_options_give_one_line_error(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    rc = main([*args, "-q"])
    assert_one_line_error(rc, capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []
