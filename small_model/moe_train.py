"""Train the MoE-BERT detector and save one artifact folder.

Supervised (labels in the training file)::

    OMP_WAIT_POLICY=PASSIVE python -m small_model.moe_train --train data/splits/train.json \
        --val data/splits/val.json --out artifacts/detector

Label-free (normal or unlabeled sequences only; anomalies in the file are dropped)::

    OMP_WAIT_POLICY=PASSIVE python -m small_model.moe_train --unsupervised \
        --train data/splits/train_normal.json --val data/splits/val.json --out artifacts/detector-unsup

Steps: (a) masked log modeling on the normal/unlabeled sequences (random tokens and whole lines
masked; a line head names each masked line in a vocabulary of the normalized training lines; every
other row is read unmasked with block-causal attention instead, and a second line head names each
line's next line: forward line modeling, which sees the order of the steps),
stage 1 with dense experts, stage 2 with Top-P routing and the load-balancing loss; (b) supervised: the head (and the encoder
under it) trained with BCE; or (c) label-free: the head trained as a one-class model against
synthetic negatives (normal sequences with lines dropped, duplicated, swapped, shuffled or
replaced, or a word replaced), jointly with the masked modeling loss; then a bank of training
embeddings for the kNN score, robust normalization of the three scores on held-out normal
sequences, and fusion weights + threshold calibrated on labeled validation data (or a
contamination quantile when there are no labels).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from core.errors import DataError, LogTriageError
from core.io import read_records
from core.normalize import Normalizer
from core.schema import SequenceRecord
from small_model.config import DetectorConfig
from small_model.data import (
    draw_lines,
    encode_texts,
    length_batches,
    line_keys,
    line_targets,
    next_targets,
    pad_batch,
    perturb_lines,
    random_mlm_mask,
    special_ids,
    stratified_length_batches,
)
from small_model.modeling import MoEBertForLogAnomaly, MoEMode, build_model, build_tokenizer, count_parameters
from small_model.scoring import (
    COMPONENTS,
    MoEBertDetector,
    ScoreStats,
    calibrate_fusion,
    classification_metrics,
)

logger = logging.getLogger(__name__)


@dataclass
class TrainArgs:
    """Arguments of one training run (the CLI maps its flags onto these)."""

    train_file: Path
    output_dir: Path = Path("artifacts/detector")
    val_file: Path | None = None
    test_file: Path | None = None  # optional: metrics on it go into metrics.json
    unsupervised: bool = False
    # model
    encoder: str = "bundled"
    num_encoder_layers: int | None = 2  # the lowest 2 of MiniLM's 6 layers: fits the CPU time budget
    freeze_layers: int = 0
    max_length: int = 384
    num_experts: int = 4
    top_p: float = 0.8
    pooling: str = "attention"
    # schedule
    epochs: float | None = None  # head phase; None: 1.0 supervised (BCE), 0.3 label-free (one-class)
    mlm_epochs: float = 5.0  # masked log modeling, both stages together
    mlm_max_sequences: int | None = 1500  # subsample of the (deduplicated) normal sequences for MLM
    dense_fraction: float = 0.5  # share of MLM steps in stage 1 (dense experts)
    batch_size: int = 16
    lr: float = 1e-4  # encoder
    head_lr: float = 1e-3  # MoE, heads
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    # label-free
    contamination: float = 0.05
    knn_k: int = 1  # nearest normal neighbour: near-duplicates of a normal flow (a step missing) stand out
    bank_size: int = 4096
    calib_fraction: float = 0.1  # normal training sequences held out for score normalization
    recon_reduce: str = "max"  # the worst line (lines) or token (tokens): one line out of place is enough
    mlm_line_probability: float = 0.5  # masked line modeling: share of lines masked whole
    line_vocab_max: int = 4096  # the line head's classes: the most frequent normalized training lines
    recon_masking: str = "lines"  # reconstruction score: each line predicted from the others
    next_line: bool = True  # forward line modeling beside it: each line's next line from the lines before
    mlm_vocab: str = "corpus"  # corpus: decode only token ids seen in training (+ other); full: all
    mlm_weight: float = 1.0  # weight of the MLM loss kept on normal sequences while the head trains
    mlm_rows: int = 4  # at most this many normal rows of a head batch carry that MLM loss
    head_freeze_layers: int = 0  # embeddings and the lowest N layers frozen while the head trains (speed)
    augment: float = 0.25  # supervised: perturbed copies of normal rows added as anomalies, per batch row
    # run
    seed: int = 42
    threads: int | None = None
    device: str = "cpu"  # or "cuda"
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def head_epochs(self) -> float:
        """Epochs of the head phase: ``epochs``, else 1.0 supervised and 0.3 label-free."""
        if self.epochs is not None:
            return self.epochs
        return 0.3 if self.unsupervised else 1.0


@dataclass
class Prepared:
    """Normalized training material."""

    lines: list[list[str]]  # normalized lines per sequence
    labels: list[int | None]
    types: list[str | None]

    def texts(self, separator: str) -> list[str]:
        """Joined model inputs."""
        return [separator.join(x) for x in self.lines]


# ----------------------------------------------------------------------------- data


def prepare(records: Sequence[SequenceRecord], normalizer: Normalizer) -> Prepared:
    """Normalize the lines of each record; drop empty lines."""
    lines, labels, types = [], [], []
    for r in records:
        norm = [t for t in (normalizer.normalize(x) for x in r.log_entries) if t]
        if not norm:
            continue
        lines.append(norm)
        labels.append(r.label)
        types.append(r.anomaly_type)
    return Prepared(lines, labels, types)


def load_split(path: Path | None, normalizer: Normalizer, what: str) -> Prepared | None:
    """Read and normalize a record file (``None`` when no path)."""
    if path is None:
        return None
    records = read_records(path)
    data = prepare(records, normalizer)
    if not data.lines:
        raise DataError(f"{what} file has no sequence with a non-empty line", path)
    return data


def check_training_data(data: Prepared, unsupervised: bool, path: Path) -> None:
    """Fail before training when the data cannot train the chosen track."""
    if not data.lines:
        raise DataError("no sequences with a non-empty line", path)
    labeled = [y for y in data.labels if y is not None]
    if unsupervised:
        if not any(y != 1 for y in data.labels):
            raise DataError("label-free training needs normal or unlabeled sequences; all are anomalies", path)
        return
    if not labeled:
        raise DataError("no labels in the training file: use --unsupervised for label-free training", path)
    classes = set(labeled)
    if len(classes) < 2:
        only = "normal" if classes == {0} else "anomalous"
        raise DataError(
            f"supervised training needs both classes, all {len(labeled)} labeled sequences are {only}"
            + (" (use --unsupervised)" if only == "normal" else ""),
            path,
        )


def corpus_vocab(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int) -> list[int]:
    """The sorted token ids that occur in ``texts`` (special tokens excluded)."""
    never = set(special_ids(tokenizer))
    seen: set[int] = set()
    for ids in encode_texts(tokenizer, sorted(set(texts)), max_length):
        seen.update(ids)
    return sorted(seen - never)


# ----------------------------------------------------------------------------- loops


class LineMasker:
    """Masks a batch for masked log modeling: random tokens plus whole lines, whose classes become the
    line head's targets (whole-line masking only when the config has a line vocabulary). With forward
    line modeling (``config.next_line``) every other row is left unmasked and read with block-causal
    attention instead, its targets each line's next line."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: DetectorConfig, gen: torch.Generator) -> None:
        self.never = special_ids(tokenizer)
        self.mask_id, self.vocab = int(tokenizer.mask_token_id), len(tokenizer)
        self.sep_id = int(tokenizer.sep_token_id)
        self.config, self.gen = config, gen
        self.lines = {line: i for i, line in enumerate(config.line_vocab or [])}
        self.active = bool(config.line_vocab) and config.mlm_line_probability > 0
        self.forward = self.active and config.next_line

    def keys(self, text: str) -> list[int]:
        """The line classes of one joined text."""
        return line_keys(text, self.config.line_separator, self.lines, len(self.lines))

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keys: Sequence[Sequence[int]] | None
    ) -> dict[str, torch.Tensor]:
        """``input_ids``/``mlm_labels``/``line_labels`` (and ``causal_rows``/``next_labels``) for the model
        (``keys``: each row's line classes)."""
        whole = None
        if self.active and keys is not None:
            whole = draw_lines(input_ids, self.sep_id, self.config.mlm_line_probability, self.gen)
        masked, labels = random_mlm_mask(
            input_ids, attention_mask, self.never, self.mask_id, self.vocab, self.config.mlm_probability, self.gen,
            whole, self.sep_id,
        )  # fmt: skip
        batch = {"input_ids": masked, "mlm_labels": labels}
        if whole is not None and keys is not None:
            batch["line_labels"] = line_targets(input_ids, keys, self.sep_id, whole)
        if self.forward and keys is not None:
            rows = input_ids.shape[0]
            causal = torch.arange(rows) % 2 == 1 if rows > 1 else torch.rand(1, generator=self.gen) < 0.5
            batch["input_ids"] = torch.where(causal[:, None], input_ids, masked)
            batch["mlm_labels"] = labels.masked_fill(causal[:, None], -100)
            if "line_labels" in batch:
                batch["line_labels"] = batch["line_labels"].masked_fill(causal[:, None], -100)
            nxt = next_targets(input_ids, keys, self.sep_id, len(self.lines) + 1)
            batch["next_labels"] = nxt.masked_fill(~causal[:, None], -100)
            batch["causal_rows"] = causal
        return batch


