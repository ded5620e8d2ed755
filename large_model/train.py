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
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from core.cli_args import add_dataclass_arguments, check_profile, given, with_profile
from core.errors import DataError, ModelError
from core.io import write_json, write_jsonl
from core.labels import OTHER
from large_model.bundled import resolve_base
from large_model.encoding import PROMPT_VERSION, Example, PromptEncoder, keeps_text, load_examples, split_examples
from large_model.evidence import FLOW_PROFILE_FILE, REFERENCE_FILE, FlowProfile, load_reference
from large_model.inference import Explainer
from large_model.quant import BACKENDS, TrainingModel, load_for_training
from large_model.schema import LabelSet

log = logging.getLogger(__name__)

EXPLAINER_META = "explainer.json"
REAL_FILE = "real_anomalies_train.jsonl"  # data_gen/real_anomalies.py writes it beside the synthetic data
CHECKPOINTS = "checkpoints"


# Training budgets by name: the fields a profile sets where the run does not set them. "quick" is make demo's
# minutes-long run (the same code path: a smaller sample, fewer steps, shorter prompts, fewer calibration
# records); its held-out category accuracy is printed by the demo and quoted in the README.
TRAIN_PROFILES: dict[str, dict[str, Any]] = {
    "full": {},
    "quick": {
        "train_limit": 66,
        "max_steps": 200,
        "max_minutes": 4.0,
        "text_fraction": 0.5,
        "max_prompt_tokens": 640,
        "calibrate_examples": 40,
        "save_every": 0,
    },
}


@dataclass
class TrainLargeArgs:
    """Arguments of ``train-large`` (CLI flags of the same names, dashes for underscores)."""

    data: Path = Path("data/instructions_chat.jsonl")
    labels: Path | None = None  # default: labels.json beside the data, else the built-in label set
    output: Path = Path("artifacts/explainer")
    base: str | None = None  # hub id, folder or "bundled"; default settings.llm_base
    backend: str = "auto"
    device: str = "auto"
    quantize: bool = True
    dtype: str = "auto"
    lora_r: int = 16
    lora_alpha: int | None = None
    lora_dropout: float = 0.05
    lr: float = 4e-3
    label_weight: float = 3.0  # loss weight of the category and severity tokens (1: plain mean)
    lora_layers: int = 4  # LoRA on the top N decoder layers only (0: all): no backward below them
    feature_cache: bool = True  # run the frozen layers below the LoRA once per example, train on their output
    text_fraction: float = 1.0  # share of examples that keep the whole answer; the rest teach the labels only
    batch_size: int = 2
    grad_accum: int = 1
    max_steps: int = 960
    max_minutes: float = 45.0  # the caching pass and the loop stop at this budget (0: none)
    warmup_steps: int = 6
    weight_decay: float = 0.0
    max_seq_len: int = 1344
    max_prompt_tokens: int = 1344
    holdout_fraction: float = 0.2
    limit: int | None = None
    train_limit: int | None = 400  # a seeded sample of the training part, seen for several epochs (0/None: all)
    sample: str = "balanced"  # how --train-limit samples: balanced (even across categories) or random
    save_every: int = 40
    keep_checkpoints: int = 2
    resume: bool = False
    gradient_checkpointing: bool = False
    seed: int = 42
    progress: bool = True
    reference: Path | None = None  # normal runs for the flow comparison; default: normal_reference.jsonl beside --data
    evidence: bool = True  # the comparison with normal runs in every prompt (needs a reference)
    real: Path | None = None  # real-log anomalies (category other); default: real_anomalies_train.jsonl beside --data
    use_real: bool = True  # --no-real: the synthetic records alone
    calibrate_examples: int = 120  # held-out records that calibrate the category threshold (0: none)
    other_quantile: float = 0.02  # share of held-out known-category records allowed below the threshold
    profile: str = "full"  # recorded in explainer.json; for_profile / --profile quick set the budgets of TRAIN_PROFILES

    def __post_init__(self) -> None:
        check_profile(TRAIN_PROFILES, self.profile)

    @classmethod
    def for_profile(cls, profile: str = "full", **kwargs: Any) -> TrainLargeArgs:
        """The arguments of a run with ``profile``'s budgets (:data:`TRAIN_PROFILES`) where ``kwargs`` set none."""
        return cls(**with_profile(TRAIN_PROFILES, profile, kwargs))


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


