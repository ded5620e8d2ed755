"""Stage 4 of the deep-feature clustering: a dual-input multi-class model trained on cluster pseudo-labels.

    event ids (B, T) -> embedding -> LSTM -> h_t (B, T, H) --+--> next-event head (B, T, V)
                                                             +--> h_last -> proj (B, F)  ~ consistency with x
    deep feature x (B, F) -> MLP (B, H) ---------------------+--> [h_last ; mlp(x)] -> class head (B, C)

Loss: ``alpha * next-event CE + beta * class CE + gamma * consistency``, where the consistency term
is the MSE (or 1 - cosine) between the projected LSTM summary and the given deep feature, so the
sequence encoder learns to carry what the deep feature says and the classifier still works when
the two disagree a little. Pure torch; the rest of :mod:`small_model.clusters` owns the features,
the pseudo-labels and the artifact folder.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.templates import UNKNOWN_TEMPLATE
from small_model.clusters.config import ClassifierConfig

logger = logging.getLogger(__name__)

PAD_ID, UNK_ID = 0, 1  # event vocabulary: template id t >= 1 is index t + 1


def event_index(template_ids: Sequence[int], vocab_size: int) -> list[int]:
    """The classifier's input ids of a sequence's template ids (unseen or out-of-vocabulary ones are unknown)."""
    return [t + 1 if t != UNKNOWN_TEMPLATE and t + 1 < vocab_size else UNK_ID for t in template_ids]


@dataclass
class DualOutput:
    """Class logits, next-event logits, the fused hidden feature and (with labels) the losses."""

    logits: torch.Tensor  # (B, C)
    next_logits: torch.Tensor  # (B, T, V)
    projected: torch.Tensor  # (B, F)
    loss: torch.Tensor | None = None
    parts: dict[str, float] | None = None


class DualInputClassifier(nn.Module):
    """Event-sequence LSTM + deep-feature MLP, fused into a cluster classifier."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.embedding_dim, padding_idx=PAD_ID)
        self.lstm = nn.LSTM(
            c.embedding_dim,
            c.hidden_size,
            num_layers=c.num_layers,
            batch_first=True,
            dropout=c.dropout if c.num_layers > 1 else 0.0,
        )
        self.next_head = nn.Linear(c.hidden_size, c.vocab_size)
        self.proj = nn.Sequential(
            nn.Linear(c.hidden_size, c.hidden_size), nn.ReLU(), nn.Linear(c.hidden_size, c.feature_dim)
        )
        self.feat_mlp = nn.Sequential(nn.Linear(c.feature_dim, c.hidden_size), nn.ReLU(), nn.Dropout(c.dropout))
        self.cls_head = nn.Sequential(
            nn.Linear(2 * c.hidden_size, c.hidden_size),
            nn.ReLU(),
            nn.Dropout(c.dropout),
            nn.Linear(c.hidden_size, c.num_classes),
        )

    def forward(
        self,
        ids: torch.Tensor,
        lengths: torch.Tensor,
        features: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> DualOutput:
        """Class and next-event logits; with ``labels`` also the combined loss and its parts."""
        c = self.config
        x = self.embed(ids)  # (B, T, E)
        out, _ = self.lstm(x)  # (B, T, H)
        last = out[torch.arange(len(ids)), (lengths - 1).clamp_min(0)]  # (B, H)
        next_logits = self.next_head(out)  # (B, T, V)
        projected = self.proj(last)  # (B, F)
        fused = torch.cat([last, self.feat_mlp(features)], dim=-1)  # (B, 2H)
        logits = self.cls_head(fused)  # (B, C)
        if labels is None:
            return DualOutput(logits, next_logits, projected)
        # next event: position t predicts ids[t + 1]; padding is ignored
        target = torch.full_like(ids, -100)
        target[:, :-1] = ids[:, 1:]
        target[target == PAD_ID] = -100
        next_loss = F.cross_entropy(
            next_logits.reshape(-1, c.vocab_size).float(), target.reshape(-1), ignore_index=-100
        )
        if not torch.isfinite(next_loss):  # every sequence of the batch has a single event
            next_loss = torch.zeros((), dtype=torch.float32)
        cls_loss = F.cross_entropy(logits.float(), labels)
        if c.consistency == "mse":
            cons = F.mse_loss(projected.float(), features.float())
        else:
            cons = (1.0 - F.cosine_similarity(projected.float(), features.float(), dim=-1)).mean()
        loss = c.alpha * next_loss + c.beta * cls_loss + c.gamma * cons
        parts = {
            "next": float(next_loss.detach()),
            "class": float(cls_loss.detach()),
            "consistency": float(cons.detach()),
        }
        return DualOutput(logits, next_logits, projected, loss, parts)


def pad_ids(sequences: Sequence[Sequence[int]], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded id tensor (B, T) and lengths (B,); long sequences keep their last ``max_len`` ids."""
    clipped = [list(s)[-max_len:] or [UNK_ID] for s in sequences]
    width = max(len(s) for s in clipped) if clipped else 1
    ids = torch.zeros((len(clipped), width), dtype=torch.long)
    for i, s in enumerate(clipped):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    lengths = torch.tensor([len(s) for s in clipped], dtype=torch.long)
    return ids, lengths


def train_classifier(
    ids: Sequence[Sequence[int]],
    features: np.ndarray,
    labels: np.ndarray,
    config: ClassifierConfig,
    progress: bool = False,
) -> tuple[DualInputClassifier, list[dict[str, float]]]:
    """Fit the dual-input model on pseudo-labels; returns the model (eval mode) and per-epoch losses."""
    from tqdm.auto import tqdm

    if len(ids) != len(features) or len(ids) != len(labels):
        raise ValueError("ids, features and labels must have the same length")
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    model = DualInputClassifier(config)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    feats = torch.as_tensor(np.asarray(features, dtype=np.float32))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    order = list(range(len(ids)))
    history: list[dict[str, float]] = []
    model.train()
    for _ in tqdm(range(config.epochs), desc="cluster model", disable=not progress, leave=False):
        rng.shuffle(order)
        sums = {"loss": 0.0, "next": 0.0, "class": 0.0, "consistency": 0.0}
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            batch_ids, lengths = pad_ids([ids[i] for i in idx], config.max_len)
            out = model(batch_ids, lengths, feats[idx], y[idx])
            assert out.loss is not None and out.parts is not None
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sums["loss"] += float(out.loss.detach()) * len(idx)
            for key, value in out.parts.items():
                sums[key] += value * len(idx)
        history.append({k: round(v / max(len(order), 1), 5) for k, v in sums.items()})
    model.eval()
    if history:
        logger.info("cluster model: final loss %s", history[-1])
    return model, history


@torch.inference_mode()
def predict_proba(
    model: DualInputClassifier, ids: Sequence[Sequence[int]], features: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """Class probabilities (N, C)."""
    model.eval()
    feats = torch.as_tensor(np.asarray(features, dtype=np.float32))
    out = np.zeros((len(ids), model.config.num_classes), dtype=np.float32)
    for start in range(0, len(ids), batch_size):
        batch_ids, lengths = pad_ids(ids[start : start + batch_size], model.config.max_len)
        logits = model(batch_ids, lengths, feats[start : start + batch_size]).logits
        out[start : start + len(batch_ids)] = torch.softmax(logits.float(), dim=-1).numpy()
    return out