def _optimizer(model: MoEBertForLogAnomaly, args: TrainArgs, steps: int) -> tuple[Any, Any]:
    encoder_params = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("encoder.")]
    new_params = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("encoder.")]
    groups = [
        {"params": encoder_params, "lr": args.lr},
        {"params": new_params, "lr": args.head_lr},
    ]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=args.weight_decay)
    sched = get_linear_schedule_with_warmup(opt, max(1, int(args.warmup_ratio * steps)), max(1, steps))
    return opt, sched


def _cycle_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random, pool_batches: int = 50
) -> Iterator[list[int]]:
    while True:
        yield from length_batches(lengths, batch_size, shuffle=True, rng=rng, pool_batches=pool_batches)


def run_phase(
    model: MoEBertForLogAnomaly,
    args: TrainArgs,
    steps: int,
    step_fn: Callable[[int], dict[str, torch.Tensor]],
    desc: str,
    history: dict[str, Any],
) -> None:
    """Run ``steps`` optimizer steps; ``step_fn(step)`` returns the losses, ``loss`` first."""
    if steps <= 0:
        return
    model.train()
    opt, sched = _optimizer(model, args, steps)
    recent: dict[str, list[float]] = {}
    bar = tqdm(range(steps), desc=desc, disable=not args.progress, file=sys.stderr, dynamic_ncols=True)
    for step in bar:
        losses = step_fn(step)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        for k, v in losses.items():
            recent.setdefault(k, []).append(float(v.detach()))
            del recent[k][:-50]
        bar.set_postfix({k: f"{np.mean(v):.3f}" for k, v in recent.items()})
        if logger.isEnabledFor(logging.DEBUG) and (step % 10 == 0 or step == steps - 1):
            logger.debug("%s step %d: %s", desc, step, {k: round(v[-1], 4) for k, v in recent.items()})
    # the mean of the last (up to) 50 steps of each loss
    history[desc] = {"steps": steps, **{k: round(float(np.mean(v)), 4) for k, v in recent.items()}}
    logger.info("%s: %s", desc, history[desc])


