from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from core.io import read_records, write_records
from core.labels import ANOMALY_TYPES, SEVERITIES
from core.schema import SequenceRecord
from data_gen.anomaly_classification_generator import (
    ALPACA_FILE,
    ANSWER_KEYS,
    CHAT_FILE,
    CLASSIFICATION_FILE,
    LABELS_FILE,
    build_parser,
    main,
)
from tests.data_gen.helpers import REPO, assert_one_line_error

CJK = re.compile(r"[\u4e00-\u9fff]")
SAMPLE_KEYS = {
    "sequence_id",
    "log_entries",
    "category",
    "severity",
    "root_cause_service",
    "root_cause",
    "suggested_response",
    "lang",
}
OUTPUTS = (CLASSIFICATION_FILE, ALPACA_FILE, CHAT_FILE, LABELS_FILE)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cls")
    args = ["--output-dir", str(out), "--num-classification", "80", "--num-instructions", "40", "--seed", "5", "-q"]
    assert main(args) == 0
    return out


def test_defaults_match_the_brief() -> None:
    args = build_parser().parse_args([])
    assert (args.num_classification, args.num_instructions, args.lang) == (4500, 2000, "both")
    assert args.output_dir == Path("data")


def test_classification_samples(generated: Path) -> None:
    samples = _jsonl(generated / CLASSIFICATION_FILE)
    assert len(samples) == 80
    for s in samples:
        assert set(s) >= SAMPLE_KEYS
        assert s["category"] in ANOMALY_TYPES  # anomalous sequences only, no "normal"
        assert s["severity"] in SEVERITIES
        assert 6 <= len(s["log_entries"]) <= 15
        chinese = bool(CJK.search(s["suggested_response"]))
        assert chinese == (s["lang"] == "zh")
        assert chinese == bool(CJK.search(" ".join(s["log_entries"])))
    assert Counter(s["lang"] for s in samples) == {"en": 40, "zh": 40}
    # each language half is balanced over the 10 types
    assert Counter(s["category"] for s in samples) == dict.fromkeys(ANOMALY_TYPES, 8)
    assert len({s["sequence_id"] for s in samples}) == 80


def test_instruction_records(generated: Path) -> None:
    alpaca, chat = _jsonl(generated / ALPACA_FILE), _jsonl(generated / CHAT_FILE)
    assert len(alpaca) == len(chat) == 40
    langs: Counter[str] = Counter()
    for a, c in zip(alpaca, chat, strict=True):
        assert set(a) == {"instruction", "input", "output"}
        assert set(c) == {"messages", "sequence_id", "lang", "log_entries"}
        assert "\n".join(c["log_entries"]) == a["input"]
        assert [m["role"] for m in c["messages"]] == ["system", "user", "assistant"]
        assert c["messages"][2]["content"] == a["output"]
        assert a["input"] in c["messages"][1]["content"] and a["instruction"] in c["messages"][1]["content"]
        answer = json.loads(a["output"])
        assert tuple(answer) == ANSWER_KEYS
        assert answer["category"] in ANOMALY_TYPES and answer["severity"] in SEVERITIES
        assert all(isinstance(answer[k], str) and answer[k] for k in ANSWER_KEYS)
        lang = "zh" if CJK.search(a["input"]) else "en"
        langs[lang] += 1
        assert bool(CJK.search(answer["summary"])) == (lang == "zh")
        assert bool(CJK.search(a["instruction"])) == (lang == "zh")
        assert all(cat in a["instruction"] for cat in ANOMALY_TYPES)
    assert langs == {"en": 20, "zh": 20}
    # the instruction examples are other sequences than the classification samples
    inputs = {a["input"] for a in alpaca}
    assert not any("\n".join(s["log_entries"]) in inputs for s in _jsonl(generated / CLASSIFICATION_FILE))


def test_labels_file(generated: Path) -> None:
    labels = json.loads((generated / LABELS_FILE).read_text(encoding="utf-8"))
    assert labels["categories"] == list(ANOMALY_TYPES)
    assert labels["severities"] == list(SEVERITIES)


def test_same_seed_gives_identical_bytes(generated: Path, tmp_path: Path) -> None:
    args = ["--num-classification", "80", "--num-instructions", "40", "-q"]
    assert main([*args, "--seed", "5", "--output-dir", str(tmp_path / "same")]) == 0
    assert main([*args, "--seed", "6", "--output-dir", str(tmp_path / "other")]) == 0
    for name in OUTPUTS:
        assert (tmp_path / "same" / name).read_bytes() == (generated / name).read_bytes()
    assert (tmp_path / "other" / CLASSIFICATION_FILE).read_bytes() != (generated / CLASSIFICATION_FILE).read_bytes()


