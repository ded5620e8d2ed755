"""Train the MoE-BERT detector and save one artifact folder.

Supervised (labels in the training file)::

    OMP_WAIT_POLICY=PASSIVE logtriage train-small --train data/splits/train.json \
        --val data/splits/val.json --out artifacts/detector

Label-free (normal or unlabeled sequences only; anomalies in the file are dropped)::

    OMP_WAIT_POLICY=PASSIVE logtriage train-small --unsupervised \
        --train data/splits/train_normal.json --val data/splits/val.json --out artifacts/detector-unsup

The arguments are :class:`small_model.config.TrainArgs` (imported here too), one flag per field.

Steps: the frozen BERT line encoder gives every distinct normalized training line its vector (once);
(a) masked log modeling over the line vectors of normal/unlabeled sequences: lines masked at random
and named by the line head in the vocabulary of the training lines, and, on the same rows read with
causal attention, forward line modeling: each line's next line (or the end of the sequence) named
by the next head; stage 1 with dense experts, stage 2 with Top-P routing and the load-balancing loss;
(b) supervised: the head trained with BCE (perturbed copies of normal rows added as anomalies); or
(c) label-free: the head trained as a one-class model against synthetic negatives (normal sequences
with lines dropped, duplicated, swapped, shuffled or replaced, or a word replaced), both jointly with
the line modeling loss; then a bank of training embeddings for the kNN score, per-class baselines of
the line NLLs and robust normalization of the three scores on held-out normal sequences, and fusion
weights + threshold calibrated on labeled validation data (or a contamination quantile without).
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from core.errors import DataError
from core.io import read_records
from core.normalize import Normalizer
from core.schema import SequenceRecord
from small_model.calibration import COMPONENTS, ScoreStats, calibrate_fusion
from small_model.config import DetectorConfig, TrainArgs
from small_model.data import length_batches, normalize_lines, perturb_lines, stratified_length_batches
from small_model.metrics import evaluate_scores, per_type_recall, roc_auc
from small_model.modeling import MoEBertForLogAnomaly, MoEMode, build_model, build_tokenizer, count_parameters
from small_model.scoring import LineBatch, MoEBertDetector, line_batch

logger = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Normalized training material."""

    lines: list[list[str]]  # normalized lines per sequence
    labels: list[int | None]
    types: list[str | None]


# ----------------------------------------------------------------------------- data


def prepare(records: Sequence[SequenceRecord], normalizer: Normalizer) -> Prepared:
    """Normalize the lines of each record; drop empty lines."""
    lines, labels, types = [], [], []
    for r in records:
        norm = normalize_lines(r.log_entries, normalizer)
        if norm == [""]:
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


# ----------------------------------------------------------------------------- batches


@dataclass
class Encoded:
    """A sequence as the model reads it: line-table rows and classes."""

    ids: list[int]
    classes: list[int]


class Batcher:
    """Turns normalized sequences into model batches through the detector's line-vector cache."""

    def __init__(self, detector: MoEBertDetector, rng: random.Random, gen: torch.Generator) -> None:
        self.detector, self.rng, self.gen = detector, rng, gen
        self.config = detector.config
        self.other = detector.model.end_class - 1

    def encode(self, sequences: Sequence[Sequence[str]]) -> list[Encoded]:
        """Line-table rows (encoding new lines) and classes of each sequence."""
        flat = [line for seq in sequences for line in seq]
        ids, classes = self.detector.vectors.ids(flat), self.detector.line_classes(flat)
        out, pos = [], 0
        for seq in sequences:
            out.append(Encoded(ids[pos : pos + len(seq)], classes[pos : pos + len(seq)]))
            pos += len(seq)
        return out

    def batch(self, sequences: Sequence[Encoded]) -> tuple[LineBatch, torch.Tensor]:
        """A :class:`LineBatch` of random windows (whole sequences when they fit) and its line vectors."""
        size = int(self.config.max_lines)
        windows = []
        for e in sequences:
            a = self.rng.randrange(len(e.ids) - size + 1) if len(e.ids) > size else 0
            windows.append((e.ids[a : a + size], e.classes[a : a + size], a + size >= len(e.ids)))
        batch = line_batch(windows, self.detector.model.end_class)
        return batch, self.detector.vectors.table[batch.ids.to(self.detector.vectors.device)]

    def line_modeling(self, batch: LineBatch, vectors: torch.Tensor, mode: MoEMode) -> dict[str, torch.Tensor]:
        """Masked line modeling and forward line modeling on the same rows: their losses (``loss`` first)."""
        model, cfg = self.detector.model, self.config
        real = batch.real
        draw = torch.rand(real.shape, generator=self.gen)
        masked = real & (draw < cfg.mask_probability)
        lowest = draw.masked_fill(~real, 2.0).argmin(dim=1)  # at least one masked line per row
        masked[torch.arange(len(real)), lowest] = True
        shown = self.dropped_classes(batch)
        line_labels = batch.classes.masked_fill(~masked, -100)
        out = model(vectors, shown, real, masked=masked, line_labels=line_labels, moe_mode=mode)
        fwd = model(vectors, shown, real, causal=True, next_labels=batch.nxt, moe_mode=mode)
        assert out.loss is not None and fwd.loss is not None and out.line_loss is not None
        assert fwd.next_loss is not None
        return {
            "loss": out.loss + fwd.loss,
            "line": out.line_loss.detach(),
            "next": fwd.next_loss.detach(),
            "lb": out.aux_loss.detach(),
        }

    def dropped_classes(self, batch: LineBatch) -> torch.Tensor:
        """The input classes with ``class_dropout`` of the lines shown as ``other`` (their vector alone)."""
        drop = batch.real & (torch.rand(batch.real.shape, generator=self.gen) < self.config.class_dropout)
        return batch.classes.masked_fill(drop, self.other)