def mlm_phase(
    model: MoEBertForLogAnomaly,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    args: TrainArgs,
    config: DetectorConfig,
    rng: random.Random,
    gen: torch.Generator,
    history: dict[str, Any],
    epoch_size: int | None = None,
) -> None:
    """Masked log modeling: stage 1 dense experts, stage 2 Top-P routing with the load-balancing loss.

    ``texts`` may be deduplicated; an epoch is ``epoch_size`` sequences (default: ``len(texts)``).
    """
    ids = encode_texts(tokenizer, texts, config.max_length)
    lengths = [len(x) for x in ids]
    total = math.ceil(args.mlm_epochs * (epoch_size or len(ids)) / args.batch_size)
    dense_steps = round(args.dense_fraction * total)
    batches = _cycle_batches(lengths, args.batch_size, rng)
    masker = LineMasker(tokenizer, config, gen)
    keys = [masker.keys(t) for t in texts]
    pad_id = int(tokenizer.pad_token_id or 0)

    def step_fn(mode: MoEMode) -> Callable[[int], dict[str, torch.Tensor]]:
        def fn(_: int) -> dict[str, torch.Tensor]:
            idx = next(batches)
            input_ids, attention_mask = pad_batch([ids[i] for i in idx], pad_id)
            batch = masker(input_ids, attention_mask, [keys[i] for i in idx])
            out = model(attention_mask=attention_mask, moe_mode=mode, **batch)
            assert out.loss is not None and out.mlm_loss is not None
            losses = {"loss": out.loss, "mlm": out.mlm_loss.detach(), "lb": out.aux_loss.detach()}
            if out.line_loss is not None:
                losses["line"] = out.line_loss.detach()
            if out.next_loss is not None:
                losses["next"] = out.next_loss.detach()
            return losses

        return fn

    run_phase(model, args, dense_steps, step_fn("dense"), "mlm-stage1-dense", history)
    run_phase(model, args, total - dense_steps, step_fn("top_p"), "mlm-stage2-topp", history)


