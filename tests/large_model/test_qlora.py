"""The whole QLoRA path on a tiny random Qwen2: NF4 base, LoRA on all linear layers, train, save, reload."""

from __future__ import annotations

import json
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch

from large_model.inference import Explainer
from large_model.quant import get_lora_config, get_quantization_config, load_for_training
from large_model.train import TrainResult, run_training
from large_model.train_args import TrainLargeArgs

LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_builders() -> None:
    quant = get_quantization_config(torch.float32)
    assert quant.load_in_4bit and quant.bnb_4bit_quant_type == "nf4"
    assert quant.bnb_4bit_compute_dtype == torch.float32
    lora = get_lora_config(r=8)
    assert lora.r == 8 and lora.lora_alpha == 16 and lora.target_modules == "all-linear"


def test_load_for_training_quantizes_and_attaches_lora(tiny_base: Path) -> None:
    tm = load_for_training(str(tiny_base), backend="peft", device="cpu", compute_dtype="fp32")
    assert tm.backend == "peft" and tm.quantization == "nf4"
    layers = {name.rsplit(".", 1)[-1]: mod for name, mod in tm.model.named_modules() if hasattr(mod, "lora_A")}
    assert set(layers) == LINEAR  # every linear layer of the decoder, not the output head
    assert all(isinstance(mod.base_layer, bnb.nn.Linear4bit) for mod in layers.values())
    trainable = {n for n, p in tm.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert tm.info["trainable_params"] < tm.info["total_params"]


def test_training_lowers_the_loss_and_saves_a_peft_adapter(trained: TrainResult) -> None:
    out = trained.output
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "labels.json"):
        assert (out / name).is_file(), name
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and set(adapter["target_modules"]) == LINEAR
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["quantization"] == "nf4" and metrics["steps"] == 12
    first = sum(h["loss"] for h in metrics["history"][:3]) / 3
    last = sum(h["loss"] for h in metrics["history"][-3:]) / 3
    assert last < first - 0.05, (first, last)
    meta = json.loads((out / "explainer.json").read_text())
    assert meta["base"] and Path(meta["base_path"]).is_dir() and meta["quantization"] == "nf4"
    held = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines()]
    assert held and all("log_entries" in r and "category" in r for r in held)


def _inputs(trained: TrainResult) -> torch.Tensor:
    text = trained.tokenizer.apply_chat_template(
        [{"role": "user", "content": "ERROR orders query failed: deadlock"}], tokenize=False, add_generation_prompt=True
    )
    return torch.tensor([trained.tokenizer(text + '{"category": "', add_special_tokens=False)["input_ids"]])


