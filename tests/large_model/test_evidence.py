"""The flow comparison (large_model.evidence): real generated runs, real normalizer, real prompts; no mocks."""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from core.errors import DataError, ModelError
from core.io import write_records
from core.schema import SequenceRecord
from data_gen.anomaly_classification_generator import REFERENCE_FILE as GENERATOR_REFERENCE_FILE
from data_gen.anomaly_classification_generator import classification_sample, main, reference_records
from data_gen.log_sequence_generator import GeneratorConfig, generate_sequences
from large_model import evidence, prompts
from large_model.encoding import PromptEncoder, load_examples
from large_model.evidence import FLOW_PROFILE_FILE, REFERENCE_FILE, Finding, FlowProfile, merge_variants
from large_model.inference import Explainer
from large_model.remote import OpenAIExplainer
from large_model.schema import LabelSet
from large_model.train import run_training
from large_model.train_args import TrainLargeArgs
from large_model.train_data import encode_examples, reference_profile
from tests.large_model.conftest import TOY_LABELS

LANGS = ("en", "zh")
_MS = re.compile(r"(?<![\d.:])(\d+)( ?ms)\b")


@pytest.fixture(scope="module")
def reference() -> list[SequenceRecord]:
    """Normal runs in both languages, as the data generator writes them (its default count, 600)."""
    return reference_records(600, "both", "hard", 0.05, seed=11, progress=False)


@pytest.fixture(scope="module")
def profile(reference: list[SequenceRecord]) -> FlowProfile:
    return FlowProfile.build([r.log_entries for r in reference])


@pytest.fixture(scope="module")
def skeletons() -> dict[str, list[list[str]]]:
    """Fresh normal runs on the skeleton path (no rare path, no noise), per language."""
    out = {}
    for lang in LANGS:
        config = GeneratorConfig(
            num_sequences=12, anomaly_ratio=0.0, difficulty="easy", noise=0.0, lang=lang, seed=3, id_prefix="t"
        )
        out[lang] = [list(r.log_entries) for r in generate_sequences(config, progress=False)]
    return out


def _run_with_inner_steps(profile: FlowProfile, runs: list[list[str]], need: int = 4) -> list[str]:
    """The first run whose flow has at least ``need`` required steps between its first and last line."""
    for run in runs:
        group = profile.group_for(profile.line_keys(run))
        if group is not None and len(group.required) >= need + 2:
            return run
    raise AssertionError("no run with enough required steps")


def _required_inner(profile: FlowProfile, run: list[str], accept: Callable[[str], bool] = lambda k: True) -> list[int]:
    """Indices of the run's lines that are required steps of its flow (not the first or last), keyed exactly."""
    keys = profile.line_keys(run)
    group = profile.group_for(keys)
    assert group is not None
    return [i for i, (k, _) in enumerate(keys[1:-1], start=1) if k in group.required and accept(k)]


def _key(profile: FlowProfile, line: str) -> str:
    return profile.line_keys([line])[0][0]


def test_profile_covers_the_flows_of_both_languages(profile: FlowProfile) -> None:
    assert profile.runs == 600
    assert profile.usable_groups == len(profile.groups) == 12  # 6 flows x 2 languages
    firsts = set(profile.groups)
    assert any("received POST /api/v1/orders" in k for k in firsts)
    assert any("收到请求 POST /api/v1/orders" in k for k in firsts)
    for group in profile.groups.values():
        assert group.runs >= 5 and len(group.required) >= 3
        assert group.required[0] in profile.groups  # the flow's first line comes first


@pytest.mark.parametrize("lang", LANGS)
def test_normal_run_matches(profile: FlowProfile, skeletons: dict[str, list[list[str]]], lang: str) -> None:
    for run in skeletons[lang][:6]:
        assert profile.compare(run, lang) == [Finding("matches", evidence.WORDING[lang]["matches"])]


@pytest.mark.parametrize("lang", LANGS)
def test_removed_step_is_missing(profile: FlowProfile, skeletons: dict[str, list[list[str]]], lang: str) -> None:
    run = _run_with_inner_steps(profile, skeletons[lang])
    index = _required_inner(profile, run)[1]
    gone = _key(profile, run[index])
    findings = profile.compare(run[:index] + run[index + 1 :], lang)
    prefix = "missing: " if lang == "en" else "缺少："
    assert [f.kind for f in findings] == ["missing"]
    assert findings[0].text.startswith(prefix) and findings[0].text[len(prefix) :].rstrip("…") in gone