def _joint_mlm(
    model: MoEBertForLogAnomaly,
    masker: LineMasker,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    keys: Sequence[Sequence[int]],
) -> torch.Tensor:
    """Masked log modeling loss on (normal) rows, so the reconstruction score stays sharp while the head trains."""
    width = int(attention_mask.sum(dim=1).max())
    ids, mask = input_ids[:, :width], attention_mask[:, :width]
    out = model(attention_mask=mask, moe_mode="top_p", **masker(ids, mask, keys))
    assert out.mlm_loss is not None
    extra = [x for x in (out.line_loss, out.next_loss) if x is not None]
    return out.mlm_loss + sum(extra)


def supervised_phase(
    model: MoEBertForLogAnomaly,
    tokenizer: PreTrainedTokenizerBase,
    data: Prepared,
    args: TrainArgs,
    config: DetectorConfig,
    rng: random.Random,
    gen: torch.Generator,
    history: dict[str, Any],
) -> None:
    """BCE on the labeled sequences (fine-tunes encoder, MoE and head), with MLM kept on the normal ones."""
    # identical (text, label) pairs add nothing but weight: train on each once per epoch
    sep = config.line_separator
    pairs = {(sep.join(x), y) for x, y in zip(data.lines, data.labels, strict=True) if y is not None}
    examples = sorted(pairs, key=lambda p: (p[0], p[1] or 0))
    rng.shuffle(examples)
    ids = encode_texts(tokenizer, [t for t, _ in examples], config.max_length)
    labels = torch.tensor([float(y or 0) for _, y in examples])
    steps = math.ceil(args.head_epochs * len(ids) / args.batch_size)
    history["supervised-examples"] = {"unique": len(ids), "positives": int(labels.sum())}
    # length often tells the classes apart: plain length bucketing would make single-class batches,
    # which stall learning; stratified bucketing keeps both classes in every batch
    lengths, classes = [len(x) for x in ids], [int(y or 0) for _, y in examples]

    def cycle() -> Iterator[list[int]]:
        while True:
            yield from stratified_length_batches(lengths, classes, args.batch_size, rng)

    batches = cycle()
    pad_id = int(tokenizer.pad_token_id or 0)
    masker = LineMasker(tokenizer, config, gen)

    # perturbed copies of normal sequences (a step dropped, lines swapped, a step slowed, ...) join each
    # batch as extra anomalies: more examples of the structural kinds than the labels hold. Copies of the
    # batch's own normal rows first: each such minimal pair shows exactly what the anomaly changed
    normal_lines = [x for x, y in zip(data.lines, data.labels, strict=True) if y == 0]
    pool = sorted({line for seq in normal_lines for line in seq})
    n_aug = round(args.augment * args.batch_size) if normal_lines else 0

    def fn(_: int) -> dict[str, torch.Tensor]:
        idx = next(batches)
        batch_ids, batch_labels = [ids[i] for i in idx], labels[idx]
        if n_aug:
            own = [examples[i][0].split(sep) for i in idx if examples[i][1] == 0][:n_aug]
            sources = own + [rng.choice(normal_lines) for _ in range(n_aug - len(own))]
            fakes = [sep.join(perturb_lines(lines, rng, pool)) for lines in sources]
            batch_ids = batch_ids + encode_texts(tokenizer, fakes, config.max_length)
            batch_labels = torch.cat([batch_labels, torch.ones(n_aug)])
        input_ids, attention_mask = pad_batch(batch_ids, pad_id)
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=batch_labels, moe_mode="top_p")
        assert out.loss is not None and out.cls_loss is not None
        losses = {"loss": out.loss, "bce": out.cls_loss.detach(), "lb": out.aux_loss.detach()}
        normal = (batch_labels == 0).nonzero(as_tuple=True)[0][: args.mlm_rows]
        if args.mlm_weight > 0 and len(normal):
            keys = [masker.keys(examples[idx[int(r)]][0]) for r in normal]
            mlm = _joint_mlm(model, masker, input_ids[normal], attention_mask[normal], keys)
            losses["loss"] = losses["loss"] + args.mlm_weight * mlm
            losses["mlm"] = mlm.detach()
        return losses

    run_phase(model, args, steps, fn, "supervised-head", history)


