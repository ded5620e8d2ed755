"""DeepLog edit gains, part of the structure block of the deep features: how much more probable the
DeepLog LSTM finds a sequence after its best single edit (an adjacent swap, an inserted event)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

import numpy as np

from core.errors import ModelError
from small_model.detector import Detector

if TYPE_CHECKING:
    from small_model.deeplog import DeepLogDetector


def has_next_event_model(detector: Detector) -> TypeGuard[DeepLogDetector]:
    """Whether the detector predicts the next event of a sequence (DeepLog), which the edit gains need."""
    return detector.kind == "deeplog"


@dataclass
class _Variants:
    """Edited id sequences of one batch and which original sequence/edit kind each belongs to."""

    seqs: list[list[int]] = field(default_factory=list)
    owner: list[int] = field(default_factory=list)
    kind: list[int] = field(default_factory=list)  # 0 swap, 1 insert


def _sequence_nll(model: Any, seqs: Sequence[Sequence[int]], window: int, predict_end: bool, cap: float) -> np.ndarray:
    """Total NLL of each id sequence under a DeepLog LSTM (unknown ids cost ``cap``)."""
    import torch

    from small_model.deeplog import UNK, windows

    if not seqs:
        return np.zeros(0)
    parts = [windows(list(x), window, predict_end) for x in seqs]
    hist = np.concatenate([p[0] for p in parts])  # (P, h)
    tgt = np.concatenate([p[1] for p in parts])  # (P,)
    owner = np.concatenate([np.full(len(p[1]), i, dtype=np.int64) for i, p in enumerate(parts)])
    uniq, inverse = np.unique(hist, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    nll = np.zeros(len(tgt))
    with torch.inference_mode():
        for start in range(0, len(uniq), 4096):
            logp = torch.log_softmax(model(torch.from_numpy(uniq[start : start + 4096])).logits.float(), dim=-1)
            sel = np.where((inverse >= start) & (inverse < start + len(logp)))[0]
            rows = torch.from_numpy(inverse[sel] - start)
            nll[sel] = (-logp[rows, torch.from_numpy(tgt[sel])]).double().numpy()
    nll = np.where(tgt == UNK, cap, np.minimum(nll, cap))
    return np.bincount(owner, weights=nll, minlength=len(seqs))


def deeplog_edit_gains(
    detector: DeepLogDetector, sequences: Sequence[Sequence[str]], candidates: int = 3
) -> np.ndarray:
    """(N, 2) NLL gains of the best adjacent swap and the best single insertion under a DeepLog detector.

    A gain is how much more probable the sequence becomes (in nats) after the edit; a missing step
    shows as an insertion gain, two steps out of order as a swap gain.
    """
    import torch

    from small_model.deeplog import PAD, UNK

    cfg = detector.config
    model = detector.model
    if model is None:
        raise ModelError("the DeepLog detector is not trained")
    ids = detector.template_ids(sequences)
    out = np.zeros((len(ids), 2))
    chunk = 256
    for c0 in range(0, len(ids), chunk):
        block = ids[c0 : c0 + chunk]
        base = _sequence_nll(model, block, cfg.window, cfg.predict_end, cfg.nll_cap)
        # insertion candidates: the most probable known events at every position
        hists: list[list[int]] = []
        for x in block:
            padded = [PAD] * cfg.window + list(x)
            hists.extend(padded[t : t + cfg.window] for t in range(len(x) + 1))
        with torch.inference_mode():
            logits = model(torch.tensor(hists, dtype=torch.long)).logits.float().clone()
            logits[:, : UNK + 1] = -torch.inf  # never insert pad, end or unknown
        top = torch.topk(logits, k=min(candidates, logits.shape[1] - UNK - 1), dim=-1).indices.numpy()
        var = _Variants()
        row = 0
        for i, x in enumerate(block):
            for t in range(len(x) - 1):
                if x[t] != x[t + 1]:
                    y = list(x)
                    y[t], y[t + 1] = y[t + 1], y[t]
                    var.seqs.append(y)
                    var.owner.append(i)
                    var.kind.append(0)
            for t in range(len(x) + 1):
                for cand in top[row + t]:
                    var.seqs.append([*x[:t], int(cand), *x[t:]])
                    var.owner.append(i)
                    var.kind.append(1)
            row += len(x) + 1
        if var.seqs:
            scores = _sequence_nll(model, var.seqs, cfg.window, cfg.predict_end, cfg.nll_cap)
            gains = base[np.asarray(var.owner)] - scores
            for kind in (0, 1):
                sel = np.asarray(var.kind) == kind
                best = np.full(len(block), 0.0)
                np.maximum.at(best, np.asarray(var.owner)[sel], gains[sel])
                out[c0 : c0 + len(block), kind] = best
    return out
