"""QLoRA fine-tuning of the explainer: ``logtriage train-large``.

    OMP_WAIT_POLICY=PASSIVE logtriage train-large \\
        --data data/instructions_chat.jsonl --output artifacts/explainer

Each record (a classification record with ``log_entries`` or a chat record with ``messages``)
becomes the prompt of :mod:`large_model.prompts` put through the base's chat template, then the
canonical JSON answer; the loss counts the answer tokens only. The base is loaded NF4 4-bit
(bitsandbytes, CPU or CUDA) with LoRA on every linear layer; unsloth replaces that on a GPU
where it imports. A fraction of the sequences (by a hash of their id) is held out and saved as
``heldout.jsonl`` for ``evaluate-large``. Checkpoints land in ``<output>/checkpoints`` every
``--save-every`` steps; ``--resume`` continues from the last one. The output folder holds the
PEFT adapter (``adapter_config.json``, ``adapter_model.safetensors``; vLLM serves it with the
base), the tokenizer, ``labels.json``, ``explainer.json`` (base name and path, backend,
quantization, prompt settings, evidence on or off), ``flow_profile.json`` (with the evidence)
and ``metrics.json``.

Evidence (:mod:`large_model.evidence`): the normal runs of ``--reference`` (default:
``normal_reference.jsonl`` beside ``--data``, which ``data_gen/anomaly_classification_generator.py``
writes) make a flow profile, and every prompt built from log lines gets, in its context, how
the sequence differs from the normal runs of its flow (a step missing, two steps swapped, a line
repeated, a step slower, lines never seen). The profile is saved in the output folder, so
evaluation and inference build the same prompts. No default reference file: a warning, and the
run trains without evidence; ``--no-evidence`` turns it off. Records with chat messages and no
``log_entries`` keep their prompts as written (no evidence).

Real logs (``--real``, default ``real_anomalies_train.jsonl`` beside ``--data``, which
``data_gen/real_anomalies.py`` writes from the loghub samples): real anomalies join the training
records as category ``other`` (added to the label set), with texts that quote only their own lines.
After training, the saved explainer scores up to ``--calibrate-examples`` held-out records of known
categories; the ``--other-quantile`` quantile of their category confidence (the chosen label's
softmax share) becomes ``category_threshold`` in ``explainer.json``: below it, inference answers
``other``. ``metrics.json`` and ``explainer.json`` record the calibration (held-out accuracy, the
share kept confident, the share of held-out real records answered ``other``).

Category classifier (:mod:`large_model.category_classifier`, ``--no-category-classifier`` turns it off): a
TF-IDF + logistic regression fitted in seconds on the whole training part (not only the ``--train-limit``
sample the LLM trains on), on the lines as the prompt shows them and the prompt's comparison with normal
runs, saved as ``category_classifier.safetensors``. Inference fuses its log-probabilities with the LLM's
label log-softmax at a weight chosen on ``--fusion-examples`` held-out records (0, 0.1, ..., 1; the smallest
of equal bests); the calibration records above are other held-out records, so the threshold is set on
the fused confidence and the accuracies reported (LLM alone, classifier alone, fused) come from records
that chose nothing. ``fusion_weight`` and the figures go into ``explainer.json`` and ``metrics.json``.

Defaults (the bundled 135M base): LoRA r=16 on the top 4 of its 30 layers only, a seeded sample of
400 training examples (``--train-limit``; the categories in turn, ``--sample``) seen for ~5 epochs in
960 steps of 2 at lr 4e-3, label tokens weighted 3x, every example with its whole answer; the frozen
layers below the LoRA run once per example and are kept (:class:`FeatureCache`: each step then runs
the top 4 layers alone), no gradient checkpointing; a 45-minute budget for the caching pass and the
loop (``--max-minutes``; the LR schedule follows the time used), so a slow 2-core CPU stops early
where a GPU runs the whole recipe in about 1.5 minutes; the ``other`` threshold at the 2% quantile
of held-out confidences. On one H200 (3 seeds, 200 held-out records) this recipe reached category
accuracy 0.965-0.980 where the earlier default (200 examples, 640 steps, 5% quantile) gave 0.900-0.935
(5 runs), and answered ``other`` for 49-50 of 50 held-out real anomalies of five systems.
Measured figures: bench/explainer_results.md.

This module is the run itself; its parts live beside it: :mod:`large_model.train_args` (the arguments,
profiles and flags), :mod:`large_model.train_data` (examples, sampling, encoding, batches),
:mod:`large_model.feature_cache` (the step loss and the cache), :mod:`large_model.checkpoints` and
:mod:`large_model.calibration` (the ``other`` threshold).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from core.errors import DataError, ModelError
from core.io import write_json, write_jsonl
from core.labels import OTHER
from large_model.bundled import resolve_base
from large_model.calibration import calibrate_threshold
from large_model.category_classifier import CLASSIFIER_FILE, fit_category_classifier
from large_model.checkpoints import CHECKPOINTS, latest_checkpoint, load_checkpoint, save_checkpoint
from large_model.encoding import PROMPT_VERSION, Example, PromptEncoder, keeps_text, split_examples
from large_model.evidence import FLOW_PROFILE_FILE, FlowProfile
from large_model.feature_cache import FeatureCache, check_cache, step_loss
from large_model.quant import TrainingModel, load_for_training
from large_model.schema import LabelSet
from large_model.train_args import TrainLargeArgs, args_from_namespace
from large_model.train_data import (
    BUCKET_BATCHES,
    EncodedExamples,
    batches,
    collate,
    encode_examples,
    heldout_rows,
    load_training_examples,
    reference_profile,
    sample_examples,
)

log = logging.getLogger(__name__)

EXPLAINER_META = "explainer.json"


def _lr_at(step: int, args: TrainLargeArgs, time_fraction: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak, by steps or by the time budget used, whichever is further."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    span = max(1, args.max_steps - args.warmup_steps)
    progress = min(1.0, max((step - args.warmup_steps) / span, time_fraction))
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class TrainResult:
    """What a run made: the saved folder, and the trained model still in memory."""

    output: Path
    model: Any
    tokenizer: Any
    metrics: dict[str, Any]


def train_explainer(args: TrainLargeArgs) -> Path:
    """Fine-tune the explainer (QLoRA) and save the adapter folder; returns its path."""
    return run_training(args).output


def run_training(args: TrainLargeArgs) -> TrainResult:
    """Fine-tune the explainer and save it; returns the folder and the in-memory model.

    The steps: the examples (:func:`_prepare_run`), the base with its LoRA and the encoded prompts
    (:func:`_encode_run`), the checkpoint to resume from, the training loop (:func:`_train_loop`), the
    saved folder and its calibration (:func:`_save_explainer`), the run's metrics (:func:`_run_metrics`).
    """
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE" and not torch.cuda.is_available():
        log.warning(
            "OMP_WAIT_POLICY is not PASSIVE: on a small shared CPU PyTorch threads spin-wait and run far slower"
        )
    if args.max_steps < 1 or args.batch_size < 1 or args.grad_accum < 1:
        raise DataError("max_steps, batch_size and grad_accum must be at least 1")
    started = time.perf_counter()
    run = _prepare_run(args)
    tm, encoder, encoded_by, with_text = _encode_run(args, run)
    params = [p for p in tm.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    loop = _resume(args, tm, optimizer, run.profile)
    cache = FeatureCache.for_run(tm, args)
    if cache is not None:
        cache.build(encoded_by, tm.tokenizer.pad_token_id, tm.device)
    _train_loop(args, tm, optimizer, params, run, encoded_by, cache, loop)
    calibration = _save_explainer(args, tm, run, encoder)
    metrics = _run_metrics(args, tm, run, loop, cache, calibration, with_text, started)
    write_json(Path(args.output) / "metrics.json", metrics)
    log.info(
        "saved the explainer adapter to %s (%d steps, loss %.4f -> %.4f, %.0f s)",
        args.output,
        loop.step,
        metrics["first_loss"] or 0.0,
        metrics["final_loss"] or 0.0,
        loop.train_seconds,
    )
    tm.model.eval()
    return TrainResult(Path(args.output), tm.model, tm.tokenizer, metrics)


@dataclass
class _Run:
    """The examples of a run and where they came from."""

    examples: list[Example]  # every record read
    train_set: list[Example]  # the (sampled) training part
    train_all: list[Example]  # the whole training part (the category classifier's records)
    held: list[Example]  # the held-out part: heldout.jsonl and the calibration
    labels: LabelSet
    real: Path | None  # the real-log anomalies added, if any
    profile: FlowProfile | None  # the normal runs' profile of the evidence, if on
    reference: Path | None
    base_path: str = ""
    base_name: str = ""


@dataclass
class _Loop:
    """The training loop's state: where it starts (a resumed run: the checkpoint's step) and what it did."""

    start_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    prior_seconds: float = 0.0  # training time of the run before a resume
    step: int = 0
    stopped_by_time: bool = False
    tokens_seen: int = 0
    seen: set[int] = field(default_factory=set)  # training examples the steps of this run used
    train_seconds: float = 0.0  # the whole run's, resumed parts included
    loop_seconds: float = 0.0  # this process's loop alone


def _prepare_run(args: TrainLargeArgs) -> _Run:
    """The examples split into training and held-out parts, the training part sampled; the evidence's profile."""
    examples, labels, real = load_training_examples(args)
    train_set, held = split_examples(examples, args.holdout_fraction, args.seed)
    if not train_set:
        raise DataError("no training examples left after the hold-out split", args.data)
    train_all = train_set
    if args.train_limit is not None and 0 < args.train_limit < len(train_set):
        train_set = [train_set[i] for i in sample_examples(train_set, args.train_limit, args.seed, args.sample)]
    profile, reference = reference_profile(args)
    return _Run(examples, train_set, train_all, held, labels, real, profile, reference)