def oneclass_phase(
    model: MoEBertForLogAnomaly,
    tokenizer: PreTrainedTokenizerBase,
    normal_lines: Sequence[list[str]],
    args: TrainArgs,
    config: DetectorConfig,
    rng: random.Random,
    gen: torch.Generator,
    history: dict[str, Any],
    epoch_size: int | None = None,
) -> None:
    """One-class head: normal (0) vs perturbed copies (1), with the MLM loss kept on the normal half."""
    sep = config.line_separator
    texts = [sep.join(x) for x in normal_lines]
    ids = encode_texts(tokenizer, texts, config.max_length)
    pool = sorted({line for seq in normal_lines for line in seq})
    steps = math.ceil(args.head_epochs * (epoch_size or len(ids)) / args.batch_size)
    half = max(1, args.batch_size // 2)
    batches = _cycle_batches([len(x) for x in ids], half, rng)
    pad_id = int(tokenizer.pad_token_id or 0)
    masker = LineMasker(tokenizer, config, gen)

    def fn(_: int) -> dict[str, torch.Tensor]:
        idx = next(batches)
        fakes = [sep.join(perturb_lines(normal_lines[i], rng, pool)) for i in idx]
        fake_ids = encode_texts(tokenizer, fakes, config.max_length)
        input_ids, attention_mask = pad_batch([ids[i] for i in idx] + fake_ids, pad_id)
        labels = torch.tensor([0.0] * len(idx) + [1.0] * len(fake_ids))
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, moe_mode="top_p")
        assert out.loss is not None and out.cls_loss is not None
        losses = {"loss": out.loss, "bce": out.cls_loss.detach(), "lb": out.aux_loss.detach()}
        if args.mlm_weight > 0:
            rows = min(len(idx), args.mlm_rows)
            keys = [masker.keys(texts[i]) for i in idx[:rows]]
            mlm = _joint_mlm(model, masker, input_ids[:rows], attention_mask[:rows], keys)
            losses["loss"] = losses["loss"] + args.mlm_weight * mlm
            losses["mlm"] = mlm.detach()
        return losses

    run_phase(model, args, steps, fn, "oneclass-head", history)


# ----------------------------------------------------------------------------- calibration


def expert_usage(detector: MoEBertDetector, texts: Sequence[str], limit: int = 256) -> dict[str, Any]:
    """Share of dispatches per expert and mean experts per token, on a sample of texts."""
    ids = encode_texts(detector.tokenizer, list(texts)[:limit], detector.config.max_length)
    if not ids:
        return {}
    counts = torch.zeros(detector.config.num_experts)
    per_token: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(ids), 32):
            input_ids, attention_mask = pad_batch(ids[start : start + 32], int(detector.tokenizer.pad_token_id or 0))
            out = detector.model(input_ids=input_ids, attention_mask=attention_mask, moe_mode="top_p")
            counts += out.expert_mask.float().sum(dim=0).cpu()
            per_token.append(float(out.expert_mask.float().sum(dim=1).mean()))
    share = counts / counts.sum().clamp_min(1)
    return {"dispatch_share": [round(float(x), 4) for x in share], "experts_per_token": float(np.mean(per_token))}


