"""The loss of a ``train-large`` step: over the answer tokens only, from the full forward or from the
:class:`FeatureCache` of the frozen layers below the LoRA."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from core.errors import ModelError
from large_model.quant import TrainingModel
from large_model.train_args import TrainLargeArgs
from large_model.train_data import EncodedExamples, collate

log = logging.getLogger(__name__)


def inner_model(model: Any) -> Any:
    """The model under its PEFT wrapper (the model itself without one)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def answer_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Weighted next-token cross-entropy over the answer tokens only.

    The output head runs on the answer positions alone: the prompt is most of each sequence, and
    its logits (vocabulary-wide) would cost memory and time for nothing.
    """
    decoder = inner_model(model).get_decoder()
    hidden = decoder(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state  # (B, T, H)
    return head_loss(model, hidden, batch)


def head_loss(model: Any, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """:func:`answer_loss` from the decoder's last hidden states ``(B, T, H)``."""
    head = inner_model(model).get_output_embeddings()
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
        self.decoder = inner_model(model).get_decoder()
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
        decoder = inner_model(tm.model).get_decoder()
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
                batch = collate([encoded[i] for i in part], pad_id, device)
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
        return head_loss(model, hidden, batch)


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


def check_cache(tm: TrainingModel, cache: FeatureCache | None, batch: dict[str, torch.Tensor]) -> FeatureCache | None:
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