@pytest.mark.parametrize("lang", LANGS)
def test_swapped_steps_are_out_of_order(profile: FlowProfile, skeletons: dict[str, list[list[str]]], lang: str) -> None:
    run = _run_with_inner_steps(profile, skeletons[lang])
    a, b = _required_inner(profile, run)[1:3]
    swapped = list(run)
    swapped[a], swapped[b] = run[b], run[a]
    findings = profile.compare(swapped, lang)
    assert [f.kind for f in findings] == ["out_of_order"]
    text = findings[0].text
    first, second = _key(profile, run[b])[:40], _key(profile, run[a])[:40]
    assert first in text and second in text and text.index(first) < text.index(second)  # "b came before a"
    assert text.startswith("out of order: " if lang == "en" else "顺序异常：")


@pytest.mark.parametrize("lang", LANGS)
def test_line_five_times_is_repeated(profile: FlowProfile, skeletons: dict[str, list[list[str]]], lang: str) -> None:
    run = _run_with_inner_steps(profile, skeletons[lang])
    index = _required_inner(profile, run)[1]
    stormy = run[:index] + [run[index]] * 5 + run[index + 1 :]
    findings = profile.compare(stormy, lang)
    assert [f.kind for f in findings] == ["repeated"]
    expected = "repeated 5 times (normal runs: at most 1)" if lang == "en" else "重复 5 次（正常运行最多 1 次）"
    assert findings[0].text.startswith(expected)
    assert _key(profile, run[index])[:40] in findings[0].text


@pytest.mark.parametrize("lang", LANGS)
def test_thousand_times_slower_step(profile: FlowProfile, skeletons: dict[str, list[list[str]]], lang: str) -> None:
    run = _run_with_inner_steps(profile, skeletons[lang])
    index = _required_inner(profile, run, lambda k: k.count("<dur>") == 1)[0]
    slow = list(run)
    slow[index] = _MS.sub(lambda m: f"{int(m.group(1)) * 1000 + 1}{m.group(2)}", run[index], count=1)
    assert slow[index] != run[index]
    findings = profile.compare(slow, lang)
    kinds = [f.kind for f in findings]
    assert kinds[0] == "slower" and set(kinds) == {"slower"}  # the gateway's total may be slower too
    exponents = re.search(r"1e(\d+) ms[,，]\s?\D*1e(\d+) ms", findings[0].text)
    assert exponents is not None and int(exponents.group(1)) - int(exponents.group(2)) >= 2
    assert findings[0].text.startswith("slower than any normal run: " if lang == "en" else "比所有正常运行都慢：")


def test_generated_structural_anomalies_get_their_evidence(profile: FlowProfile) -> None:
    expected = {"missing_step": "missing", "out_of_order": "out_of_order", "retry_storm": "repeated"}
    expected["latency_spike"] = "slower"
    for lang in LANGS:
        config = GeneratorConfig(num_sequences=80, anomaly_ratio=1.0, lang=lang, seed=21, id_prefix="s")
        for record in generate_sequences(config, progress=False):
            kinds = {f.kind for f in profile.compare(record.log_entries, lang)}
            if record.anomaly_type in expected:
                assert expected[record.anomaly_type] in kinds, (record.anomaly_type, lang, kinds)
            elif record.anomaly_type != "timeout":  # a timeout can cut the flow before anything slow
                assert kinds & {"missing", "unseen"}, (record.anomaly_type, lang, kinds)


def test_findings_are_bounded(profile: FlowProfile, skeletons: dict[str, list[list[str]]]) -> None:
    run = _run_with_inner_steps(profile, skeletons["en"])
    junk = [f"strange event number{i} happened here {'x' * 300}" for i in range(20)]
    findings = profile.compare([run[0], *junk, *[run[2]] * 9], "en")
    assert len(findings) <= evidence.MAX_FINDINGS
    assert {f.kind for f in findings} == {"missing", "repeated", "unseen"}
    assert sum(f.kind == "unseen" for f in findings) <= 2
    assert any(re.fullmatch(r"\d+ more required steps missing", f.text) for f in findings)
    assert all(len(f.text) < 200 for f in findings)
    value = profile.context_for([run[0], *junk], "en")["compared with normal runs"]
    assert len(value) <= prompts.MAX_EVIDENCE_CHARS and "; " in value


