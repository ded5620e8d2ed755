"""Loops and grounding of generated texts: the checks, the generation constraint, the evaluation figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from core.errors import DataError
from large_model.answer import choose_category
from large_model.evaluate import evaluate_explainer, format_table, load_eval_rows
from large_model.grounding import Grounding, cut_to_sentence, has_loop, mentioned, ungrounded
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


def _rows() -> list[dict[str, Any]]:
    return [
        {"sequence_id": "s0", "log_entries": [HDFS[0], "ERROR [orders] pool exhausted after 30 retries"],
         "category": TOY_LABELS.categories[0], "severity": TOY_LABELS.severities[0]},
        {"sequence_id": "s1", "log_entries": HDFS, "category": None, "severity": None, "source": "HDFS"},
        {"sequence_id": "s2", "log_entries": ["RAS KERNEL FATAL data TLB error interrupt", "RAS APP FATAL "
         "ciod: failed to read message prefix on control stream (CioStream socket to 172.16.96.116:33569"],
         "category": None, "severity": None, "source": "BGL"},
    ]  # fmt: skip


def test_evaluation_reports_grounding_and_loops(tiny_base: Path) -> None:
    """The untrained model writes noise: free, it names numbers and identifiers the lines lack; constrained
    (the default), every summary and root cause copies what it names from the input."""
    explainer = Explainer.from_pretrained(tiny_base, device="cpu", dtype="fp32", labels=TOY_LABELS, max_new_tokens=96)
    rows = _rows()
    report = evaluate_explainer(explainer, rows, progress=False)
    assert report["n"] == 3 and report["n_labeled"] == 1 and report["n_generated"] == 3
    table = format_table({"tuned": report})
    assert "grounding rate" in table and "by source" in table
    assert report["loop_rate"] == 0.0  # the untrained model writes noise, never a loop
    assert report["grounding_rate"] == 1.0 and report["not_grounded"] == []
    assert set(report["by_source"]) == {"synthetic", "HDFS", "BGL"}
    assert report["by_source"]["HDFS"]["grounding_rate"] == 1.0 and report["by_source"]["HDFS"]["n"] == 1


def _inventor(tiny_base: Path, favourites: list[int]) -> Any:
    """The tiny base made to prefer ``favourites`` in that order whatever it reads: its final norm zeroed
    and a head whose bias ranks those tokens first (a real model, forced to invent)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).eval()
    with torch.no_grad():
        model.model.norm.weight.zero_()
        head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
        head.weight.zero_()
        head.bias.copy_(-torch.arange(model.config.vocab_size, dtype=torch.float32) / model.config.vocab_size)
        for rank, token in enumerate(favourites):
            head.bias[token] = 10.0 - rank
    model.lm_head = head
    return model


def test_generation_copies_names_and_numbers_from_the_input(tiny_base: Path) -> None:
    """A model that would write "7777..." writes no such number when the input holds none: with grounding
    every field it writes names only what the input shows; without, it invents."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    seven = list(tokenizer("7", add_special_tokens=False)["input_ids"])
    word = list(tokenizer(" and", add_special_tokens=False)["input_ids"])
    assert len(seven) == 1 and len(word) == 1
    scorer = PrefixScorer(_inventor(tiny_base, [seven[0], word[0]]), tokenizer, "cpu")
    source = "ERROR [orders] pool exhausted after 30 retries"
    check = Grounding(source)
    prompt = 'The answer: {"summary": "'
    free, _, _ = scorer.generate_string(prompt, 40, [])
    assert "77" in free and check.missing(free)
    scorer.reset()
    grounded, closed, used = scorer.generate_string(prompt, 40, [], grounding=check)
    assert grounded and not check.missing(grounded) and "77" not in grounded
    assert used <= 40 and isinstance(closed, bool)


def test_generation_refuses_a_token_that_names_what_the_input_lacks(tiny_base: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    scorer = PrefixScorer(None, tokenizer, "cpu")
    check = Grounding("\n".join(HDFS))
    whole = list(tokenizer("the block blk_99999 failed", add_special_tokens=False)["input_ids"])
    # the first token after which the text names something the lines lack
    cut = next(k for k in range(1, len(whole) + 1) if check.missing(tokenizer.decode(whole[:k])))
    new, bad = whole[: cut - 1], whole[cut - 1]
    fine = list(tokenizer(tokenizer.decode(new) + " terminating", add_special_tokens=False)["input_ids"])
    good = fine[len(new)] if fine[: len(new)] == new else None
    assert good is not None and good != bad
    logits = torch.full((len(tokenizer),), -10.0)
    logits[bad], logits[good] = 5.0, 4.0  # the invention is the most likely continuation
    assert scorer._choose(logits, new, set())[0] == bad  # without the check it is taken
    choice = scorer._choose(logits, new, set(), check, check.missing(tokenizer.decode(new)))
    assert choice is not None and choice[0] == good and not check.missing(choice[1])


def test_grounding_copies_partial_names_and_cuts_at_a_sentence_end() -> None:
    check = Grounding("\n".join(HDFS))
    assert not check.missing("blk_388650")  # a name being copied: a prefix of one in the input
    assert check.missing("blk_3886509") == {"blk_3886509"}
    assert check.adds_ungrounded("took 4242 ms", set()) and not check.adds_ungrounded("took 4242 ms", {"4242"})
    assert cut_to_sentence("The responder ended. Then the blk_") == "The responder ended."
    assert cut_to_sentence("no end here") == "no end here"


@pytest.mark.parametrize(
    ("scores", "threshold", "expected"),
    [([0.0, -5.0, -5.0], None, "a"), ([0.0, -0.1, -0.2], 0.5, "other"), ([0.0, -0.1, -0.2], 0.3, "a")],
)
def test_the_category_is_other_below_the_calibrated_confidence(
    scores: list[float], threshold: float | None, expected: str
) -> None:
    category, confidence = choose_category(("a", "b", "c"), scores, threshold)
    shares = torch.softmax(torch.tensor(scores, dtype=torch.float64), 0)
    assert category == expected and confidence == pytest.approx(float(shares.max()))


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