def calibrate_threshold(
    output: Path, held: Sequence[Example], args: TrainLargeArgs, device: str
) -> dict[str, Any] | None:
    """The category threshold: the ``other_quantile`` quantile of the confidence of held-out records of a
    known category, scored by the saved explainer as inference loads it; with what it does on the held-out
    records (known ones kept confident, real ones answered ``other``). None without held-out records."""
    known = [e for e in held if e.category != OTHER and e.log_entries is not None]
    real = [e for e in held if e.category == OTHER and e.log_entries is not None]
    if args.calibrate_examples <= 0 or not known:
        return None
    rng = random.Random(args.seed)
    known = rng.sample(known, min(args.calibrate_examples, len(known)))
    explainer = Explainer.from_pretrained(output, device=device)
    explainer.category_threshold = None

    def scored(rows: Sequence[Example]) -> tuple[list[Example], list[tuple[str, float]]]:
        kept, out = [], []
        for e in rows:
            try:
                x = explainer.explain_detailed(e.log_entries or [], e.lang, generate=False).explanation
            except DataError as exc:  # a record the inference prompt cannot hold
                log.warning("calibration: %s skipped (%s)", e.sequence_id, exc)
                continue
            kept.append(e)
            out.append((x.category, float(x.confidence or 0.0)))
        return kept, out

    known, known_scores = scored(known)
    real, real_scores = scored(real)
    if not known:
        return None
    confidences = sorted(c for _, c in known_scores)
    threshold = confidences[min(len(confidences) - 1, int(args.other_quantile * len(confidences)))]
    result = {
        "category_threshold": threshold,
        "examples": len(known),
        "quantile": args.other_quantile,
        "known_accuracy": sum(c == e.category for (c, _), e in zip(known_scores, known, strict=True)) / len(known),
        # what inference answers: the category where confident, else other
        "known_accuracy_thresholded": sum(
            c == e.category and conf >= threshold for (c, conf), e in zip(known_scores, known, strict=True)
        )
        / len(known),
        "known_confident": sum(c >= threshold for _, c in known_scores) / len(known),
        "real_examples": len(real),
        "real_other": (sum(c == OTHER or conf < threshold for c, conf in real_scores) / len(real) if real else None),
    }
    log.info("category threshold %.4f calibrated on %d held-out records: %s", threshold, len(known), result)
    return result


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