def test_round_trip_gives_identical_findings(
    profile: FlowProfile, skeletons: dict[str, list[list[str]]], tmp_path: Path
) -> None:
    saved = profile.save(tmp_path)
    assert saved == tmp_path / FLOW_PROFILE_FILE
    loaded = FlowProfile.load(tmp_path)
    assert loaded.to_dict() == profile.to_dict()
    assert json.loads(saved.read_text(encoding="utf-8")) == profile.to_dict()
    config = GeneratorConfig(num_sequences=40, anomaly_ratio=1.0, lang="zh", seed=2)
    anomalies = generate_sequences(config, progress=False)
    for lines in [*skeletons["en"], *skeletons["zh"], *(r.log_entries for r in anomalies)]:
        for lang in LANGS:
            assert loaded.compare(lines, lang) == profile.compare(lines, lang)


def test_unknown_flow_and_thin_flows_give_no_evidence(profile: FlowProfile) -> None:
    lines = ["kernel: eth0 link up", "sshd[22]: accepted publickey for root"]
    assert profile.compare(lines, "en") == [Finding("no_profile", "no normal runs of this flow to compare with")]
    assert profile.compare(lines, "zh") == [Finding("no_profile", "没有该流程的正常运行可供对比")]
    thin = FlowProfile.build([lines] * 4)  # fewer than min_runs (5)
    assert thin.usable_groups == 0 and thin.compare(lines)[0].kind == "no_profile"
    enough = FlowProfile.build([lines] * 5)
    assert enough.compare(lines)[0].kind == "matches"
    assert enough.compare([lines[0]])[0].text == "missing: sshd[<num>]: accepted publickey for root"


def test_bad_input(profile: FlowProfile, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="empty"):
        profile.compare([])
    with pytest.raises(DataError, match="empty"):
        profile.compare(["   ", ""])
    with pytest.raises(DataError, match="list of lines"):
        profile.compare("one string")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="not text"):
        profile.compare([None])  # type: ignore[list-item]
    with pytest.raises(DataError, match="language"):
        profile.compare(["x"], "fr")
    # invalid UTF-8 is decoded with U+FFFD, as the prompts do: a finding, not a crash
    findings = profile.compare([b"\xff\xfe gateway \xc3(", b"ok"])
    assert findings == [Finding("no_profile", evidence.WORDING["en"]["no_profile"])]
    with pytest.raises(DataError, match="no normal sequences"):
        FlowProfile.build([])
    with pytest.raises(DataError, match="#2"):
        FlowProfile.build([["a"], []])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="invalid flow profile"):
        FlowProfile.load(bad)
    bad.write_text('{"version": 1, "groups": {"x": {"runs": "many"}}}', encoding="utf-8")
    with pytest.raises(DataError, match="malformed"):
        FlowProfile.load(bad)
    with pytest.raises(DataError, match="no such file"):
        FlowProfile.load(tmp_path / "nope.json")
    only_anomalies = tmp_path / "anomalous.jsonl"
    write_records(only_anomalies, [SequenceRecord(sequence_id="a", label=1, log_entries=["x"], anomaly_type="t")])
    with pytest.raises(DataError, match="no normal records"):
        FlowProfile.from_records(only_anomalies)


def test_merge_variants() -> None:
    merged = merge_variants(
        [
            "refresh started keyspace=prices job=<id>",
            "refresh started keyspace=products job=<id>",
            "order confirmed state=CONFIRMED",
            "order cancelled state=CANCELLED",
        ]
    )
    assert merged["refresh started keyspace=prices job=<id>"] == "refresh started <*> job=<id>"
    assert merged["refresh started keyspace=products job=<id>"] == "refresh started <*> job=<id>"
    assert merged["order confirmed state=CONFIRMED"] == "order confirmed state=CONFIRMED"  # two tokens differ


