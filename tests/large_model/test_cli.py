"""The explainer's commands, run in process through the ``logtriage`` command's main."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from large_model import cli
from large_model.train import TrainResult
from large_model.train_args import TrainLargeArgs, args_from_namespace
from logtriage.cli import main
from tests.large_model.conftest import TOY_LABELS


@pytest.fixture(scope="module")
def label_model_dir(label_trained_model: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, tokenizer = label_trained_model
    folder = tmp_path_factory.mktemp("labelmodel")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "labels.json").write_text(json.dumps(TOY_LABELS.to_dict()))
    return folder


def test_add_commands_registers_three_handlers() -> None:
    parser = argparse.ArgumentParser()
    handlers = cli.add_commands(parser.add_subparsers(dest="command"))
    assert set(handlers) == {"train-large", "explain", "evaluate-large"}
    ns = parser.parse_args(["train-large"])
    assert ns.handler is handlers["train-large"]
    assert args_from_namespace(ns) == TrainLargeArgs()  # the flags' defaults are the dataclass's
    quick = args_from_namespace(parser.parse_args(["train-large", "--profile", "quick", "--max-steps", "5"]))
    assert quick == TrainLargeArgs.for_profile("quick", max_steps=5)  # the profile's budgets, the flag wins
    assert quick.max_steps == 5 and quick.train_limit != TrainLargeArgs().train_limit and quick.profile == "quick"
    # a flag given with the full recipe's value still wins over the profile's budget
    same = args_from_namespace(parser.parse_args(["train-large", "--profile", "quick", "--max-steps", "640"]))
    assert same.max_steps == 640 and same.train_limit == TrainLargeArgs.for_profile("quick").train_limit
    flags = args_from_namespace(parser.parse_args(["train-large", "--no-quant", "--no-real", "--no-evidence"]))
    assert (flags.quantize, flags.use_real, flags.evidence) == (False, False, False)


def test_explain_prints_one_json_explanation(label_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [  # a sequence of the toy model's training distribution: the test is of the CLI, not of the toy model
        "INFO auth handling request 7",
        "WARN auth access denied for user 4711",
        "ERROR auth 403 forbidden: missing role",
        "INFO auth request done",
    ]
    argv = ["explain", "--model", str(label_model_dir), "--device", "cpu", "--dtype", "fp32", "--backend", "inprocess"]
    for line in lines:
        argv += ["--line", line]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip())
    assert out["category"] == "permission_error" and out["severity"] == "low"
    assert out["suggested_response"] and out["model"] and out["base"]


def test_explain_reads_plain_log_files_with_bad_bytes(
    label_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_file = tmp_path / "seq.log"
    log_file.write_bytes(
        b"INFO orders handling request 12 \xff\n\nERROR orders query failed: deadlock detected on table orders\n"
        b"ERROR orders db pool error\nINFO orders request done\n"
    )
    argv = ["explain", "--model", str(label_model_dir), "--input", str(log_file), "--device", "cpu"]
    assert main([*argv, "--dtype", "fp32", "--backend", "inprocess", "--max-new-tokens", "8"]) == 0
    assert json.loads(capsys.readouterr().out)["category"] == "database_error"


def test_errors_are_one_line_exit_2(label_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.log"
    empty.write_text("\n\n")
    argv = [
        "explain",
        "--model",
        str(label_model_dir),
        "--input",
        str(empty),
        "--device",
        "cpu",
        "--backend",
        "inprocess",
    ]
    assert main(argv) == 2
    assert "empty log sequence" in capsys.readouterr().err
    assert main(["explain", "--model", str(tmp_path / "nothing"), "--backend", "inprocess"]) == 2


def test_evaluate_large_reports_tuned_and_base(
    trained: TrainResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "eval.json"
    argv = ["evaluate-large", "--model", str(trained.output), "--limit", "3", "--compare-base", "--device", "cpu"]
    assert main([*argv, "--dtype", "fp32", "--max-new-tokens", "2", "--report", str(report), "--no-progress"]) == 0
    data = json.loads(report.read_text())
    assert set(data["reports"]) == {"tuned", "base"}
    tuned = data["reports"]["tuned"]
    for key in (
        "category_accuracy",
        "category_macro_f1",
        "severity_accuracy",
        "schema_valid_rate",
        "rouge_l_suggested_response",
    ):
        assert 0.0 <= tuned[key] <= 1.0
    assert tuned["n"] == 3 and sum(map(sum, tuned["category_confusion"]["matrix"])) == 3
    # 2 tokens cannot hold three closed fields: every answer is listed as generated, never complete JSON
    assert tuned["schema_valid_rate"] == 0.0 and len(tuned["not_schema_valid"]) == 3
    for bad in tuned["not_schema_valid"]:
        assert bad["generated"].startswith('{"category": ') and not bad["generated"].endswith('"}')
    assert "category accuracy" in capsys.readouterr().out


def test_missing_explainer_folder_is_an_error_not_the_base(tmp_path: Path) -> None:
    from core.errors import ModelError
    from large_model.loader import load_explainer

    with pytest.raises(ModelError, match=r"no such folder: .*absent"):
        load_explainer(tmp_path / "absent", backend="inprocess")
    with pytest.raises(ModelError, match="no such folder: artifacts/not-there"):
        load_explainer("artifacts/not-there", backend="inprocess")