def calibrate(
    detector: MoEBertDetector,
    bank_texts: Sequence[str],
    calib_texts: Sequence[str],
    val: Prepared | None,
    args: TrainArgs,
) -> dict[str, Any]:
    """Embedding bank, robust score stats, fusion weights and threshold; returns calibration notes.

    With labeled validation data both tracks fuse head, kNN and reconstruction with weights and a
    threshold that maximize ROC-AUC + F1 there. Without it, the supervised track scores with the head
    probability (threshold 0.5) and the label-free track fuses with equal weights, thresholded at
    the ``contamination`` quantile of validation (else held-out normal) scores.
    """
    sep = detector.config.line_separator
    bank = detector.raw_from_texts(bank_texts, ["head"])["pooled"]
    detector.bank = torch.as_tensor(bank)
    cal = detector.calibration
    baseline_notes = detector.fit_line_baseline(calib_texts)
    raw_calib = detector.raw_from_texts(calib_texts, COMPONENTS)
    cal.stats = {c: ScoreStats.robust(raw_calib[c]) for c in COMPONENTS}
    notes: dict[str, Any] = {"bank_size": len(bank_texts), "calib_size": len(calib_texts), **baseline_notes}
    labeled = val is not None and len({y for y in val.labels if y is not None}) == 2
    if val is not None and labeled:
        keep = [i for i, y in enumerate(val.labels) if y is not None]
        raw_val = detector.raw_from_texts([sep.join(val.lines[i]) for i in keep], COMPONENTS)
        y = np.array([val.labels[i] for i in keep])
        for c in COMPONENTS:
            notes[f"val_auc_{c}"] = classification_metrics(y, raw_val[c], 0.0)["roc_auc"]
        weights, threshold, objective = calibrate_fusion(raw_val, y, cal.stats)
        cal.weights, cal.threshold, cal.threshold_source = weights, threshold, "validation"
        cal.fused = True
        notes["objective"] = objective
    elif cal.mode == "supervised":
        cal.weights = {"head": 1.0, "knn": 0.0, "recon": 0.0}
        cal.threshold, cal.threshold_source, cal.fused = 0.5, "default", False
    else:
        cal.fused = True
        cal.weights = {c: 1.0 / len(COMPONENTS) for c in COMPONENTS}
        pool_texts = [sep.join(x) for x in val.lines] if val is not None else list(calib_texts)
        fused = cal.fuse(detector.raw_from_texts(pool_texts, COMPONENTS))
        cal.threshold = float(np.quantile(fused, 1.0 - args.contamination))
        cal.threshold_source = "contamination"
    return notes


def evaluate(detector: MoEBertDetector, data: Prepared) -> dict[str, Any] | None:
    """Metrics of the detector on labeled prepared data (``None`` without both classes)."""
    keep = [i for i, y in enumerate(data.labels) if y is not None]
    y = np.array([data.labels[i] for i in keep])
    if len(set(y.tolist())) < 2:
        return None
    sep = detector.config.line_separator
    start = time.perf_counter()
    raw = detector.raw_from_texts([sep.join(data.lines[i]) for i in keep], [*detector.calibration.active(), "head"])
    scores = detector.calibration.fuse(raw)
    elapsed = time.perf_counter() - start
    metrics = classification_metrics(y, scores, detector.threshold)
    metrics["scoring_seconds"] = round(elapsed, 2)
    metrics["sequences_per_second"] = round(len(y) / max(elapsed, 1e-9), 2)
    types = [data.types[i] for i in keep]
    per_type: dict[str, dict[str, float]] = {}
    for t in sorted({str(t) for t, yy in zip(types, y, strict=True) if yy == 1}):
        sel = np.array([str(tt) == t and yy == 1 for tt, yy in zip(types, y, strict=True)])
        per_type[t] = {"n": int(sel.sum()), "recall": float((scores[sel] >= detector.threshold).mean())}
    metrics["recall_by_type"] = per_type
    return metrics


# ----------------------------------------------------------------------------- entry point