def _cycle(items: int, batch_size: int, lengths: Sequence[int], rng: random.Random) -> Iterator[list[int]]:
    while True:
        yield from length_batches(lengths, batch_size, shuffle=True, rng=rng, pool_batches=50)


# ----------------------------------------------------------------------------- loops


def _optimizer(model: MoEBertForLogAnomaly, args: TrainArgs, steps: int) -> tuple[Any, Any]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    sched = get_linear_schedule_with_warmup(opt, max(1, int(args.warmup_ratio * steps)), max(1, steps))
    return opt, sched


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
    model.encoder.eval()  # frozen: no dropout in the line vectors
    opt, sched = _optimizer(model, args, steps)
    recent: dict[str, list[float]] = {}
    t0 = time.perf_counter()
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
        if logger.isEnabledFor(logging.DEBUG) and (step % 50 == 0 or step == steps - 1):
            logger.debug("%s step %d: %s", desc, step, {k: round(v[-1], 4) for k, v in recent.items()})
    # the mean of the last (up to) 50 steps of each loss
    history[desc] = {
        "steps": steps,
        "seconds": round(time.perf_counter() - t0, 1),
        **{k: round(float(np.mean(v)), 4) for k, v in recent.items()},
    }
    logger.info("%s: %s", desc, history[desc])


def line_modeling_phase(
    batcher: Batcher, normal: Sequence[Encoded], args: TrainArgs, rng: random.Random, history: dict[str, Any]
) -> None:
    """Masked + forward line modeling: stage 1 dense experts, stage 2 Top-P routing with the load-balancing loss."""
    total = args.steps(args.mlm_epochs, len(normal))
    dense_steps = round(args.dense_fraction * total)
    batches = _cycle(len(normal), args.batch_size, [len(e.ids) for e in normal], rng)

    def step_fn(mode: MoEMode) -> Callable[[int], dict[str, torch.Tensor]]:
        def fn(_: int) -> dict[str, torch.Tensor]:
            batch, vectors = batcher.batch([normal[i] for i in next(batches)])
            return batcher.line_modeling(batch, vectors, mode)

        return fn

    model = batcher.detector.model
    run_phase(model, args, dense_steps, step_fn("dense"), "lines-stage1-dense", history)
    run_phase(model, args, total - dense_steps, step_fn("top_p"), "lines-stage2-topp", history)


def _head_step(
    batcher: Batcher, rows: list[Encoded], labels: torch.Tensor, normal_rows: list[Encoded], args: TrainArgs
) -> dict[str, torch.Tensor]:
    """BCE of the head on ``rows``, plus the line modeling loss on (up to ``mlm_rows``) normal rows."""
    model = batcher.detector.model
    batch, vectors = batcher.batch(rows)
    out = model(vectors, batch.classes, batch.real, labels=labels, moe_mode="top_p")
    assert out.loss is not None and out.cls_loss is not None
    losses = {"loss": out.loss, "bce": out.cls_loss.detach(), "lb": out.aux_loss.detach()}
    if args.mlm_weight > 0 and normal_rows:
        nb, nv = batcher.batch(normal_rows[: args.mlm_rows])
        lm = batcher.line_modeling(nb, nv, "top_p")
        losses["loss"] = losses["loss"] + args.mlm_weight * lm["loss"]
        losses["lines"] = lm["loss"].detach()
    return losses


