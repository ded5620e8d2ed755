"""Prompts, the Explanation schema, and bad input: clear errors or documented truncation, never a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.errors import DataError
from large_model import prompts
from large_model.answer import build_explanation
from large_model.encoding import PromptEncoder
from large_model.inference import Explainer
from large_model.schema import Explanation, LabelSet
from tests.large_model.conftest import TOY_LABELS
from tests.large_model.tiny import make_tiny_base


@pytest.fixture(scope="module")
def explainer(tiny_base: Path) -> Explainer:
    return Explainer.from_pretrained(tiny_base, device="cpu", dtype="fp32", labels=TOY_LABELS, max_new_tokens=4)


def _valid(**changes: str) -> dict[str, str]:
    data = {
        "category": "timeout",
        "severity": "high",
        "summary": "s",
        "root_cause": "r",
        "suggested_response": "do x",
        "model": "m",
        "base": "b",
    }
    data.update(changes)
    return data


def test_explanation_schema_validates() -> None:
    ok = Explanation(**_valid(summary="  padded  "))
    assert ok.summary == "padded"
    with pytest.raises(ValidationError):
        Explanation(**_valid(root_cause=" "))
    with pytest.raises(ValidationError):
        Explanation(**{**_valid(), "extra": "no"})
    missing = _valid()
    del missing["suggested_response"]
    with pytest.raises(ValidationError):
        Explanation(**missing)


def test_label_set_rejects_bad_labels(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        LabelSet(("a", "a"), ("low",))
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"categories": {"timeout": "desc", "retry_storm": "d"}, "severities": ["low"]}))
    assert LabelSet.from_json(path).categories == ("timeout", "retry_storm")
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"labels\.json"):
        LabelSet.from_json(path)


def test_target_and_prefixes_agree() -> None:
    target = prompts.format_target("timeout", "high", "s", "r", "q")
    assert target.startswith(prompts.category_prefix() + "timeout" + prompts.LABEL_END)
    assert target.startswith(prompts.severity_prefix("timeout") + "high" + prompts.LABEL_END)
    assert target.startswith(prompts.text_prefix("timeout", "high"))
    assert json.loads(target)["suggested_response"] == "q"


def test_field_strings_joints_and_assembly() -> None:
    # the model's raw string content: escapes kept, the first unescaped quote ends it
    assert prompts.string_end('a \\"quoted\\" sum", "root') == 16
    assert prompts.string_end("no end \\") == -1 and prompts.string_end('\\\\"') == 2
    assert prompts.decode_string('a \\"q\\" \\u4e2d\\n') == 'a "q" 中\n'
    assert prompts.decode_string("bad \\x") is None and prompts.decode_string("tab\tin") is None
    # joints: what format_target writes between the fields
    target = prompts.format_target("timeout", "high", 'a "q" s', "cause", "resp")
    raws = ['a \\"q\\" s', "cause", "resp"]
    for k in range(3):
        assert target.startswith(prompts.field_prefix("timeout", "high", raws[:k]) + raws[k] + '"')
    assert prompts.field_prefix("timeout", "high", ["dangling \\"]).endswith('dangling ", "root_cause": "')
    with pytest.raises(ValueError):
        prompts.field_prefix("timeout", "high", raws)
    assert prompts.assemble_answer("timeout", "high", raws, [True] * 3) == target
    open_answer = prompts.assemble_answer("timeout", "high", ["s", "cau"], [True, False])
    assert open_answer.endswith('"root_cause": "cau')
    with pytest.raises(json.JSONDecodeError):
        json.loads(open_answer)


def test_build_explanation_marks_what_the_model_did_not_write() -> None:
    explanation, complete = build_explanation("timeout", "high", ["s", "c", "r"], [True] * 3, "en", "m", "b")
    assert complete and (explanation.summary, explanation.root_cause, explanation.suggested_response) == ("s", "c", "r")
    # root cause cut by its budget: kept as far as it got, not schema-valid; the response never came
    explanation, complete = build_explanation("timeout", "high", ["short", "cau"], [True, False], "en", "m", "b")
    assert not complete and explanation.summary == "short" and explanation.root_cause == "cau"
    assert explanation.suggested_response  # filled in
    for raws in (["s", "  ", "r"], ["s", "bad \\x", "r"]):  # empty, invalid JSON escape
        assert not build_explanation("timeout", "high", raws, [True] * 3, "zh", "m", "b")[1]
    explanation, complete = build_explanation("timeout", "high", [], [], "zh", "m", "b")
    assert not complete and "timeout" in explanation.summary
    explanation, _ = build_explanation("other", "medium", [], [], "en", "m", "b")  # outside the taxonomy
    assert explanation.summary.startswith("An anomaly unlike the known categories")
    assert "不属于已知类别" in build_explanation("other", "low", [], [], "zh", "m", "b")[0].summary


def test_clean_lines() -> None:
    assert prompts.clean_lines(["a\x00b", b"caf\xc3\xa9 \xff\xfe", "  ", "x\r\ny"]) == [
        "ab",
        "café \ufffd\ufffd",
        "x",
        "y",
    ]
    with pytest.raises(DataError, match="empty"):
        prompts.clean_lines([])
    with pytest.raises(DataError, match="empty"):
        prompts.clean_lines(["   ", ""])
    with pytest.raises(DataError, match="not one string"):
        prompts.clean_lines("one string")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="line 2"):
        prompts.clean_lines(["ok", 3])  # type: ignore[list-item]


def test_fit_lines_keeps_head_and_tail() -> None:
    lines = [f"line {i}" for i in range(1000)]
    kept, omitted = prompts.fit_lines(lines, 100, lambda s: len(s.split()))
    assert omitted > 0 and kept[0] == "line 0" and kept[-1] == "line 999"
    marker = [k for k in kept if k.startswith("...")]
    assert marker == [f"... [{omitted} lines omitted] ..."]
    assert len(kept) - 1 + omitted == 1000
    assert sum(len(k.split()) + 1 for k in kept) <= 100
    same, none = prompts.fit_lines(lines[:5], 100, lambda s: len(s.split()))
    assert same == lines[:5] and none == 0
    long_line, _ = prompts.fit_lines(["x" * 100_000], 10_000, len)
    assert len(long_line[0]) == prompts.MAX_LINE_CHARS and long_line[0].endswith("…")


def test_empty_sequence_is_a_data_error(explainer: Explainer) -> None:
    with pytest.raises(DataError, match="empty"):
        explainer.explain([])
    with pytest.raises(DataError, match="language"):
        explainer.explain(["x"], lang="fr")


def test_ten_thousand_lines_are_truncated_not_a_crash(explainer: Explainer) -> None:
    lines = [f"2024-01-01 INFO orders request {i} ok" for i in range(10_000)]
    result = explainer.explain_detailed(lines, generate=False)
    assert result.omitted_lines > 9_000
    assert result.explanation.category in TOY_LABELS.categories


def test_invalid_utf8_and_giant_lines_are_cleaned(explainer: Explainer) -> None:
    result = explainer.explain_detailed([b"ERROR \xff\xfe\xfd orders", "y" * 1_000_000], "zh", generate=False)
    assert isinstance(result.explanation, Explanation)


def test_prompt_longer_than_the_context_is_a_clear_error(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    folder = make_tiny_base(tmp_path / "short", max_positions=260)
    with pytest.raises(Exception, match="context"):
        Explainer.from_pretrained(folder, device="cpu", dtype="fp32", labels=TOY_LABELS)
    small = Explainer.from_pretrained(folder, device="cpu", dtype="fp32", labels=TOY_LABELS, max_new_tokens=16)
    assert small.max_prompt_tokens == 260 - 16 - 48
    result = small.explain_detailed([f"ERROR orders line {i}" for i in range(200)], generate=False)
    assert result.omitted_lines > 0  # fitted into the small context
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoder = PromptEncoder(tokenizer, TOY_LABELS, max_prompt_tokens=40)
    with pytest.raises(DataError, match="does not fit"):
        encoder.messages(["x"], "en")
    with pytest.raises(DataError, match="does not fit"):
        small.explain(["x"], context={f"k{i}": "v" * 200 for i in range(12)})


def test_classification_figures() -> None:
    from large_model.evaluate import classification_figures, rouge_l

    figs = classification_figures(["a", "a", "b", "c"], ["a", "b", "b", "c"], ["a", "b", "c", "d"])
    assert figs["accuracy"] == 0.75
    assert figs["confusion_matrix"][0] == [1, 1, 0, 0]
    assert abs(figs["macro_f1"] - (2 / 3 + 2 / 3 + 1) / 3) < 1e-9  # "d" is absent from both sides
    assert rouge_l(["扩容 订单 服务"], ["扩容订单服务"]) == 1.0  # CJK counts per character
    assert rouge_l(["restart the pod"], ["restart the pod now"]) > 0.8


def test_relative_timestamps() -> None:
    lines = [
        "2024-05-26 02:07:30.790 INFO [orders] start",
        "May 26 02:07:30 pg-01 database[1]: INFO write",
        "2024/05/26 02:07:33,631 payments INFO ok",
        "no timestamp here",
        "2024-05-26T02:07:29.000Z [gateway] INFO: earlier",
    ]
    assert prompts.relative_timestamps(lines) == [
        "+0ms INFO [orders] start",
        "+0s pg-01 database[1]: INFO write",  # whole seconds: compared as whole seconds
        "+2841ms payments INFO ok",
        "no timestamp here",
        "-1790ms [gateway] INFO: earlier",  # out of order shows as a negative offset
    ]
    assert prompts.relative_timestamps(["2024-13-45 99:99:99 bad"]) == ["2024-13-45 99:99:99 bad"]


def test_hex_ids_are_shortened() -> None:
    line = "request_id=req-9920fbc02a trace_id=72ff3729d5e05d8d pi_19433a82ea offset=924347 deadbeefcafe"
    assert prompts.shorten_ids(line) == "request_id=req-9920 trace_id=72ff pi_1943 offset=924347 deadbeefcafe"


def test_label_tokens_get_the_label_weight(tiny_base: Path, toy_split: tuple[list, list]) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    encoder = PromptEncoder(tokenizer, TOY_LABELS, 512)
    example = toy_split[0][0]
    ids, labels, weights = encoder.encode_weighted(example, 512, label_weight=3.0)
    heavy = tokenizer.decode([i for i, w in zip(ids, weights, strict=True) if w == 3.0])
    assert example.category in heavy and example.severity in heavy
    assert all(w == 0.0 for w, lab in zip(weights, labels, strict=True) if lab == -100)
    assert sum(1 for w in weights if w > 0) == sum(1 for lab in labels if lab != -100)


def test_labels_only_examples_end_after_the_severity(tiny_base: Path, toy_split: tuple[list, list]) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    encoder = PromptEncoder(tokenizer, TOY_LABELS, 512)
    example = toy_split[0][0]
    ids, labels, _ = encoder.encode_weighted(example, 512, label_weight=3.0, labels_only=True)
    answer = tokenizer.decode([i for i, lab in zip(ids, labels, strict=True) if lab != -100])
    assert answer == prompts.labels_target(example.category, example.severity)
    assert example.target.startswith(answer)
    full_ids, _, _ = encoder.encode_weighted(example, 512)
    assert len(ids) < len(full_ids) and full_ids[: len(ids)] == ids


def test_rouge_fallback_matches_rouge_score() -> None:
    from large_model.evaluate import _lcs_f1, _Tokenizer, rouge_l

    tok = _Tokenizer()
    for pred, ref in [
        ("restart the pod", "restart the pod now"),
        ("a b c d e", "e d c b a"),
        ("扩容 订单", "扩容订单服务"),
    ]:
        assert abs(_lcs_f1(tok.tokenize(pred), tok.tokenize(ref)) - rouge_l([pred], [ref])) < 1e-9


def test_repeat_banned_stops_loops_and_nothing_else() -> None:
    from large_model.inference import repeat_banned

    loop = [5, 6, 7, 5, 6]
    assert repeat_banned(loop, 3) == [7]  # 5 6 7 would come again
    assert repeat_banned(loop, 4) == []  # 6 7 5 6 -> no 4-gram begun twice yet
    assert repeat_banned([1, 2, 1, 3, 1], 2) == [2, 3] and repeat_banned([1, 2], 1) == [1, 2]
    assert repeat_banned([1, 2], 4) == [] and repeat_banned([], 12) == []


def test_repetition_penalty_lowers_the_tokens_already_written() -> None:
    import torch

    from large_model.inference import penalize_repeats

    logits = torch.tensor([2.0, -1.0, 0.5, 3.0])
    out = penalize_repeats(logits, [0, 1, 1], 2.0)
    assert out.tolist() == [1.0, -2.0, 0.5, 3.0]  # positive halved, negative doubled, the others kept
    assert logits.tolist() == [2.0, -1.0, 0.5, 3.0]  # the input is left as it was
    assert int(torch.argmax(penalize_repeats(torch.tensor([3.0, 2.0]), [0], 1.3))) == 0  # 3/1.3 still wins
    assert int(torch.argmax(penalize_repeats(torch.tensor([3.0, 2.0]), [0], 2.0))) == 1
    assert penalize_repeats(logits, [], 2.0) is logits and penalize_repeats(logits, [0], 1.0) is logits


def test_valid_string_prefix() -> None:
    for ok in ("plain", 'esc \\" \\\\ \\n \\u4e2d', "pending \\", "pending \\u4e", 'closed" then \\_ junk', ""):
        assert prompts.valid_string_prefix(ok), ok
    for bad in ("pg_stat\\_activity", "raw\nnewline", "\\u12g4", "tab\there"):
        assert not prompts.valid_string_prefix(bad), bad


def test_generation_never_chooses_an_invalid_escape(tiny_base: Path) -> None:
    import torch

    from large_model.inference import PrefixScorer

    explainer = Explainer.from_pretrained(tiny_base, device="cpu", dtype="fp32", labels=TOY_LABELS)
    tok = explainer.tokenizer
    scorer = PrefixScorer(explainer.model, tok, "cpu")
    new = tok("pg\\", add_special_tokens=False)["input_ids"]
    underscore, letter_n = (tok(t, add_special_tokens=False)["input_ids"][0] for t in ("_", "n"))
    logits = torch.zeros(len(tok))
    logits[underscore], logits[letter_n] = 5.0, 4.0  # the model prefers "\_": not JSON
    assert scorer._choose(logits, new, set())[0] == letter_n
    logits[letter_n] = -1.0
    choice = scorer._choose(logits, new, set())[0]
    assert choice != underscore and prompts.valid_string_prefix(tok.decode([*new, choice]))
    assert scorer._choose(logits, new, {underscore})[0] == underscore  # a stop token ends the string


def test_generate_fields_retries_an_open_field_once_within_the_budget() -> None:
    """A field left open is written once more by ``retry``; its text replaces the open one only when the
    retry closes it; the retry's tokens count against the total; no retry once the total is spent."""
    from large_model.answer import generate_fields

    calls: list[tuple[str, str, int]] = []

    def write(answer: str, budget: int, key: str) -> tuple[str, bool, int]:
        assert answer.rsplit('"', 3)[-3] == key
        calls.append(("write", key, budget))
        looping = answer.endswith('"root_cause": "')  # the second field loops until its budget
        return ("loop loop" if looping else "fine", not looping, budget if looping else 5)

    def retry(answer: str, budget: int, key: str) -> tuple[str, bool, int]:
        calls.append(("retry", key, budget))
        return "closed on retry", True, 7

    raws, closed = generate_fields(write, "timeout", "high", 1000, retry)
    assert raws == ["fine", "closed on retry", "fine"] and closed == [True, True, True]
    assert [c[:2] for c in calls] == [("write", "summary"), ("write", "root_cause"), ("retry", "root_cause"),
                                      ("write", "suggested_response")]  # fmt: skip
    calls.clear()
    budget = 5 + prompts.FIELD_TOKENS["root_cause"]  # spent by the summary and the looping field
    raws, closed = generate_fields(write, "timeout", "high", budget, retry)
    assert [c[0] for c in calls] == ["write", "write"] and closed == [True, False]  # nothing left to retry with
    raws, closed = generate_fields(write, "timeout", "high", 1000)  # no retry given: the field stays open
    assert closed == [True, False, True] and raws[1] == "loop loop"