def _encode_run(args: TrainLargeArgs, run: _Run) -> tuple[TrainingModel, PromptEncoder, EncodedExamples, int]:
    """The base with its LoRA, the prompt encoder, the encoded examples the plan reaches, how many keep their text."""
    run.base_path, run.base_name = resolve_base(args.base)
    log.info("base model: %s (%s)", run.base_name, run.base_path)
    tm = load_for_training(
        run.base_path,
        backend=args.backend,
        device=args.device,
        quantize=args.quantize,
        compute_dtype=args.dtype,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        gradient_checkpointing=args.gradient_checkpointing,
        max_seq_len=args.max_seq_len,
        seed=args.seed,
        lora_layers=args.lora_layers,
    )
    encoder = PromptEncoder(tm.tokenizer, run.labels, args.max_prompt_tokens, profile=run.profile)
    # only the examples the plan reaches are encoded
    whole_windows = -(-args.max_steps // BUCKET_BATCHES) * BUCKET_BATCHES
    plan = batches(len(run.train_set), args.batch_size * args.grad_accum, args.seed, 0, whole_windows)
    used = sorted({i for batch in plan for i in batch})
    with_text = sum(keeps_text(run.train_set[i].sequence_id, args.text_fraction, args.seed) for i in used)
    # the prompts carry the evidence here, so the feature cache (built from these ids) does too
    encoded_by = encode_examples(encoder, run.train_set, used, args)
    answer_tokens = sum(sum(1 for x in labs if x != -100) for _, labs, _ in encoded_by.values())
    log.info(
        "%d training examples (%d held out); %d encoded for up to %d steps (%d with the whole answer, the rest "
        "labels only), mean %.0f tokens, %.0f answer tokens",
        len(run.train_set),
        len(run.held),
        len(used),
        args.max_steps,
        with_text,
        sum(len(ids) for ids, _, _ in encoded_by.values()) / len(used),
        answer_tokens / len(used),
    )
    return tm, encoder, encoded_by, with_text


def _resume(
    args: TrainLargeArgs, tm: TrainingModel, optimizer: torch.optim.Optimizer, profile: FlowProfile | None
) -> _Loop:
    """A fresh loop, or with ``--resume`` the last checkpoint's step, history and time (model and optimizer loaded)."""
    loop = _Loop()
    if not args.resume:
        return loop
    output = Path(args.output)
    checkpoint = latest_checkpoint(output)
    if checkpoint is None:
        log.info("--resume: no checkpoint in %s, starting from step 0", output / CHECKPOINTS)
        return loop
    state = load_checkpoint(tm, optimizer, checkpoint)
    loop.start_step = loop.step = int(state["step"])
    loop.history = list(state.get("history", []))
    loop.prior_seconds = float(state.get("train_seconds", 0.0))
    log.info("resumed from %s (step %d)", checkpoint, loop.start_step)
    if bool(state.get("evidence", False)) != (profile is not None):
        log.warning(
            "the checkpoint was trained %s the flow evidence, this run is %s it: the prompts differ",
            "with" if state.get("evidence") else "without",
            "with" if profile is not None else "without",
        )
    return loop


def _train_loop(
    args: TrainLargeArgs,
    tm: TrainingModel,
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    run: _Run,
    encoded_by: EncodedExamples,
    cache: FeatureCache | None,
    loop: _Loop,
) -> None:
    """The optimizer steps from ``loop.start_step`` to ``max_steps`` or the time budget, checkpoints on the way."""
    output = Path(args.output)
    pad_id = tm.tokenizer.pad_token_id
    checked = cache is None
    lengths = [len(encoded_by[i][0]) if i in encoded_by else 0 for i in range(len(run.train_set))]
    plan = batches(len(run.train_set), args.batch_size * args.grad_accum, args.seed, loop.start_step,
                    args.max_steps, lengths)  # fmt: skip
    tm.model.train()
    loop_started = time.perf_counter()

    def checkpoint_at(at: int) -> None:
        elapsed = loop.prior_seconds + time.perf_counter() - loop_started
        state = {"history": loop.history, "train_seconds": elapsed, "evidence": run.profile is not None}
        save_checkpoint(tm, optimizer, output, at, state, args.keep_checkpoints)

    from tqdm.auto import tqdm

    bar = tqdm(
        total=args.max_steps, initial=loop.start_step, desc="train-large", unit="step", disable=not args.progress
    )
    # the caching pass counts against the time budget (it is part of what the run costs)
    budget = args.max_minutes * 60 - (cache.seconds if cache is not None else 0.0)
    last_step_seconds = 0.0
    for indices in plan:
        step_started = time.perf_counter()
        elapsed = loop.prior_seconds + step_started - loop_started
        if budget > 0 and loop.step > loop.start_step and elapsed + last_step_seconds > budget:
            log.info(
                "time budget of %.1f minutes reached after %d of %d steps: stopping (--max-minutes)",
                args.max_minutes,
                loop.step,
                args.max_steps,
            )
            loop.stopped_by_time = True
            break
        lr = _lr_at(loop.step, args, elapsed / budget if budget > 0 else 0.0)
        for group in param_groups(optimizer):
            group["lr"] = lr
        total_loss = 0.0
        for part in range(args.grad_accum):
            chunk = indices[part * args.batch_size : (part + 1) * args.batch_size]
            loop.seen.update(chunk)
            batch = collate([encoded_by[i] for i in chunk], pad_id, tm.device)
            if cache is not None:
                batch["features"] = cache.batch_features(chunk, batch["input_ids"].shape[1])
            if not checked:
                cache = check_cache(tm, cache, batch)
                checked = True
            loss = step_loss(tm, batch, cache) / args.grad_accum
            if not torch.isfinite(loss):
                raise ModelError(f"the loss became {loss.item()} at step {loop.step}: lower --lr")
            loss.backward()
            total_loss += float(loss.item())
            loop.tokens_seen += int(batch["attention_mask"].sum().item())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loop.step += 1
        loop.history.append({"step": loop.step, "loss": round(total_loss, 5), "lr": lr})
        last_step_seconds = time.perf_counter() - step_started
        bar.set_postfix(loss=f"{total_loss:.4f}")
        bar.update(1)
        if args.save_every > 0 and (loop.step % args.save_every == 0 or loop.step == args.max_steps):
            checkpoint_at(loop.step)
    bar.close()
    if loop.stopped_by_time and args.save_every > 0 and loop.step % args.save_every != 0:
        checkpoint_at(loop.step)
    loop.loop_seconds = time.perf_counter() - loop_started
    loop.train_seconds = loop.prior_seconds + loop.loop_seconds


def _save_explainer(
    args: TrainLargeArgs, tm: TrainingModel, run: _Run, encoder: PromptEncoder
) -> dict[str, Any] | None:
    """The adapter folder: weights, tokenizer, labels, held-out records, flow profile, the category classifier
    (fitted on the whole training part) and ``explainer.json``, with the classifier's fusion weight and the
    category threshold calibrated on the held-out records (returned)."""
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    tm.model.save_pretrained(output)
    tm.tokenizer.save_pretrained(output)
    write_json(output / "labels.json", run.labels.to_dict())
    write_jsonl(output / "heldout.jsonl", heldout_rows(run.held))
    profile = run.profile
    if profile is not None:
        profile.save(output / FLOW_PROFILE_FILE)
    else:  # one left by an earlier run into this folder would add evidence this model never saw
        (output / FLOW_PROFILE_FILE).unlink(missing_ok=True)
    classifier = fit_category_classifier(run.train_all, profile) if args.category_classifier else None
    if classifier is not None:
        classifier.save(output / CLASSIFIER_FILE)
    else:
        (output / CLASSIFIER_FILE).unlink(missing_ok=True)
    base_path = run.base_path
    meta = {
        "base": run.base_name,
        "base_path": str(Path(base_path).resolve()) if Path(base_path).is_dir() else base_path,
        "backend": tm.backend,
        "quantization": tm.quantization,
        "compute_dtype": str(tm.compute_dtype).replace("torch.", ""),
        "prompt_version": PROMPT_VERSION,
        "max_prompt_tokens": args.max_prompt_tokens,
        "relative_time": encoder.relative_time,
        "short_ids": encoder.short_ids,
        "langs": sorted({e.lang for e in run.examples}),
        "evidence": profile is not None,
        "reference": str(run.reference) if run.reference is not None else None,
        "reference_runs": profile.runs if profile is not None else None,
        "reference_flows": profile.usable_groups if profile is not None else None,
        "real": str(run.real) if run.real is not None else None,
        "profile": args.profile,
        "category_classifier": classifier.describe() if classifier is not None else None,
    }
    write_json(output / EXPLAINER_META, meta)
    calibration = calibrate_threshold(output, run.held, args, tm.device)
    if calibration is not None:
        if calibration.get("fusion_weight") is not None:
            meta["fusion_weight"] = calibration["fusion_weight"]
        meta["category_threshold"] = calibration["category_threshold"]
        meta["calibration"] = calibration
        write_json(output / EXPLAINER_META, meta)
    return calibration


def _run_metrics(
    args: TrainLargeArgs,
    tm: TrainingModel,
    run: _Run,
    loop: _Loop,
    cache: FeatureCache | None,
    calibration: dict[str, Any] | None,
    with_text: int,
    started: float,
) -> dict[str, Any]:
    """``metrics.json``: the run's settings, losses, speed and calibration."""
    steps_run, seconds = loop.step - loop.start_step, loop.loop_seconds
    history = loop.history
    return {
        "profile": args.profile,
        "base": run.base_name,
        "backend": tm.backend,
        "quantization": tm.quantization,
        "device": tm.device,
        "steps": loop.step,
        "max_steps": args.max_steps,
        "stopped_by_time": loop.stopped_by_time,
        "batch_size": args.batch_size,
        "grad_accum": args.grad_accum,
        "lr": args.lr,
        "train_examples": len(run.train_set),
        "examples_seen": len(loop.seen),  # by the steps of this run (a resumed run: since the resume)
        "examples_with_text": with_text,
        "heldout_examples": len(run.held),
        "final_loss": history[-1]["loss"] if history else None,
        "first_loss": history[0]["loss"] if history else None,
        "train_seconds": round(loop.train_seconds, 2),
        "total_seconds": round(time.perf_counter() - started, 2),
        "steps_per_second": round(steps_run / seconds, 4) if seconds > 0 else None,
        "tokens_per_second": round(loop.tokens_seen / seconds, 2) if seconds > 0 else None,
        "resumed_from_step": loop.start_step,
        "feature_cache": cache is not None,
        "evidence": run.profile is not None,
        "real_examples": sum(e.category == OTHER for e in run.train_set),
        "calibration": calibration,
        "cache_seconds": round(cache.seconds, 2) if cache is not None else None,
        "cuda_peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if tm.device.startswith("cuda") else None,
        **tm.info,
        "args": {f.name: _jsonable(getattr(args, f.name)) for f in fields(args)},
        "history": history,
    }


def param_groups(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """The optimizer's parameter groups (typed for mypy)."""
    return list(optimizer.param_groups)


def _jsonable(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def run(ns: argparse.Namespace) -> int:
    """The ``train-large`` handler: trains, prints the output folder; 0 on success."""
    path = train_explainer(args_from_namespace(ns))
    print(path)
    return 0