def supervised_phase(
    batcher: Batcher, data: Prepared, args: TrainArgs, rng: random.Random, history: dict[str, Any]
) -> None:
    """BCE on the labeled sequences, perturbed copies of normal rows as extra anomalies, line modeling kept."""
    examples = [(x, int(y)) for x, y in zip(data.lines, data.labels, strict=True) if y is not None]
    rng.shuffle(examples)
    encoded = batcher.encode([x for x, _ in examples])
    classes = [y for _, y in examples]
    steps = args.steps(args.head_epochs, len(examples))
    history["supervised-examples"] = {"n": len(examples), "positives": int(sum(classes))}
    lengths = [len(e.ids) for e in encoded]

    def cycle() -> Iterator[list[int]]:
        while True:
            yield from stratified_length_batches(lengths, classes, args.batch_size, rng)

    batches = cycle()
    # perturbed copies of normal sequences (a step dropped, lines swapped, a step slowed, ...) join each
    # batch as extra anomalies: more examples of the structural kinds than the labels hold. Copies of the
    # batch's own normal rows first: each such minimal pair shows exactly what the anomaly changed
    normal_lines = [x for x, y in examples if y == 0]
    pool = sorted({line for seq in normal_lines for line in seq})
    n_aug = round(args.augment * args.batch_size) if normal_lines else 0

    def fn(_: int) -> dict[str, torch.Tensor]:
        idx = next(batches)
        rows = [encoded[i] for i in idx]
        labels = [float(classes[i]) for i in idx]
        normal_rows = [encoded[i] for i in idx if classes[i] == 0]
        if n_aug:
            own = [examples[i][0] for i in idx if classes[i] == 0][:n_aug]
            sources = own + [rng.choice(normal_lines) for _ in range(n_aug - len(own))]
            rows += batcher.encode([perturb_lines(lines, rng, pool) for lines in sources])
            labels += [1.0] * n_aug
        return _head_step(batcher, rows, torch.tensor(labels), normal_rows, args)

    run_phase(batcher.detector.model, args, steps, fn, "supervised-head", history)


