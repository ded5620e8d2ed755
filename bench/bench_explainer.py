"""Explainer throughput: training steps/s and tokens/s, inference explanations/s.

    .venv/bin/python bench/bench_explainer.py --data data/instructions_chat.jsonl \\
        --model artifacts/explainer --train-steps 3 --explain-n 5

Sets OMP_WAIT_POLICY=PASSIVE (re-executing itself where it was not set: OpenMP reads it at
load) and prints it with the thread count, since spin-waiting threads on a small shared CPU run
several times slower. Training is timed on a freshly loaded base with the defaults of
``train-large`` (QLoRA NF4, LoRA r=16 on the top ``lora_layers`` layers, the same share of
labels-only examples, the default batch; with the feature cache, the frozen layers run once over
the examples first, timed per example, and the steps run the top layers alone); the first step is
reported apart (warm-up). From these it estimates the default run's time (the cache over
``train_limit`` examples, then ``max_steps`` steps) before its 26-minute budget would stop it. Inference loads
``--model`` (an explainer folder; the untuned base where absent) and times full explanations
(label scoring + generation) and label scoring alone. Figures only, no assertions.

``--from-run DIR`` prints the same figures from a finished ``train-large`` folder instead
(its metrics.json, and eval.json where ``evaluate-large`` wrote one), measuring nothing:

    .venv/bin/python bench/bench_explainer.py --from-run artifacts/explainer
"""

from __future__ import annotations

import os
import sys

if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import argparse
import json
import logging
import resource
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from large_model.bundled import resolve_base  # noqa: E402
from large_model.encoding import PromptEncoder, keeps_text, load_examples, split_examples  # noqa: E402
from large_model.feature_cache import FeatureCache, step_loss  # noqa: E402
from large_model.inference import Explainer  # noqa: E402
from large_model.quant import load_for_training  # noqa: E402
from large_model.schema import LabelSet  # noqa: E402
from large_model.train_args import TrainLargeArgs  # noqa: E402
from large_model.train_data import collate  # noqa: E402

DEFAULTS = TrainLargeArgs()


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def bench_training(args: argparse.Namespace, labels: LabelSet) -> dict[str, object]:
    """Time ``--train-steps`` QLoRA steps of batch ``--batch-size``."""
    examples = load_examples(args.data, labels)
    train, _ = split_examples(examples, 0.2, 42)
    base_path, base_name = resolve_base(args.base)
    tm = load_for_training(
        base_path,
        device=args.device,
        compute_dtype=args.dtype,
        quantize=not args.no_quant,
        lora_layers=args.lora_layers,
        max_seq_len=args.max_seq_len,
    )
    encoder = PromptEncoder(tm.tokenizer, labels, DEFAULTS.max_prompt_tokens)
    encoded = [
        encoder.encode_weighted(
            e,
            args.max_seq_len,
            DEFAULTS.label_weight,
            labels_only=not keeps_text(e.sequence_id, DEFAULTS.text_fraction, DEFAULTS.seed),
        )
        for e in train[: args.batch_size * (args.train_steps + 1)]
    ]
    optimizer = torch.optim.AdamW([p for p in tm.model.parameters() if p.requires_grad], lr=DEFAULTS.lr)
    tm.model.train()
    run_args = TrainLargeArgs(lora_layers=args.lora_layers, feature_cache=not args.no_feature_cache)
    cache = FeatureCache.for_run(tm, run_args)
    if cache is not None:
        cache.build(dict(enumerate(encoded)), tm.tokenizer.pad_token_id, tm.device)
    times, tokens = [], []
    for step in range(args.train_steps + 1):
        indices = [(step * args.batch_size + i) % len(encoded) for i in range(args.batch_size)]
        chunk = [encoded[i] for i in indices]
        batch = collate(chunk, tm.tokenizer.pad_token_id, tm.device)
        if cache is not None:
            batch["features"] = cache.batch_features(indices, batch["input_ids"].shape[1])
        started = time.perf_counter()
        loss = step_loss(tm, batch, cache)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if tm.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
        tokens.append(int(batch["attention_mask"].sum()))
    steady = times[1:] or times
    secs = sum(steady)
    cache_per_example = cache.seconds / len(encoded) if cache is not None else 0.0
    n_examples = DEFAULTS.train_limit or len(train)
    result = {
        "base": base_name,
        "backend": tm.backend,
        "quantization": tm.quantization,
        "compute_dtype": str(tm.compute_dtype).replace("torch.", ""),
        "batch_size": args.batch_size,
        "lora_layers": args.lora_layers,
        "mean_tokens_per_sequence": sum(tokens) / len(tokens) / args.batch_size,
        "first_step_s": times[0],
        "seconds_per_step": secs / len(steady),
        "steps_per_s": len(steady) / secs,
        "train_tokens_per_s": sum(tokens[1:] or tokens) / secs,
        "feature_cache": cache is not None,
        "cache_s_per_example": cache_per_example,
        "estimated_default_run_min": (cache_per_example * n_examples + secs / len(steady) * DEFAULTS.max_steps) / 60,
        "peak_rss_gib": _peak_rss_gib(),
    }
    del tm, optimizer
    return result