def test_single_language(tmp_path: Path) -> None:
    args = ["--output-dir", str(tmp_path), "--num-classification", "20", "--num-instructions", "10", "-q"]
    assert main(args) == 0
    assert {s["lang"] for s in _jsonl(tmp_path / CLASSIFICATION_FILE)} == {"en", "zh"}
    assert main([*args, "--lang", "zh"]) == 0
    assert {s["lang"] for s in _jsonl(tmp_path / CLASSIFICATION_FILE)} == {"zh"}


def test_input_file_uses_its_anomalous_records(seq_file: Path, tmp_path: Path) -> None:
    records = read_records(seq_file)
    anomalous = {r.sequence_id for r in records if r.label == 1}
    args = ["--input", str(seq_file), "--output-dir", str(tmp_path), "-q"]
    assert main([*args, "--num-classification", "100", "--num-instructions", "30"]) == 0
    samples = _jsonl(tmp_path / CLASSIFICATION_FILE)
    assert len(samples) == 100 and {s["sequence_id"] for s in samples} <= anomalous
    by_id = {r.sequence_id: r for r in records}
    for s in samples:
        assert s["category"] == by_id[s["sequence_id"]].anomaly_type
        assert s["suggested_response"] == by_id[s["sequence_id"]].extra["suggested_response"]
    assert len(_jsonl(tmp_path / ALPACA_FILE)) == 30


def test_input_without_explanations_gets_defaults(tmp_path: Path) -> None:
    path = tmp_path / "bare.jsonl"
    bare = [
        SequenceRecord(sequence_id="n1", label=0, log_entries=["ok"] * 6),
        SequenceRecord(sequence_id="a1", label=1, log_entries=["call timed out"] * 6, anomaly_type="timeout"),
        SequenceRecord(
            sequence_id="a2", label=1, log_entries=["订单服务调用支付服务超时"] * 6, anomaly_type="disk_full"
        ),
    ]
    write_records(path, bare)
    out = tmp_path / "out"
    assert (
        main(["--input", str(path), "--output-dir", str(out), "--num-classification", "2", "--num-instructions", "0"])
        == 0
    )
    samples = {s["sequence_id"]: s for s in _jsonl(out / CLASSIFICATION_FILE)}
    assert set(samples) == {"a1", "a2"}
    assert samples["a1"]["lang"] == "en" and samples["a2"]["lang"] == "zh"
    assert samples["a1"]["severity"] == "medium" and "deadline" in samples["a1"]["suggested_response"]
    assert CJK.search(samples["a2"]["suggested_response"])
    labels = json.loads((out / LABELS_FILE).read_text(encoding="utf-8"))
    assert labels["categories"][-1] == "disk_full"


def _bad_inputs(tmp: Path) -> dict[str, Path]:
    files = {
        "missing": tmp / "missing.json",
        "empty": tmp / "empty.json",
        "empty_jsonl": tmp / "empty.jsonl",
        "bad_utf8": tmp / "bad.jsonl",
        "wrong_schema": tmp / "wrong.jsonl",
        "no_anomalies": tmp / "normal.json",
    }
    files["empty"].write_text("")
    files["empty_jsonl"].write_text("\n")
    files["bad_utf8"].write_bytes(b'{"sequence_id": "a", "log_entries": ["caf\xe9"]}\n')
    files["wrong_schema"].write_text('{"id": 1, "lines": ["x"]}\n')
    write_records(files["no_anomalies"], [SequenceRecord(sequence_id="n", label=0, log_entries=["ok"])])
    return files


@pytest.mark.parametrize("case", ["missing", "empty", "empty_jsonl", "bad_utf8", "wrong_schema", "no_anomalies"])
def test_bad_input_gives_one_line_error(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _bad_inputs(tmp_path)[case]
    rc = main(["--input", str(path), "--output-dir", str(tmp_path / "out"), "-q"])
    assert_one_line_error(rc, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_bad_input_in_a_real_process(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "data_gen/anomaly_classification_generator.py", "--input", str(tmp_path / "nope.csv")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_one_line_error(proc.returncode, proc.stderr)
    assert "nope.csv" in proc.stderr