def oneclass_phase(
    batcher: Batcher, normal_lines: Sequence[list[str]], normal: Sequence[Encoded], args: TrainArgs,
    rng: random.Random, history: dict[str, Any],
) -> None:  # fmt: skip
    """One-class head: normal (0) vs perturbed copies (1), with the line modeling loss kept on the normal half."""
    pool = sorted({line for seq in normal_lines for line in seq})
    half = max(1, args.batch_size // 2)
    steps = args.steps(args.head_epochs, len(normal), half)
    batches = _cycle(len(normal), half, [len(e.ids) for e in normal], rng)

    def fn(_: int) -> dict[str, torch.Tensor]:
        idx = next(batches)
        rows = [normal[i] for i in idx]
        fakes = batcher.encode([perturb_lines(normal_lines[i], rng, pool) for i in idx])
        labels = torch.tensor([0.0] * len(rows) + [1.0] * len(fakes))
        return _head_step(batcher, rows + fakes, labels, rows, args)

    run_phase(batcher.detector.model, args, steps, fn, "oneclass-head", history)


# ----------------------------------------------------------------------------- calibration


@torch.inference_mode()
def expert_usage(batcher: Batcher, sequences: Sequence[Encoded], limit: int = 256) -> dict[str, Any]:
    """Share of dispatches per expert and mean experts per line, on a sample of sequences."""
    sample = list(sequences)[:limit]
    if not sample:
        return {}
    model = batcher.detector.model
    counts = torch.zeros(model.config.num_experts)
    per_line: list[float] = []
    for start in range(0, len(sample), 32):
        batch, vectors = batcher.batch(sample[start : start + 32])
        out = model(vectors, batch.classes, batch.real, moe_mode="top_p")
        counts += out.expert_mask.float().sum(dim=0).cpu()
        per_line.append(float(out.expert_mask.float().sum(dim=1).mean()))
    share = counts / counts.sum().clamp_min(1)
    return {"dispatch_share": [round(float(x), 4) for x in share], "experts_per_line": float(np.mean(per_line))}


def calibrate(
    detector: MoEBertDetector,
    bank_lines: Sequence[Sequence[str]],
    calib_lines: Sequence[Sequence[str]],
    val: Prepared | None,
    args: TrainArgs,
) -> dict[str, Any]:
    """Embedding bank, line baselines, robust score stats, fusion weights and threshold; returns notes.

    With labeled validation data both tracks fuse head, kNN and reconstruction with weights and a
    threshold that maximize average precision + F1 there. Without it, the supervised track scores with the head
    probability (threshold 0.5) and the label-free track fuses with equal weights, thresholded at
    the ``contamination`` quantile of validation (else held-out normal) scores.
    """
    detector.bank = torch.as_tensor(detector.line_scores(bank_lines, recon=False).pooled)
    cal = detector.calibration
    baseline_notes = detector.fit_line_baseline(calib_lines)
    raw_calib = detector.raw_from_lines(calib_lines, COMPONENTS)
    cal.stats = {c: ScoreStats.robust(raw_calib[c]) for c in (*COMPONENTS, "recon")}
    notes: dict[str, Any] = {"bank_size": len(bank_lines), "calib_size": len(calib_lines), **baseline_notes}
    labeled = val is not None and len({y for y in val.labels if y is not None}) == 2
    if val is not None and labeled:
        keep = [i for i, y in enumerate(val.labels) if y is not None]
        raw_val = detector.raw_from_lines([val.lines[i] for i in keep], COMPONENTS)
        y = np.array([val.labels[i] for i in keep])
        for c in (*COMPONENTS, "recon"):
            notes[f"val_auc_{c}"] = roc_auc(y, raw_val[c])
        weights, threshold, objective = calibrate_fusion(raw_val, y, cal.stats)
        cal.weights, cal.threshold, cal.threshold_source = weights, threshold, "validation"
        cal.fused = True
        notes["objective"] = objective
    elif cal.mode == "supervised":
        cal.weights = {c: float(c == "head") for c in COMPONENTS}
        cal.threshold, cal.threshold_source, cal.fused = 0.5, "default", False
    else:
        cal.fused = True
        cal.weights = {c: 1.0 / len(COMPONENTS) for c in COMPONENTS}
        pool = val.lines if val is not None else list(calib_lines)
        fused = cal.fuse(detector.raw_from_lines(pool, COMPONENTS))
        cal.threshold = float(np.quantile(fused, 1.0 - args.contamination))
        cal.threshold_source = "contamination"
    return notes


def evaluate(detector: MoEBertDetector, data: Prepared) -> dict[str, Any] | None:
    """Metrics of the detector on labeled prepared data (``None`` without both classes)."""
    keep = [i for i, y in enumerate(data.labels) if y is not None]
    y = np.array([data.labels[i] for i in keep])
    if len(set(y.tolist())) < 2:
        return None
    start = time.perf_counter()
    raw = detector.raw_from_lines([data.lines[i] for i in keep], [*detector.calibration.active(), "head"])
    scores = detector.calibration.fuse(raw)
    elapsed = time.perf_counter() - start
    metrics = evaluate_scores(y, scores, detector.threshold)
    metrics["scoring_seconds"] = round(elapsed, 2)
    metrics["sequences_per_second"] = round(len(y) / max(elapsed, 1e-9), 2)
    per_type = per_type_recall([data.types[i] for i in keep], y, scores >= detector.threshold)
    metrics["recall_by_type"] = {
        t: {"n": v["support"], "recall": v["rate"]} for t, v in per_type.items() if t != "normal"
    }
    return metrics


# ----------------------------------------------------------------------------- entry point


def detector_config(args: TrainArgs) -> DetectorConfig:
    """The model config a run builds: the run's detector options."""
    return DetectorConfig(**args.options())


def hold_out_normal(train: Prepared, args: TrainArgs, rng: random.Random) -> tuple[list[int], list[int], set[int]]:
    """The normal (or unlabeled) sequences to train on, those held out of all training as the reference of the
    score normalization (the training ones where too few), and the held-out set (empty then)."""
    normal_idx = [i for i, y in enumerate(train.labels) if y != 1]
    dropped = len(train.labels) - len(normal_idx)
    if args.unsupervised and dropped:
        logger.warning("label-free training: dropping %d sequences labeled anomalous", dropped)
    rng.shuffle(normal_idx)
    n_calib = min(1000, max(1, int(args.calib_fraction * len(normal_idx)))) if len(normal_idx) > 10 else 0
    calib_idx, normal_idx = normal_idx[:n_calib], normal_idx[n_calib:]
    if not calib_idx:  # too few normal sequences to hold any out: normalize on the training ones
        calib_idx = list(normal_idx)
    return normal_idx, calib_idx, set(calib_idx) if n_calib else set()


def build_detector(
    config: DetectorConfig, normal_lines: Sequence[Sequence[str]], normalizer: Normalizer, args: TrainArgs
) -> MoEBertDetector:
    """A fresh detector: its line classes the most frequent normal training lines, on ``args.device``."""
    if args.line_vocab_max > 0:
        counts = Counter(line for seq in normal_lines for line in seq)
        config.line_vocab = sorted(counts, key=lambda line: (-counts[line], line))[: args.line_vocab_max]
    tokenizer = build_tokenizer(config)
    model = build_model(config, tokenizer).to(args.device)
    return MoEBertDetector(model, tokenizer, normalizer)


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

    normal_idx, calib_idx, held_out = hold_out_normal(train, args, rng)
    normal_lines = [train.lines[i] for i in normal_idx]
    detector = build_detector(config, normal_lines, normalizer, args)
    model = detector.model
    # training keeps the rows of its sequences for the whole run: the line cache never starts afresh
    cache_limit, detector.vectors.max_lines = detector.vectors.max_lines, sys.maxsize
    batcher = Batcher(detector, rng, gen)
    t_enc = time.perf_counter()
    normal = batcher.encode(normal_lines)
    logger.info(
        "detector: %s line encoder, %.1fM parameters (%.1fM trainable); %d normal sequences, %d distinct lines "
        "(encoded in %.1f s)",
        config.encoder, count_parameters(model) / 1e6, count_parameters(model, True) / 1e6, len(normal),
        len(detector.vectors), time.perf_counter() - t_enc,
    )  # fmt: skip
    history: dict[str, Any] = {}
    line_modeling_phase(batcher, normal, args, rng, history)
    t_mlm = time.perf_counter()
    if args.unsupervised:
        oneclass_phase(batcher, normal_lines, normal, args, rng, history)
    else:
        labeled = Prepared(
            [x for i, x in enumerate(train.lines) if i not in held_out],
            [y for i, y in enumerate(train.labels) if i not in held_out],
            [t for i, t in enumerate(train.types) if i not in held_out],
        )
        supervised_phase(batcher, labeled, args, rng, history)
    t_head = time.perf_counter()
    model.eval()
    detector.vectors.max_lines = cache_limit

    cal = detector.calibration
    cal.mode = "unsupervised" if args.unsupervised else "supervised"
    cal.knn_k, cal.contamination = args.knn_k, args.contamination
    bank_lines = list({tuple(x): x for x in normal_lines}.values())[: args.bank_size]
    notes = calibrate(detector, bank_lines, [train.lines[i] for i in calib_idx], val, args)
    t_cal = time.perf_counter()
    cpu_train = time.process_time() - cpu0

    seconds = {
        "lines": round(t_mlm - t0, 1),
        "head": round(t_head - t_mlm, 1),
        "calibration": round(t_cal - t_head, 1),
        "train_total": round(t_cal - t0, 1),  # data checks to calibrated detector
        "train_process_cpu": round(cpu_train, 1),  # CPU time of this process (all threads)
    }
    metrics: dict[str, Any] = {
        "mode": cal.mode,
        "train_file": str(args.train_file),
        "n_train_sequences": len(train.lines),
        "n_normal_sequences": len(normal),
        "distinct_lines": len(detector.vectors),
        "seconds": seconds,
        "threads": torch.get_num_threads(),
        "history": history,
        "calibration": {**cal.to_dict(), **notes},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(args).items()},
    }
    return save_with_metrics(detector, metrics, batcher, normal, val, test, args.output_dir)


def save_with_metrics(
    detector: MoEBertDetector, metrics: dict[str, Any], batcher: Batcher, normal: Sequence[Encoded],
    val: Prepared | None, test: Prepared | None, output_dir: Path,
) -> Path:  # fmt: skip
    """Expert usage and the validation and test metrics added to the run's ``metrics``; the artifact saved."""
    started = time.perf_counter()
    metrics["expert_usage"] = expert_usage(batcher, normal)
    if val is not None:
        metrics["val"] = evaluate(detector, val)
        metrics["val_used_for_calibration"] = detector.calibration.threshold_source == "validation"
    if test is not None:
        metrics["test"] = evaluate(detector, test)
    metrics["seconds"]["evaluation"] = round(time.perf_counter() - started, 1)
    detector.metrics = metrics
    out = detector.save_pretrained(output_dir)
    logger.info("saved %s (version %s); trained in %.0f s", out, detector.version, metrics["seconds"]["train_total"])
    return out