def bench_inference(args: argparse.Namespace, labels: LabelSet) -> dict[str, object]:
    """Time ``--explain-n`` full explanations and as many label scorings."""
    model = Path(args.model) if args.model and Path(args.model).exists() else None
    explainer = Explainer.from_pretrained(
        model or (args.base or "bundled"),
        device=args.device,
        dtype=args.dtype,
        labels=None if model else labels,
        max_new_tokens=args.max_new_tokens,
    )
    examples = load_examples(args.data, labels)
    _, held = split_examples(examples, 0.2, 42)
    rows = (held or examples)[: args.explain_n]
    explainer.explain_detailed(rows[0].log_entries or [], rows[0].lang)  # warm-up
    started = time.perf_counter()
    generated_tokens = 0
    for e in rows:
        result = explainer.explain_detailed(e.log_entries or [], e.lang)
        generated_tokens += len(explainer.tokenizer(result.generated, add_special_tokens=False)["input_ids"])
    full = time.perf_counter() - started
    started = time.perf_counter()
    for e in rows:
        explainer.explain_detailed(e.log_entries or [], e.lang, generate=False)
    scoring = time.perf_counter() - started
    return {
        "model": explainer.name,
        "explanations": len(rows),
        "explanations_per_s": len(rows) / full,
        "seconds_per_explanation": full / len(rows),
        "label_scoring_seconds": scoring / len(rows),
        "generated_tokens_per_s": generated_tokens / max(full - scoring, 1e-9),
        "peak_rss_gib": _peak_rss_gib(),
    }


def figures_from_run(folder: Path) -> dict[str, object]:
    """Training and inference figures of a finished run, read from its metrics.json and eval.json."""
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    out: dict[str, object] = {
        "train": {
            key: metrics.get(key)
            for key in (
                "base",
                "backend",
                "quantization",
                "device",
                "lora_layers",
                "batch_size",
                "steps",
                "max_steps",
                "stopped_by_time",
                "examples_seen",
                "train_examples",
                "feature_cache",
                "cache_seconds",
                "train_seconds",
                "total_seconds",
                "steps_per_second",
                "tokens_per_second",
                "cuda_peak_gib",
            )
        }
    }
    eval_file = folder / "eval.json"
    if eval_file.is_file():
        reports = json.loads(eval_file.read_text(encoding="utf-8"))["reports"]
        out["inference"] = {
            name: {
                "n": r["n"],
                "n_generated": r["n_generated"],
                "explanations_per_s": 1 / r["latency_mean_s"] if r["latency_mean_s"] else None,
                "seconds_per_explanation": r["latency_mean_s"],
                "label_scorings_per_s": 1 / r["label_scoring_mean_s"] if r.get("label_scoring_mean_s") else None,
                "category_accuracy": r["category_accuracy"],
                "severity_accuracy": r["severity_accuracy"],
                "schema_valid_rate": r["schema_valid_rate"],
            }
            for name, r in reports.items()
        }
    return out


def main() -> None:
    """Parse flags, run both benchmarks, print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "instructions_chat.jsonl")
    parser.add_argument("--labels", type=Path, default=None)
    parser.add_argument("--base", default=None, help="default settings.llm_base (bundled SmolLM2 offline)")
    parser.add_argument("--model", default=str(ROOT / "artifacts" / "explainer"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--no-quant", action="store_true")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    parser.add_argument("--lora-layers", type=int, default=DEFAULTS.lora_layers, help="0: every layer")
    parser.add_argument("--max-seq-len", type=int, default=DEFAULTS.max_seq_len)
    parser.add_argument("--no-feature-cache", action="store_true", help="time full steps (every layer)")
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--explain-n", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--from-run", type=Path, default=None, help="print a finished run's figures, measure nothing")
    args = parser.parse_args()
    if args.from_run is not None:
        print(json.dumps(figures_from_run(args.from_run), indent=2))
        return
    logging.basicConfig(level=logging.WARNING)
    labels_path = args.labels or args.data.parent / "labels.json"
    labels = LabelSet.from_json(labels_path) if labels_path.is_file() else LabelSet()
    report: dict[str, object] = {
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    print(json.dumps(report), flush=True)
    if not args.skip_train:
        report["train"] = bench_training(args, labels)
        print(json.dumps({"train": report["train"]}, indent=2), flush=True)
    if not args.skip_inference:
        report["inference"] = bench_inference(args, labels)
        print(json.dumps({"inference": report["inference"]}, indent=2), flush=True)


if __name__ == "__main__":
    main()