def test_evidence_is_the_first_context_entry_and_the_callers_keys_win(profile: FlowProfile, tiny_base: Path) -> None:
    from transformers import AutoTokenizer

    encoder = PromptEncoder(AutoTokenizer.from_pretrained(tiny_base), TOY_LABELS, 1344, profile=profile)
    lines = ["kernel: eth0 link up"]
    messages, _ = encoder.messages(lines, "en", {"service": "orders"})
    user = messages[1]["content"]
    assert user.endswith(
        "Context:\ncompared with normal runs: no normal runs of this flow to compare with\nservice: orders"
    )
    zh, _ = encoder.messages(lines, "zh")
    assert zh[1]["content"].endswith("上下文：\n与正常运行对比: 没有该流程的正常运行可供对比")
    mine, _ = encoder.messages(lines, "en", {"compared with normal runs": "my own"})
    assert mine[1]["content"].endswith("compared with normal runs: my own")
    with pytest.raises(DataError, match="context"):
        encoder.messages(lines, "en", ["not", "a", "mapping"])  # type: ignore[arg-type]
    # the evidence may run longer than an ordinary context value
    long = "y" * 2000
    assert len(prompts.format_context({"k": long}, "en").split(": ", 1)[1]) == prompts.MAX_CONTEXT_CHARS
    text = prompts.format_context({"compared with normal runs": long}, "en")
    assert len(text.split(": ", 1)[1]) == prompts.MAX_EVIDENCE_CHARS