def test_reloaded_adapter_gives_identical_outputs(trained: TrainResult) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = _inputs(trained)
    with torch.no_grad():
        before = trained.model(input_ids=ids).logits
    meta = json.loads((trained.output / "explainer.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(
        meta["base_path"], quantization_config=get_quantization_config(torch.float32), dtype=torch.float32
    )
    reloaded = PeftModel.from_pretrained(base, str(trained.output)).eval()
    with torch.no_grad():
        after = reloaded(input_ids=ids).logits
    assert torch.allclose(before, after, atol=1e-5), (before - after).abs().max()
    # the merged inference model (NF4 de-quantized, LoRA merged) computes the same function
    merged = Explainer.from_pretrained(trained.output, device="cpu", dtype="fp32")
    with torch.no_grad():
        fast = merged.model(input_ids=ids).logits
    assert (fast - after).abs().max() < 0.05
    assert torch.equal(fast[0, -1].topk(3).indices, after[0, -1].topk(3).indices)


def test_resume_continues_from_the_last_checkpoint(trained: TrainResult, tmp_path: Path) -> None:
    ckpts = sorted(p.name for p in (trained.output / "checkpoints").glob("step-*"))
    assert ckpts == ["step-12", "step-8"]  # every 4 steps and the last, two kept
    args = TrainLargeArgs(**{**trained.metrics["args"], "data": Path(trained.metrics["args"]["data"])})
    args.output = tmp_path / "resumed"
    args.base = trained.metrics["args"]["base"]
    args.max_steps, args.save_every = 2, 2
    run_training(args)
    args.max_steps, args.resume = 4, True
    resumed = run_training(args)
    assert resumed.metrics["resumed_from_step"] == 2
    assert [h["step"] for h in resumed.metrics["history"]] == [1, 2, 3, 4]


def test_unknown_backend_is_a_clear_error(tiny_base: Path) -> None:
    from core.errors import ModelError

    with pytest.raises(ModelError, match="backend"):
        load_for_training(str(tiny_base), backend="nope", device="cpu")
    with pytest.raises(ModelError, match="unsloth"):
        load_for_training(str(tiny_base), backend="unsloth", device="cpu")


def test_lora_on_the_top_layers_only_stops_the_backward_there(tiny_base: Path) -> None:
    tm = load_for_training(str(tiny_base), backend="peft", device="cpu", compute_dtype="fp32", lora_layers=1)
    adapted = {name for name, mod in tm.model.named_modules() if hasattr(mod, "lora_A") and hasattr(mod, "base_layer")}
    assert adapted and all(".layers.1." in name for name in adapted)
    assert tm.info["lora_layers"] == 1
    seen: list[bool] = []
    first = tm.model.get_base_model().model.layers[0]
    first.register_forward_hook(
        lambda _m, _i, out: seen.append((out[0] if isinstance(out, tuple) else out).requires_grad)
    )
    ids = torch.tensor([[5, 6, 7, 8]])
    tm.model(input_ids=ids).logits.sum().backward()
    assert seen == [False]  # nothing below the adapted layer is recorded for the backward
    assert all(p.grad is not None for n, p in tm.model.named_parameters() if p.requires_grad)


def test_time_budget_stops_the_loop_after_the_first_step(tiny_base: Path, toy_data: Path, tmp_path: Path) -> None:
    args = TrainLargeArgs(
        data=toy_data,
        output=tmp_path / "budget",
        base=str(tiny_base),
        backend="peft",
        device="cpu",
        dtype="fp32",
        max_steps=6,
        max_minutes=1e-9,
        save_every=0,
        progress=False,
    )
    metrics = run_training(args).metrics
    assert metrics["stopped_by_time"] and metrics["steps"] == 1
    assert (tmp_path / "budget" / "adapter_model.safetensors").is_file()


def test_feature_cache_trains_as_the_full_forward_does(tiny_base: Path, toy_data: Path, tmp_path: Path) -> None:
    """The frozen layer below the LoRA run once per example: the same losses as every layer at every step."""
    histories = {}
    for cached in (True, False):
        args = TrainLargeArgs(
            data=toy_data,
            output=tmp_path / f"cache-{cached}",
            base=str(tiny_base),
            backend="peft",
            device="cpu",
            dtype="fp32",
            lora_layers=1,
            feature_cache=cached,
            train_limit=8,
            max_steps=6,
            batch_size=2,
            lr=5e-3,
            warmup_steps=1,
            save_every=0,
            progress=False,
        )
        metrics = run_training(args).metrics
        assert metrics["feature_cache"] is cached
        assert metrics["train_examples"] == 8
        histories[cached] = [h["loss"] for h in metrics["history"]]
    assert histories[True] == pytest.approx(histories[False], rel=1e-3, abs=1e-4)


def test_train_limit_samples_the_categories_in_turn() -> None:
    from collections import Counter

    from core.errors import DataError
    from large_model.encoding import Example
    from large_model.train_data import sample_examples

    cats = ["a"] * 50 + ["b"] * 30 + ["c"] * 4
    examples = [Example(f"s{i}", [], "{}", c, "low") for i, c in enumerate(cats)]
    keep = sample_examples(examples, 20, seed=3)
    assert keep == sorted(set(keep)) and len(keep) == 20
    assert Counter(examples[i].category for i in keep) == {"a": 8, "b": 8, "c": 4}  # c has only 4
    assert sample_examples(examples, 20, seed=3) == keep and sample_examples(examples, 20, seed=4) != keep
    plain = sample_examples(examples, 20, seed=3, how="random")
    assert len(set(plain)) == 20 and plain != keep
    assert sample_examples(examples, 500, seed=3) == list(range(len(examples)))
    with pytest.raises(DataError, match="unknown sample"):
        sample_examples(examples, 5, seed=3, how="stratified")


def test_real_log_records_add_the_other_category_and_calibrate_its_threshold(
    tiny_base: Path, toy_data: Path, tmp_path: Path
) -> None:
    """Real-log records beside the data are trained as category 'other'; the saved explainer carries the
    category threshold calibrated on its held-out records, and inference loads it."""
    from core.labels import OTHER
    from data_gen.real_anomalies import TRAIN_FILE, record
    from tests.large_model.test_grounding import HDFS

    data = tmp_path / "data"
    data.mkdir()
    for name in (toy_data.name, "labels.json"):
        (data / name).write_bytes((toy_data.parent / name).read_bytes())
    rows = [record(f"real-{i}", HDFS[: 1 + i % 2], "HDFS") for i in range(12)]
    (data / TRAIN_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    args = TrainLargeArgs(
        data=data / toy_data.name,
        output=tmp_path / "explainer",
        base=str(tiny_base),
        backend="peft",
        device="cpu",
        dtype="fp32",
        max_steps=4,
        batch_size=4,
        save_every=0,
        train_limit=0,
        progress=False,
    )
    result = run_training(args)
    labels = json.loads((args.output / "labels.json").read_text(encoding="utf-8"))
    assert labels["categories"][-1] == OTHER
    meta = json.loads((args.output / "explainer.json").read_text(encoding="utf-8"))
    calibration = meta["calibration"]
    assert meta["real"] == str(data / TRAIN_FILE) and result.metrics["real_examples"] > 0
    assert 0.0 < meta["category_threshold"] <= 1.0 and calibration["examples"] > 0
    assert calibration["known_confident"] >= 1 - args.other_quantile - 1 / calibration["examples"]
    explainer = Explainer.from_pretrained(args.output, device="cpu", dtype="fp32")
    assert explainer.category_threshold == meta["category_threshold"] and OTHER in explainer.labels.categories
    explanation = explainer.explain_detailed(HDFS, generate=False).explanation
    assert explanation.confidence is not None and 0.0 < explanation.confidence <= 1.0
    if explanation.category != OTHER:
        assert explanation.confidence >= meta["category_threshold"]
    no_real = run_training(
        TrainLargeArgs(**{**vars(args), "output": tmp_path / "synthetic", "use_real": False, "calibrate_examples": 0})
    )
    assert OTHER not in json.loads((no_real.output / "labels.json").read_text(encoding="utf-8"))["categories"]
    assert "category_threshold" not in json.loads((no_real.output / "explainer.json").read_text(encoding="utf-8"))


def test_quick_profile_marks_the_explainer_and_keeps_the_runs_own_settings(
    tiny_base: Path, toy_data: Path, tmp_path: Path
) -> None:
    """`--profile quick` (make demo's): its budgets where the run sets none, "profile" in explainer.json and
    metrics.json, and the loaded explainer says so."""
    from core.errors import DataError
    from large_model.train_args import TRAIN_PROFILES

    args = TrainLargeArgs.for_profile(
        "quick", data=toy_data, output=tmp_path / "quick", base=str(tiny_base), backend="peft", device="cpu",
        dtype="fp32", max_steps=2, progress=False,
    )  # fmt: skip
    assert args.max_steps == 2 and args.train_limit == TRAIN_PROFILES["quick"]["train_limit"]
    metrics = run_training(args).metrics
    meta = json.loads((args.output / "explainer.json").read_text(encoding="utf-8"))
    assert meta["profile"] == metrics["profile"] == "quick" and metrics["steps"] == 2
    assert Explainer.from_pretrained(args.output, device="cpu", dtype="fp32").profile == "quick"
    with pytest.raises(DataError, match="unknown profile"):
        TrainLargeArgs(profile="fast")