def detector_config(args: TrainArgs) -> DetectorConfig:
    """The model config a run builds, from its arguments."""
    return DetectorConfig(
        encoder=args.encoder,
        num_encoder_layers=args.num_encoder_layers,
        freeze_layers=args.freeze_layers,
        max_length=args.max_length,
        num_experts=args.num_experts,
        top_p=args.top_p,
        pooling=args.pooling,  # type: ignore[arg-type]
        knn_k=args.knn_k,
        mlm_line_probability=args.mlm_line_probability,
        recon_masking=args.recon_masking,  # type: ignore[arg-type]
        next_line=args.next_line,
        **args.extra,
    )


def train_detector(args: TrainArgs) -> Path:
    """Train (supervised or label-free) and save the artifact folder; returns its path."""
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    if args.threads:
        torch.set_num_threads(args.threads)
    if torch.get_num_threads() > 1 and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        logger.warning("OMP_WAIT_POLICY is not PASSIVE: several CPU threads may run much slower")
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    normalizer = Normalizer()
    config = detector_config(args)

    # --- data checks, all before any model is built
    train = load_split(Path(args.train_file), normalizer, "training")
    assert train is not None
    check_training_data(train, args.unsupervised, Path(args.train_file))
    val = load_split(Path(args.val_file), normalizer, "validation") if args.val_file else None
    test = load_split(Path(args.test_file), normalizer, "test") if args.test_file else None

    sep = config.line_separator
    normal_idx = [i for i, y in enumerate(train.labels) if y != 1]
    dropped = len(train.labels) - len(normal_idx)
    if args.unsupervised and dropped:
        logger.warning("label-free training: dropping %d sequences labeled anomalous", dropped)
    rng.shuffle(normal_idx)
    # normal sequences held out of all training: the reference for score normalization
    n_calib = min(1000, max(1, int(args.calib_fraction * len(normal_idx)))) if len(normal_idx) > 10 else 0
    calib_idx, normal_idx = normal_idx[:n_calib], normal_idx[n_calib:]
    if not calib_idx:  # too few normal sequences to hold any out: normalize on the training ones
        calib_idx = list(normal_idx)
    held_out = set(calib_idx) if n_calib else set()
    # deduplicated normal/unlabeled texts: masked modeling (a capped random subsample) and the bank
    unique_normal: dict[str, list[str]] = {}
    for i in normal_idx:
        unique_normal.setdefault(sep.join(train.lines[i]), train.lines[i])
    mlm_texts = list(unique_normal)
    mlm_epoch = len(normal_idx)
    if args.mlm_max_sequences:
        mlm_texts = mlm_texts[: args.mlm_max_sequences]
        mlm_epoch = min(mlm_epoch, args.mlm_max_sequences)

    if args.mlm_line_probability > 0 and args.line_vocab_max > 0:
        counts = Counter(line for i in normal_idx for line in train.lines[i])
        ranked = sorted(counts, key=lambda line: (-counts[line], line))
        config.line_vocab = ranked[: args.line_vocab_max]
    tokenizer = build_tokenizer(config)
    if args.mlm_vocab == "corpus":
        config.mlm_vocab = corpus_vocab(tokenizer, list(unique_normal), config.max_length)
    model = build_model(config, tokenizer).to(args.device)
    logger.info(
        "detector: %s encoder, %.1fM parameters (%.1fM trainable); %d MLM sequences",
        config.encoder, count_parameters(model) / 1e6, count_parameters(model, True) / 1e6, len(mlm_texts),
    )  # fmt: skip
    history: dict[str, Any] = {}
    mlm_phase(model, tokenizer, mlm_texts, args, config, rng, gen, history, mlm_epoch)
    t_mlm = time.perf_counter()
    # the head phase trains the upper layers, the MoE and the heads: no backward through the lower ones
    model.freeze_lower(max(config.freeze_layers, args.head_freeze_layers))
    if args.unsupervised:
        oneclass_phase(model, tokenizer, list(unique_normal.values()), args, config, rng, gen, history)
    else:
        labeled = Prepared(
            [x for i, x in enumerate(train.lines) if i not in held_out],
            [y for i, y in enumerate(train.labels) if i not in held_out],
            [t for i, t in enumerate(train.types) if i not in held_out],
        )
        supervised_phase(model, tokenizer, labeled, args, config, rng, gen, history)
    t_head = time.perf_counter()
    model.freeze_lower(config.freeze_layers)
    model.eval()

    detector = MoEBertDetector(model, tokenizer, normalizer)
    cal = detector.calibration
    cal.mode = "unsupervised" if args.unsupervised else "supervised"
    cal.knn_k, cal.contamination = args.knn_k, args.contamination
    cal.recon_reduce = args.recon_reduce  # type: ignore[assignment]
    bank_texts = list(unique_normal)[: args.bank_size]
    notes = calibrate(detector, bank_texts, [sep.join(train.lines[i]) for i in calib_idx], val, args)
    t_cal = time.perf_counter()
    cpu_train = time.process_time() - cpu0

    metrics: dict[str, Any] = {
        "mode": cal.mode,
        "train_file": str(args.train_file),
        "n_train_sequences": len(train.lines),
        "n_mlm_sequences": len(mlm_texts),
        "mlm_epoch_size": mlm_epoch,
        "seconds": {
            "mlm": round(t_mlm - t0, 1),
            "head": round(t_head - t_mlm, 1),
            "calibration": round(t_cal - t_head, 1),
            "train_total": round(t_cal - t0, 1),  # data checks to calibrated detector
            "train_process_cpu": round(cpu_train, 1),  # CPU time of this process (all threads)
        },
        "threads": torch.get_num_threads(),
        "history": history,
        "calibration": {**cal.to_dict(), **notes},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(args).items()},
    }
    metrics["expert_usage"] = expert_usage(detector, mlm_texts)
    if val is not None:
        metrics["val"] = evaluate(detector, val)
        metrics["val_used_for_calibration"] = cal.threshold_source == "validation"
    if test is not None:
        metrics["test"] = evaluate(detector, test)
    metrics["seconds"]["evaluation"] = round(time.perf_counter() - t_cal, 1)
    detector.metrics = metrics
    out = detector.save_pretrained(args.output_dir)
    logger.info("saved %s (version %s); trained in %.0f s", out, detector.version, metrics["seconds"]["train_total"])
    return out