def test_explainer_folders_carry_their_profile(profile: FlowProfile, tiny_base: Path, tmp_path: Path) -> None:
    folder = tmp_path / "explainer"
    shutil.copytree(tiny_base, folder)
    (folder / "labels.json").write_text(json.dumps(TOY_LABELS.to_dict()), encoding="utf-8")
    plain = Explainer.from_pretrained(folder, device="cpu", dtype="fp32", max_new_tokens=4)
    assert plain.flow_profile is None
    profile.save(folder)
    explainer = Explainer.from_pretrained(folder, device="cpu", dtype="fp32", max_new_tokens=4)
    assert explainer.flow_profile is not None and explainer.flow_profile.to_dict() == profile.to_dict()
    messages, _ = explainer.encoder.messages(["kernel: eth0 link up"], "en")
    assert "compared with normal runs: no normal runs of this flow" in messages[1]["content"]
    # the base compared beside a tuned model gets the tuned model's profile: the same prompts
    base = Explainer.from_pretrained(
        tiny_base, device="cpu", dtype="fp32", labels=TOY_LABELS, flow_profile=profile, max_new_tokens=4
    )
    lines = ["kernel: eth0 link up"]
    assert base.encoder.prompt_text(lines) == explainer.encoder.prompt_text(lines)
    remote = OpenAIExplainer("http://127.0.0.1:9", "explainer", folder)
    assert remote.encoder.prompt_text(lines) == explainer.encoder.prompt_text(lines)
    remote.close()
    (folder / FLOW_PROFILE_FILE).unlink()
    (folder / "explainer.json").write_text('{"evidence": true}', encoding="utf-8")
    with pytest.raises(ModelError, match="flow evidence"):
        Explainer.from_pretrained(folder, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def train_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Classification records of generated anomalies (English), the reference of normal runs beside them."""
    folder = tmp_path_factory.mktemp("train-data")
    config = GeneratorConfig(num_sequences=20, anomaly_ratio=1.0, lang="en", seed=8, id_prefix="cls")
    samples = [classification_sample(r) for r in generate_sequences(config, progress=False)]
    (folder / "cls.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples), encoding="utf-8")
    write_records(folder / REFERENCE_FILE, reference_records(300, "en", "hard", 0.05, seed=4, progress=False))
    return folder / "cls.jsonl"


def test_training_prompts_carry_the_evidence(train_data: Path, tiny_base: Path) -> None:
    from transformers import AutoTokenizer

    assert GENERATOR_REFERENCE_FILE == REFERENCE_FILE  # the generator writes what the trainer looks for
    args = TrainLargeArgs(data=train_data)
    profile, path = reference_profile(args)
    assert profile is not None and path == train_data.parent / REFERENCE_FILE and profile.runs == 300
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    labels = LabelSet()
    examples = load_examples(train_data, labels)
    encoder = PromptEncoder(tokenizer, labels, args.max_prompt_tokens, profile=profile)
    encoded = encode_examples(encoder, examples, range(len(examples)), args)
    seen = set()
    for i, (ids, labs, _) in encoded.items():
        prompt = tokenizer.decode([t for t, lab in zip(ids, labs, strict=True) if lab == -100])
        assert "Context:\ncompared with normal runs: " in prompt
        value = prompt.split("compared with normal runs: ", 1)[1].split("<|im_end|>", 1)[0]
        assert value == "; ".join(f.text for f in profile.compare(examples[i].log_entries or []))
        kinds = {f.kind for f in profile.compare(examples[i].log_entries or [])}
        if examples[i].category in ("missing_step", "out_of_order", "retry_storm", "latency_spike"):
            seen.add(examples[i].category)
            assert kinds != {"matches"}
    assert seen == {"missing_step", "out_of_order", "retry_storm", "latency_spike"}


def test_training_reference_options(train_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert reference_profile(TrainLargeArgs(data=train_data, evidence=False)) == (None, None)
    lonely = tmp_path / "data.jsonl"
    shutil.copy(train_data, lonely)
    with caplog.at_level(logging.WARNING, logger="large_model.train_data"):
        assert reference_profile(TrainLargeArgs(data=lonely)) == (None, None)
    assert "WITHOUT the flow evidence" in caplog.text
    with pytest.raises(DataError, match="no such file"):
        reference_profile(TrainLargeArgs(data=lonely, reference=tmp_path / "missing.jsonl"))
    profile, path = reference_profile(TrainLargeArgs(data=lonely, reference=train_data.parent / REFERENCE_FILE))
    assert profile is not None and path == train_data.parent / REFERENCE_FILE


def test_generator_writes_the_reference(tmp_path: Path) -> None:
    args = ["--num-classification", "4", "--num-instructions", "2", "--num-reference", "10", "--seed", "3", "-q"]
    assert main([*args, "--output-dir", str(tmp_path / "a")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "a" / REFERENCE_FILE).read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 10 and {r["label"] for r in rows} == {0} and {r["lang"] for r in rows} == {"en", "zh"}
    assert all(r["anomaly_type"] is None and r["length"] == len(r["log_entries"]) for r in rows)
    assert main([*args, "--output-dir", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / REFERENCE_FILE).read_bytes() == (tmp_path / "b" / REFERENCE_FILE).read_bytes()
    assert main([*args[:4], "--num-reference", "0", "-q", "--output-dir", str(tmp_path / "c")]) == 0
    assert not (tmp_path / "c" / REFERENCE_FILE).exists()


def test_a_run_with_evidence_saves_its_profile_and_inference_uses_it(
    train_data: Path, tiny_base: Path, tmp_path: Path
) -> None:
    """One QLoRA step of the tiny model: the folder records the evidence and the explainer puts it in its prompts."""
    output = tmp_path / "run"
    common = {
        "data": train_data,
        "output": output,
        "base": str(tiny_base),
        "backend": "peft",
        "device": "cpu",
        "dtype": "fp32",
        "max_steps": 1,
        "batch_size": 2,
        "warmup_steps": 1,
        "save_every": 0,
        "holdout_fraction": 0.2,
        "max_seq_len": 1000,
        "max_prompt_tokens": 900,
        "progress": False,
    }
    result = run_training(TrainLargeArgs(**common))  # type: ignore[arg-type]
    meta = json.loads((output / "explainer.json").read_text(encoding="utf-8"))
    assert meta["evidence"] is True and meta["reference"] == str(train_data.parent / REFERENCE_FILE)
    assert meta["reference_runs"] == 300 and result.metrics["evidence"] is True
    saved = FlowProfile.load(output)
    explainer = Explainer.from_pretrained(output, device="cpu", dtype="fp32", max_new_tokens=4)
    assert explainer.flow_profile is not None and explainer.flow_profile.to_dict() == saved.to_dict()
    row = json.loads((output / "heldout.jsonl").read_text(encoding="utf-8").splitlines()[0])
    prompt = explainer.encoder.prompt_text(row["log_entries"], row["lang"], {"service": "orders"})
    expected = "; ".join(f.text for f in saved.compare(row["log_entries"], row["lang"]))
    assert f"Context:\ncompared with normal runs: {expected}\nservice: orders<|im_end|>" in prompt
    assert explainer.explain(row["log_entries"], row["lang"]).category in explainer.labels.categories
    # a later run without the evidence into the same folder leaves no profile behind
    run_training(TrainLargeArgs(**{**common, "evidence": False}))  # type: ignore[arg-type]
    assert not (output / FLOW_PROFILE_FILE).exists()
    assert json.loads((output / "explainer.json").read_text(encoding="utf-8"))["evidence"] is False
    assert Explainer.from_pretrained(output, device="cpu", dtype="fp32", max_new_tokens=4).flow_profile is None
