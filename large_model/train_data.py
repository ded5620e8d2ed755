"""The examples of a ``train-large`` run: read (synthetic and real-log records), the evidence's reference
profile, the seeded training sample, the encoded prompts, the batches of the steps and the held-out rows."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from core.errors import DataError
from core.labels import OTHER
from large_model.encoding import Example, PromptEncoder, keeps_text, load_examples
from large_model.evidence import REFERENCE_FILE, FlowProfile, load_reference
from large_model.schema import LabelSet
from large_model.train_args import REAL_FILE, SAMPLES, TrainLargeArgs

log = logging.getLogger(__name__)


def _labels_for(args: TrainLargeArgs) -> LabelSet:
    if args.labels is not None:
        return LabelSet.from_json(args.labels)
    beside = Path(args.data).parent / "labels.json"
    return LabelSet.from_json(beside) if beside.is_file() else LabelSet()


def real_path(args: TrainLargeArgs) -> Path | None:
    """The real-log records of the run (an explicit ``--real`` must exist; the default one may be absent)."""
    if not args.use_real:
        return None
    if args.real is not None:
        if not Path(args.real).is_file():
            raise DataError("no such file (--real)", args.real)
        return Path(args.real)
    beside = Path(args.data).parent / REAL_FILE
    if not beside.is_file():
        log.warning(
            "no real-log anomalies at %s: the explainer learns the synthetic taxonomy only and has no 'other' "
            "category (write them with data_gen/real_anomalies.py, or pass --real FILE; --no-real silences this)",
            beside,
        )
        return None
    return beside


def load_training_examples(args: TrainLargeArgs) -> tuple[list[Example], LabelSet, Path | None]:
    """The run's examples (synthetic, then the real-log ones), its label set (with :data:`OTHER` where real
    records come in) and the real file used."""
    labels = _labels_for(args)
    real = real_path(args)
    if real is not None and OTHER not in labels.categories:
        labels = LabelSet((*labels.categories, OTHER), labels.severities)
    examples = load_examples(args.data, labels, args.limit)
    if real is not None:
        extra = load_examples(real, labels)
        log.info("%d real-log anomalies from %s (category %s)", len(extra), real, OTHER)
        examples += extra
    return examples, labels, real


def reference_profile(args: TrainLargeArgs) -> tuple[FlowProfile | None, Path | None]:
    """The flow profile of the run's reference runs and the file it came from; ``(None, None)`` without evidence.

    An explicit ``--reference`` must exist; the default one (``normal_reference.jsonl`` beside
    ``--data``) may be absent: a warning, and the run trains without evidence.
    """
    if not args.evidence:
        log.info("flow evidence off (--no-evidence): prompts without the comparison with normal runs")
        return None, None
    path = Path(args.reference) if args.reference is not None else Path(args.data).parent / REFERENCE_FILE
    if args.reference is None and not path.is_file():
        log.warning(
            "no reference of normal runs at %s: training WITHOUT the flow evidence (write it with "
            "data_gen/anomaly_classification_generator.py, or pass --reference FILE; --no-evidence silences this)",
            path,
        )
        return None, None
    profile = load_reference(path)
    log.info("flow evidence: reference %s, %s", path, profile.describe())
    if not profile.usable_groups:
        log.warning(
            "no flow of %s has %d normal runs: every prompt will say there is nothing to compare",
            path,
            profile.min_runs,
        )
    return profile, path


# (input_ids, labels, weights) by training example index
EncodedExamples = dict[int, tuple[list[int], list[int], list[float]]]


def encode_examples(
    encoder: PromptEncoder, examples: Sequence[Example], indices: Sequence[int], args: TrainLargeArgs
) -> EncodedExamples:
    """``(input_ids, labels, weights)`` of the examples at ``indices``: whole answers for a hash-chosen share."""
    encoded: EncodedExamples = {}
    for i in indices:
        e = examples[i]
        full = keeps_text(e.sequence_id, args.text_fraction, args.seed)
        encoded[i] = encoder.encode_weighted(e, args.max_seq_len, args.label_weight, labels_only=not full)
    return encoded


def sample_examples(examples: Sequence[Example], n: int, seed: int, how: str = "balanced") -> list[int]:
    """Indices of a seeded sample of ``n`` examples, in their order.

    ``balanced``: the categories take turns (each category's examples in a seeded shuffle), so a
    200-example sample of 10 categories holds 20 of each where the data has them; ``random``: a
    plain seeded sample.
    """
    if how not in SAMPLES:
        raise DataError(f"unknown sample {how!r} (use one of {', '.join(SAMPLES)})")
    rng = random.Random(seed)
    if how == "random" or n >= len(examples):
        return sorted(rng.sample(range(len(examples)), min(n, len(examples))))
    by_category: dict[str, list[int]] = {}
    for index, example in enumerate(examples):
        by_category.setdefault(example.category, []).append(index)
    queues = [by_category[c] for c in sorted(by_category)]
    for queue in queues:
        rng.shuffle(queue)
    keep: list[int] = []
    while len(keep) < n:
        for queue in queues:
            if queue and len(keep) < n:
                keep.append(queue.pop())
    return sorted(keep)


BUCKET_BATCHES = 8  # batches drawn together and grouped by length (less padding)


def batches(
    n: int, batch_size: int, seed: int, start_step: int, steps: int, lengths: Sequence[int] | None = None
) -> list[list[int]]:
    """The index batches of steps ``start_step..steps-1``: epoch-wise shuffles, reproducible from the seed.

    With ``lengths``, every run of :data:`BUCKET_BATCHES` batches is regrouped by length (padding
    costs compute on a CPU), then put back in a shuffled order.
    """
    out: list[list[int]] = []
    order: list[int] = []
    epoch = 0
    rng = random.Random(seed)
    while len(out) < steps:
        if len(order) < batch_size * BUCKET_BATCHES:
            perm = list(range(n))
            random.Random(seed + epoch).shuffle(perm)
            order.extend(perm)
            epoch += 1
            continue
        window, order = order[: batch_size * BUCKET_BATCHES], order[batch_size * BUCKET_BATCHES :]
        if lengths is not None:
            window.sort(key=lambda i: lengths[i])
        group = [window[k : k + batch_size] for k in range(0, len(window), batch_size)]
        if lengths is not None:
            rng.shuffle(group)
        out.extend(group)
    return out[start_step:steps]


def collate(items: Sequence[Sequence[Sequence[Any]]], pad_id: int, device: str) -> dict[str, torch.Tensor]:
    """Right-padded tensors from ``(ids, labels[, weights])`` items."""
    width = max(len(item[0]) for item in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(items), width), -100, dtype=torch.long)  # (B, T)
    weights = torch.zeros((len(items), width), dtype=torch.float32)  # (B, T)
    mask = torch.zeros((len(items), width), dtype=torch.long)  # (B, T)
    for row, item in enumerate(items):
        ids, labs = item[0], item[1]
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        weights[row, : len(ids)] = torch.tensor(item[2]) if len(item) > 2 else (torch.tensor(labs) != -100).float()
        mask[row, : len(ids)] = 1
    return {
        "input_ids": input_ids.to(device),
        "labels": labels.to(device),
        "attention_mask": mask.to(device),
        "weights": weights.to(device),
    }


def heldout_rows(held: list[Example]) -> list[dict[str, Any]]:
    """The held-out examples as the records of ``heldout.jsonl`` (what ``evaluate-large`` reads)."""
    rows = []
    for e in held:
        row: dict[str, Any] = {
            "sequence_id": e.sequence_id,
            "category": e.category,
            "severity": e.severity,
            "lang": e.lang,
        }
        if e.log_entries is not None:
            row["log_entries"] = e.log_entries
        else:
            row["messages"] = e.messages
        row.update(e.reference)
        rows.append(row)
    return rows