def parse_args(argv: Sequence[str] | None = None) -> TrainArgs:
    """Command-line flags onto :class:`TrainArgs`."""
    p = argparse.ArgumentParser(description="Train the MoE-BERT log anomaly detector.")
    p.add_argument("--train", required=True, type=Path)
    p.add_argument("--val", type=Path)
    p.add_argument("--test", type=Path)
    p.add_argument("--out", type=Path, default=Path("artifacts/detector"))
    p.add_argument("--unsupervised", action="store_true")
    defaults = TrainArgs(train_file=Path("-"))
    for name in (
        "encoder", "epochs", "mlm_epochs", "mlm_max_sequences", "batch_size", "lr", "head_lr", "max_length",
        "num_encoder_layers", "freeze_layers", "pooling", "contamination", "knn_k", "bank_size",
        "recon_reduce", "mlm_line_probability", "recon_masking", "line_vocab_max", "mlm_vocab", "dense_fraction", "mlm_weight", "mlm_rows", "head_freeze_layers", "augment",
        "seed", "threads", "device",
    ):  # fmt: skip
        value = getattr(defaults, name)
        kind = type(value) if value is not None else (float if name == "epochs" else int)
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=value)
    p.add_argument("--no-next-line", dest="next_line", action="store_false", help="no forward line modeling")
    p.add_argument("--no-progress", action="store_true")
    ns = p.parse_args(argv)
    kwargs = {k: v for k, v in vars(ns).items() if k in TrainArgs.__dataclass_fields__}
    return TrainArgs(
        train_file=ns.train,
        val_file=ns.val,
        test_file=ns.test,
        output_dir=ns.out,
        unsupervised=ns.unsupervised,
        progress=not ns.no_progress,
        **{k: v for k, v in kwargs.items() if k not in ("train_file", "unsupervised", "progress")},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m small_model.moe_train``: train and print the artifact path."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        out = train_detector(parse_args(argv))
    except LogTriageError as exc:
        logger.error("%s", exc)
        return 2
    sys.stdout.write(f"{out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