def _lr_at(step: int, args: TrainLargeArgs, time_fraction: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak, by steps or by the time budget used, whichever is further."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    span = max(1, args.max_steps - args.warmup_steps)
    progress = min(1.0, max((step - args.warmup_steps) / span, time_fraction))
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


BUCKET_BATCHES = 8  # batches drawn together and grouped by length (less padding)


def _batches(
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


def _collate(items: Sequence[Sequence[Sequence[Any]]], pad_id: int, device: str) -> dict[str, torch.Tensor]:
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


def _inner(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def answer_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Weighted next-token cross-entropy over the answer tokens only.

    The output head runs on the answer positions alone: the prompt is most of each sequence, and
    its logits (vocabulary-wide) would cost memory and time for nothing.
    """
    decoder = _inner(model).get_decoder()
    hidden = decoder(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state  # (B, T, H)
    return _head_loss(model, hidden, batch)


def _head_loss(model: Any, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """:func:`answer_loss` from the decoder's last hidden states ``(B, T, H)``."""
    head = _inner(model).get_output_embeddings()
    targets = batch["labels"][:, 1:]  # (B, T-1)
    weights = batch["weights"][:, 1:]  # (B, T-1)
    chosen = targets != -100  # (B, T-1)
    logits = head(hidden[:, :-1][chosen])  # (N, V)
    losses = torch.nn.functional.cross_entropy(logits.float(), targets[chosen], reduction="none")  # (N,)
    w = weights[chosen]
    return (losses * w).sum() / w.sum().clamp_min(1e-6)


class FeatureCache:
    """The output of the frozen decoder layers below the LoRA, computed once per example.

    With LoRA on the top ``lora_layers`` layers only, the layers below are frozen and
    deterministic (no dropout): what they make of an example never changes while training. They
    run once per example (no gradient), their output is kept, and every step runs the adapted top
    layers alone on it, fed as ``inputs_embeds`` to the decoder with its layer list cut to those
    layers. A small sample can then be seen for many epochs: on one CPU core, with LoRA on the top
    4 of 30 layers, a step costs ~12 layer passes per token (4 forward, 8 backward) instead of ~38.
    The losses are the same as without the cache (checked on the first step; the run falls back
    to full steps if they differ).
    """

    def __init__(self, model: Any, split: int) -> None:
        self.decoder = _inner(model).get_decoder()
        self.layers = self.decoder.layers
        self.split = split
        self.bottom = torch.nn.ModuleList(list(self.layers)[:split])
        self.top = torch.nn.ModuleList(list(self.layers)[split:])
        if any(p.requires_grad for p in self.bottom.parameters()):
            raise ModelError("the feature cache needs the layers below the LoRA frozen")
        self.features: dict[int, torch.Tensor] = {}
        self.seconds = 0.0

    @classmethod
    def for_run(cls, tm: TrainingModel, args: TrainLargeArgs) -> FeatureCache | None:
        """A cache where it applies: peft backend, LoRA on the top layers only, no checkpointing."""
        if not args.feature_cache or tm.backend == "unsloth" or args.gradient_checkpointing:
            return None
        decoder = _inner(tm.model).get_decoder()
        layers = getattr(decoder, "layers", None)
        if not isinstance(layers, torch.nn.ModuleList) or not hasattr(decoder, "norm"):
            log.info("feature cache off: the decoder has no plain layer list")
            return None
        n = len(layers)
        if args.lora_layers <= 0 or args.lora_layers >= n:
            return None
        return cls(tm.model, n - args.lora_layers)

    @contextmanager
    def _running(self, layers: torch.nn.ModuleList, final_norm: bool) -> Iterator[None]:
        """The decoder with only ``layers`` (and an identity for its final norm unless ``final_norm``)."""
        norm = self.decoder.norm
        self.decoder.layers = layers
        if not final_norm:
            self.decoder.norm = torch.nn.Identity()
        try:
            yield
        finally:
            self.decoder.layers = self.layers
            self.decoder.norm = norm

    def build(self, encoded: EncodedExamples, pad_id: int, device: str, chunk: int = 8) -> None:
        """Run the frozen layers over every encoded example (``chunk`` at a time, grouped by length)."""
        started = time.perf_counter()
        order = sorted(encoded, key=lambda i: len(encoded[i][0]))
        with torch.no_grad(), self._running(self.bottom, final_norm=False):
            for k in range(0, len(order), chunk):
                part = order[k : k + chunk]
                batch = _collate([encoded[i] for i in part], pad_id, device)
                hidden = self.decoder(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).last_hidden_state  # (B, T, H)
                for row, i in enumerate(part):
                    self.features[i] = hidden[row, : len(encoded[i][0])].clone()  # (T_i, H)
        self.seconds = time.perf_counter() - started
        size = sum(f.numel() * f.element_size() for f in self.features.values())
        log.info(
            "feature cache: the %d frozen layers run once over %d examples in %.1f s (%.0f MiB kept)",
            self.split,
            len(self.features),
            self.seconds,
            size / 2**20,
        )

    def batch_features(self, indices: Sequence[int], width: int) -> torch.Tensor:
        """The cached features of ``indices``, right-padded with zeros to ``width``: ``(B, width, H)``."""
        first = self.features[indices[0]]
        out = first.new_zeros((len(indices), width, first.shape[-1]))
        for row, i in enumerate(indices):
            f = self.features[i]
            out[row, : f.shape[0]] = f
        return out

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """:func:`answer_loss` from the cached features: the top layers, the final norm, the head."""
        with self._running(self.top, final_norm=True):
            hidden = self.decoder(
                inputs_embeds=batch["features"], attention_mask=batch["attention_mask"]
            ).last_hidden_state  # (B, T, H)
        return _head_loss(model, hidden, batch)


def step_loss(tm: TrainingModel, batch: dict[str, torch.Tensor], cache: FeatureCache | None = None) -> torch.Tensor:
    """The loss of one micro-batch: :func:`answer_loss` (from cached features where given), or the
    model's own where unsloth patched it."""
    if cache is not None and "features" in batch:
        return cache.loss(tm.model, batch)
    if tm.backend == "unsloth":
        return tm.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss
    return answer_loss(tm.model, batch)


def _check_cache(tm: TrainingModel, cache: FeatureCache | None, batch: dict[str, torch.Tensor]) -> FeatureCache | None:
    """The cache, if the first batch's loss from it matches the full forward's; else None (full steps)."""
    if cache is None:
        return None
    devices = [torch.cuda.current_device()] if str(tm.device).startswith("cuda") else []
    losses = []
    for fn in (answer_loss, cache.loss):
        with torch.random.fork_rng(devices=devices):  # the same LoRA dropout masks for both
            torch.manual_seed(0)
            losses.append(float(fn(tm.model, batch).item()))
    full, cached = losses
    tolerance = 1e-3 if batch["features"].dtype == torch.float32 else 3e-2
    if abs(full - cached) > tolerance * max(1.0, abs(full)):
        log.warning("feature cache off: its loss %.5f differs from the full forward's %.5f", cached, full)
        return None
    log.info("feature cache checked on the first batch: loss %.5f (full forward %.5f)", cached, full)
    return cache


def _latest_checkpoint(output: Path) -> Path | None:
    root = output / CHECKPOINTS
    if not root.is_dir():
        return None
    done = [p for p in root.glob("step-*") if (p / "state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def _save_checkpoint(
    tm: TrainingModel, optimizer: torch.optim.Optimizer, output: Path, step: int, state: dict[str, Any], keep: int
) -> None:
    root = output / CHECKPOINTS
    target = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tm.model.save_pretrained(tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    write_json(tmp / "state.json", {**state, "step": step, "torch_rng": torch.get_rng_state().tolist()})
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    finished = sorted((p for p in root.glob("step-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
    for old in finished[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint saved at %s", target)


def _load_checkpoint(tm: TrainingModel, optimizer: torch.optim.Optimizer, checkpoint: Path) -> dict[str, Any]:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(
        str(checkpoint / "adapter_model.safetensors"), device=tm.device if tm.device != "cuda" else "cuda:0"
    )
    result = set_peft_model_state_dict(tm.model, weights)
    unexpected = list(getattr(result, "unexpected_keys", None) or [])
    if unexpected:
        raise ModelError(f"checkpoint {checkpoint} does not fit this model: {unexpected[:3]}")
    optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", map_location=tm.device, weights_only=True))
    state = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
    torch.set_rng_state(torch.tensor(state.pop("torch_rng"), dtype=torch.uint8))
    return dict(state)


def _heldout_rows(held: list[Example]) -> list[dict[str, Any]]:
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


@dataclass
class TrainResult:
    """What a run made: the saved folder, and the trained model still in memory."""

    output: Path
    model: Any
    tokenizer: Any
    metrics: dict[str, Any]


SAMPLES = ("balanced", "random")


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
    if args.train_limit is not None and 0 < args.train_limit < len(train_set):
        train_set = [train_set[i] for i in sample_examples(train_set, args.train_limit, args.seed, args.sample)]
    profile, reference = reference_profile(args)
    return _Run(examples, train_set, held, labels, real, profile, reference)


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
    plan = _batches(len(run.train_set), args.batch_size * args.grad_accum, args.seed, 0, whole_windows)
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
    checkpoint = _latest_checkpoint(output)
    if checkpoint is None:
        log.info("--resume: no checkpoint in %s, starting from step 0", output / CHECKPOINTS)
        return loop
    state = _load_checkpoint(tm, optimizer, checkpoint)
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
    plan = _batches(len(run.train_set), args.batch_size * args.grad_accum, args.seed, loop.start_step,
                    args.max_steps, lengths)  # fmt: skip
    tm.model.train()
    loop_started = time.perf_counter()

    def save_checkpoint(at: int) -> None:
        elapsed = loop.prior_seconds + time.perf_counter() - loop_started
        state = {"history": loop.history, "train_seconds": elapsed, "evidence": run.profile is not None}
        _save_checkpoint(tm, optimizer, output, at, state, args.keep_checkpoints)

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
            batch = _collate([encoded_by[i] for i in chunk], pad_id, tm.device)
            if cache is not None:
                batch["features"] = cache.batch_features(chunk, batch["input_ids"].shape[1])
            if not checked:
                cache = _check_cache(tm, cache, batch)
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
            save_checkpoint(loop.step)
    bar.close()
    if loop.stopped_by_time and args.save_every > 0 and loop.step % args.save_every != 0:
        save_checkpoint(loop.step)
    loop.loop_seconds = time.perf_counter() - loop_started
    loop.train_seconds = loop.prior_seconds + loop.loop_seconds


def _save_explainer(
    args: TrainLargeArgs, tm: TrainingModel, run: _Run, encoder: PromptEncoder
) -> dict[str, Any] | None:
    """The adapter folder: weights, tokenizer, labels, held-out records, flow profile and ``explainer.json``,
    with the category threshold calibrated on the held-out records (returned)."""
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    tm.model.save_pretrained(output)
    tm.tokenizer.save_pretrained(output)
    write_json(output / "labels.json", run.labels.to_dict())
    write_jsonl(output / "heldout.jsonl", _heldout_rows(run.held))
    profile = run.profile
    if profile is not None:
        profile.save(output / FLOW_PROFILE_FILE)
    else:  # one left by an earlier run into this folder would add evidence this model never saw
        (output / FLOW_PROFILE_FILE).unlink(missing_ok=True)
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
    }
    write_json(output / EXPLAINER_META, meta)
    calibration = calibrate_threshold(output, run.held, args, tm.device)
    if calibration is not None:
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


# The help of train-large's flags (one per TrainLargeArgs field; a field without an entry shows its default alone).
TRAIN_HELP: dict[str, str] = {
    "data": "instruction records (JSONL/JSON)",
    "labels": "labels.json (default: beside --data, else the built-in label set)",
    "output": "the adapter folder to write",
    "base": "hub id, model folder or 'bundled' (default settings.llm_base)",
    "device": "auto, cpu, cuda",
    "dtype": "compute dtype: auto, bf16, fp16, fp32",
    "lora_alpha": "default 2 x r",
    "label_weight": "loss weight of the category and severity tokens (1: plain mean)",
    "lora_layers": "LoRA on the top N decoder layers only (0: all)",
    "feature_cache": "run the frozen layers below the LoRA once per example (--no-feature-cache: every layer, every step)",
    "text_fraction": "share of examples trained on the whole answer (the rest: category and severity only)",
    "max_minutes": "stop the training loop after this many minutes (0: no limit); the LR schedule follows",
    "limit": "use only the first N records",
    "train_limit": "train on a seeded sample of N training examples, for several epochs (0: all of them)",
    "sample": "how --train-limit samples: balanced (the categories in turn, as even as the data allows) or random",
    "save_every": "checkpoint every N steps (0: never)",
    "resume": "continue from the last checkpoint in --output",
    "gradient_checkpointing": "recompute activations (less memory)",
    "reference": f"normal runs (sequence records) for the flow comparison in the prompts (default: {REFERENCE_FILE} "
    "beside --data; absent: trained without it)",
    "evidence": "the comparison with normal runs in the prompts (--no-evidence: none)",
    "real": f"real-log anomalies, category 'other' (default: {REAL_FILE} beside --data where it exists; "
    "data_gen/real_anomalies.py writes it)",
    "calibrate_examples": "held-out records that calibrate the category threshold below which the answer is 'other' "
    "(0: none)",
    "other_quantile": "share of held-out known-category records allowed below the threshold",
    "profile": "training budget: full (the default recipe) or quick (make demo's minutes-long run: "
    + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in TRAIN_PROFILES["quick"].items())
    + ", where not given)",
}


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``train-large`` flags, one per :class:`TrainLargeArgs` field (dashes for underscores).

    Two booleans keep their short negative flags: ``--no-quant`` (``quantize``) and ``--no-real``
    (``use_real``; ``--real`` names the file). A flag not given takes the profile's value, else the default.
    """
    add_dataclass_arguments(
        parser,
        TrainLargeArgs,
        TRAIN_HELP,
        skip=("quantize", "use_real"),
        choices={"backend": BACKENDS, "sample": SAMPLES, "profile": TRAIN_PROFILES},
    )
    parser.add_argument("--no-quant", dest="quantize", action="store_false", default=None,
                        help="plain LoRA on an unquantized base")  # fmt: skip
    parser.add_argument("--no-real", dest="use_real", action="store_false", default=None, help="train on --data alone")
    return parser


def args_from_namespace(ns: argparse.Namespace) -> TrainLargeArgs:
    """A :class:`TrainLargeArgs` from parsed flags: the flags given, the profile's budgets where none is."""
    options = given(ns, [f.name for f in fields(TrainLargeArgs)])
    return TrainLargeArgs.for_profile(options.pop("profile", "full"), **options)


def run(ns: argparse.Namespace) -> int:
    """The ``train-large`` handler: trains, prints the output folder; 0 on success."""
    path = train_explainer(args_from_namespace(ns))
    print(path)
    return 0
