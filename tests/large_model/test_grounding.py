"""Loops and grounding of generated texts: the checks, the generation constraint, the evaluation figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from core.errors import DataError
from large_model.evaluate import evaluate_explainer, format_table, load_eval_rows
from large_model.grounding import has_loop, mentioned, ungrounded
from large_model.inference import Explainer, PrefixScorer
from tests.large_model.conftest import TOY_LABELS

HDFS = [
    "081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block blk_38865049064139660 terminating",
    "081109 203807 222 INFO dfs.DataNode$PacketResponder: Received block blk_-6952295868487656571 of size 67108864 "
    "from /10.251.39.64",
]


@pytest.mark.parametrize(
    ("text", "loops"),
    [
        ("consistent and consistent and consistent and consistent and consistent", True),
        ("the pool is full; the pool is full; the pool is full", True),
        ("the orders service failed because the orders service was slow", False),  # twice is no loop
        ("重启服务后检查重启服务后检查重启服务后检查", True),  # CJK: characters are the words
        ("", False),
    ],
)
def test_a_loop_is_four_words_three_times(text: str, loops: bool) -> None:
    assert has_loop(text) is loops


def test_names_and_numbers_not_in_the_input_are_ungrounded() -> None:
    source = "\n".join(HDFS)
    invented = (  # the explainer's answer to a real HDFS session before this check existed
        "Latency spike in the connection flow, caused by cache; the result login flow took "
        "199.999999999999191 ms against blk_38865049064139660"
    )
    assert ungrounded([invented], source) == ["199.999999999999191", "connection", "login"]
    grounded = (
        "dfs.DataNode$PacketResponder on 10.251.39.64 received blk_-6952295868487656571 (67,108,864 bytes), "
        "then the PacketResponder 1 for blk_38865049064139660 terminated"
    )
    assert ungrounded([grounded], source) == []
    assert {"dfs.DataNode", "10.251.39.64", "67,108,864"} <= set(mentioned(grounded))
    assert ungrounded(["the same service failed in the upstream flow"], source) == []  # no name in it
    assert ungrounded(["the [payments] service"], "ERROR [orders] timeout") == ["payments"]


def test_generation_refuses_a_token_that_makes_a_loop(tiny_base: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    scorer = PrefixScorer(None, tokenizer, "cpu")

    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    whole = ids("the pool is full, the pool is full, the pool is full")
    new, looping = whole[:-1], whole[-1]  # the last token completes the third "the pool is full"
    other = next(i for i in ids(" empty!") if i != looping)
    logits = torch.full((len(tokenizer),), -10.0)
    logits[looping], logits[other] = 5.0, 4.0  # the loop is the most likely continuation
    logits[ids("the pool is full, the pool is full")[-1]] = 5.0
    token, text = scorer._choose(logits, new, set())
    assert token == other and not has_loop(text)
    twice = ids("the pool is full, the pool is full")
    assert scorer._choose(logits, twice[:-1], set())[0] == twice[-1]  # twice is no loop yet


def test_evaluation_reports_grounding_and_loops(tiny_base: Path) -> None:
    explainer = Explainer.from_pretrained(tiny_base, device="cpu", dtype="fp32", labels=TOY_LABELS, max_new_tokens=96)
    rows: list[dict[str, Any]] = [
        {"sequence_id": "s0", "log_entries": [HDFS[0], "ERROR [orders] pool exhausted after 30 retries"],
         "category": TOY_LABELS.categories[0], "severity": TOY_LABELS.severities[0]},
        {"sequence_id": "s1", "log_entries": HDFS, "category": None, "severity": None},  # real: no taxonomy label
    ]  # fmt: skip
    report = evaluate_explainer(explainer, rows, progress=False)
    assert report["n"] == 2 and report["n_labeled"] == 1 and report["n_generated"] == 2
    assert "grounding rate" in format_table({"tuned": report})
    assert report["loop_rate"] == 0.0  # the untrained model writes noise, never a loop
    assert 0.0 <= report["grounding_rate"] <= 1.0
    assert len(report["not_grounded"]) == round((1 - report["grounding_rate"]) * len(rows))
    for entry in report["not_grounded"]:
        assert entry["ungrounded"] and entry["sequence_id"] in {"s0", "s1"}


def test_real_records_without_labels_are_evaluated_for_their_texts(tmp_path: Path) -> None:
    data = tmp_path / "real.jsonl"
    data.write_text(
        json.dumps({"sequence_id": "r1", "log_entries": HDFS, "source": "HDFS"}) + "\n"
        + json.dumps({"sequence_id": "r2", "log_entries": HDFS, "category": "timeout"}) + "\n",
        encoding="utf-8",
    )  # fmt: skip
    with pytest.raises(DataError, match="both category and severity, or neither"):
        load_eval_rows(data, TOY_LABELS)
    data.write_text(json.dumps({"sequence_id": "r1", "log_entries": HDFS}) + "\n", encoding="utf-8")
    assert load_eval_rows(data, TOY_LABELS)[0]["category"] is None
