"""Score log sequences with a trained MoE-BERT detector folder.

    detector = MoEBertDetector.from_pretrained("artifacts/detector")
    scores = detector.score([["line", "line", ...], ...])      # (N,) in [0, 1]
    flagged = scores >= detector.threshold

Supervised artifacts score with the anomaly head alone (a probability). Label-free artifacts fuse
three scores, each mapped to [0, 1] by a robust z-score against held-out normal sequences and a
sigmoid: the one-class head, the cosine kNN distance of the pooled embedding to a bank of training
embeddings, and the reconstruction score: with a line vocabulary, the worst line of two parts, each
line's NLL standardized per line class on held-out normal sequences: masked line modeling (each line
masked in turn, predicted from all the others) and forward line modeling (each line's next line
predicted from the lines before it, under block-causal attention); without one, the masked-token NLL
under deterministic masking.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from core.errors import ModelError
from core.io import write_json
from core.normalize import Normalizer
from small_model.common import weights_digest
from small_model.data import (
    encode_texts,
    line_index,
    line_keys,
    line_targets,
    maskable,
    next_targets,
    pad_batch,
    sequence_text,
    special_ids,
    strided_masks,
)
from small_model.modeling import CONFIG_NAME, WEIGHTS_NAME, MoEBertForLogAnomaly

logger = logging.getLogger(__name__)

COMPONENTS = ("head", "knn", "recon")
CALIBRATION_NAME = "calibration.json"
NORMALIZER_NAME = "normalizer.json"
BANK_NAME = "embedding_bank.safetensors"
METRICS_NAME = "metrics.json"
HIGH_RISK = 0.85
RiskLevel = Literal["high", "medium", "low"]


# ----------------------------------------------------------------------------- calibration


@dataclass
class ScoreStats:
    """Maps a raw score to [0, 1] by its robust z-score ``z`` against normal sequences.

    ``u = z - offset``; the score is ``0.5 * exp(u)`` below 0 and ``1 - 0.5 / (1 + u)`` above: smooth,
    monotone, 0.5 at ``offset`` robust sigmas, and (unlike a sigmoid) never rounding far outliers to
    exactly 1.0, so very anomalous sequences keep their order and the threshold keeps its resolution.
    """

    center: float = 0.0
    scale: float = 1.0
    offset: float = 3.0

    def apply(self, values: np.ndarray) -> np.ndarray:
        """The normalized score of each raw value."""
        u = (np.asarray(values, dtype=np.float64) - self.center) / max(self.scale, 1e-12) - self.offset
        return np.where(u <= 0, 0.5 * np.exp(np.minimum(u, 0.0)), 1.0 - 0.5 / (1.0 + np.maximum(u, 0.0)))

    @classmethod
    def robust(cls, values: np.ndarray, offset: float = 3.0) -> ScoreStats:
        """Median and a robust spread of normal scores (MAD, or the 50-90% quantile gap when MAD is 0)."""
        v = np.asarray(values, dtype=np.float64)
        center = float(np.median(v))
        mad = float(np.median(np.abs(v - center))) * 1.4826
        upper = float(np.quantile(v, 0.9) - center) / 1.2816
        spread = float(np.std(v))
        scale = max(mad, upper)
        if scale <= 1e-9:
            scale = spread if spread > 1e-9 else 1e-3
        return cls(center=center, scale=scale, offset=offset)


@dataclass
class Calibration:
    """How raw scores become the final score and the decision: weights, threshold, normalization stats."""

    mode: Literal["supervised", "unsupervised"] = "supervised"  # the training track
    fused: bool = False  # False: the score is the head's probability; True: the normalized fusion
    weights: dict[str, float] = field(default_factory=lambda: {"head": 1.0, "knn": 0.0, "recon": 0.0})
    threshold: float = 0.5
    threshold_source: str = "default"  # validation | contamination | default
    stats: dict[str, ScoreStats] = field(default_factory=dict)
    contamination: float = 0.05
    knn_k: int = 1
    recon_reduce: Literal["mean", "max_line", "topk", "max"] = "max"
    # masked line modeling: the mean NLL of each line class on held-out normal sequences and its
    # spread (standard deviation + 0.5). A line's score is its NLL standardized by those, so lines that
    # are unpredictable by nature (a background GC pause at a random place, a duration bucket that
    # varies) do not drown a line out of place
    line_baseline: list[float] | None = None
    line_scale: list[float] | None = None
    # forward line modeling: the same per class of the next line (the line vocabulary, other, end)
    next_baseline: list[float] | None = None
    next_scale: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["stats"] = {k: asdict(v) for k, v in self.stats.items()}
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """Rebuild from :meth:`to_dict` output."""
        d = dict(data)
        d["stats"] = {k: ScoreStats(**v) for k, v in d.get("stats", {}).items()}
        return cls(**d)

    def active(self) -> list[str]:
        """The components with a non-zero weight."""
        return [c for c in COMPONENTS if self.weights.get(c, 0.0) > 0]

    def fuse(self, raw: dict[str, np.ndarray]) -> np.ndarray:
        """The final score in [0, 1]: ``sum_c w_c * normalize_c(raw_c)`` (weights sum to 1)."""
        if not self.fused:
            return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(raw["head"], dtype=np.float64), -60.0, 60.0)))
        total = sum(self.weights.get(c, 0.0) for c in self.active()) or 1.0
        n = len(next(iter(raw.values())))
        out = np.zeros(n, dtype=np.float64)
        for c in self.active():
            out += self.weights[c] / total * self.stats[c].apply(raw[c])
        return out


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """The threshold (midway between neighbouring scores) with the best F1, and that F1."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(1 - y_sorted)
    positives = max(int(y.sum()), 1)
    f1 = 2 * tp / (tp + fp + positives)
    # only cut between distinct scores
    distinct = np.r_[s_sorted[1:] < s_sorted[:-1], True]
    f1 = np.where(distinct, f1, -1.0)
    i = int(np.argmax(f1))
    upper = s_sorted[i]
    lower = s_sorted[i + 1] if i + 1 < len(s_sorted) else upper - 1e-6
    return float((upper + lower) / 2), float(f1[i])


def classification_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Accuracy, precision, recall, F1, ROC-AUC, PR-AUC and the confusion matrix at ``threshold``."""
    from sklearn.metrics import (
        average_precision_score,
        confusion_matrix,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    pred = (s >= threshold).astype(np.int64)
    both = len(np.unique(y)) == 2
    best_thr, best_f1 = best_f1_threshold(y, s) if both else (float("nan"), float("nan"))
    return {
        "n": len(y),
        "n_anomalous": int(y.sum()),
        "threshold": float(threshold),
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "roc_auc": float(roc_auc_score(y, s)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, s)) if both else float("nan"),
        "best_f1_threshold": best_thr,
        "best_f1": best_f1,
        "confusion_matrix": confusion_matrix(y, pred, labels=[0, 1]).tolist(),
    }


def calibrate_fusion(
    raw: dict[str, np.ndarray], labels: np.ndarray, stats: dict[str, ScoreStats], step: float = 0.1
) -> tuple[dict[str, float], float, float]:
    """Grid-search weights on the simplex (maximizing ROC-AUC + best F1) and the best-F1 threshold.

    Returns ``(weights, threshold, objective)``.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels, dtype=np.int64)
    normed = {c: stats[c].apply(raw[c]) for c in COMPONENTS if c in raw and c in stats}
    names = list(normed)
    ticks = round(1 / step)
    best: tuple[float, dict[str, float], float] = (-1.0, {}, 0.5)
    grid = _simplex(len(names), ticks)
    for point in grid:
        w = {c: p / ticks for c, p in zip(names, point, strict=True)}
        fused = sum(w[c] * normed[c] for c in names)
        assert isinstance(fused, np.ndarray)
        thr, f1 = best_f1_threshold(y, fused)
        objective = roc_auc_score(y, fused) + f1
        # prefer balanced weights on ties: a tiny bonus for the entropy of the weights
        entropy = -sum(v * math.log(v) for v in w.values() if v > 0)
        objective += 1e-4 * entropy
        if objective > best[0]:
            best = (objective, w, thr)
    objective, weights, threshold = best
    return {c: float(weights.get(c, 0.0)) for c in COMPONENTS}, float(threshold), float(objective)


def _simplex(dims: int, ticks: int) -> list[tuple[int, ...]]:
    if dims == 1:
        return [(ticks,)]
    out: list[tuple[int, ...]] = []
    for first in range(ticks + 1):
        out.extend((first, *rest) for rest in _simplex(dims - 1, ticks - first))
    return out


def risk_level(score: float, threshold: float, high: float = HIGH_RISK) -> RiskLevel:
    """``high`` above 0.85 (when flagged), ``medium`` at or above the threshold, else ``low``."""
    if score >= threshold:
        return "high" if score > high else "medium"
    return "low"


# ----------------------------------------------------------------------------- the detector


@dataclass
class Detection:
    """One scored sequence."""

    score: float
    is_anomaly: bool
    risk: RiskLevel


class MoEBertDetector:
    """A trained detector: model, tokenizer, normalizer, calibration and (label-free) embedding bank."""

    def __init__(
        self,
        model: MoEBertForLogAnomaly,
        tokenizer: PreTrainedTokenizerBase,
        normalizer: Normalizer | None = None,
        calibration: Calibration | None = None,
        bank: torch.Tensor | None = None,
        metrics: dict[str, Any] | None = None,
        batch_size: int = 32,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.normalizer = normalizer or Normalizer()
        self.calibration = calibration or Calibration()
        self.bank = bank.float() if bank is not None else None  # (Nb, H) raw pooled embeddings
        self.metrics = metrics or {}
        self.batch_size = batch_size
        self._never = special_ids(tokenizer)
        self._line_map = {line: i for i, line in enumerate(model.config.line_vocab or [])}

    # ------------------------------------------------------------------------- properties

    @property
    def config(self) -> Any:
        """The model's :class:`DetectorConfig`."""
        return self.model.config

    @property
    def threshold(self) -> float:
        """Scores at or above this are anomalies."""
        return float(self.calibration.threshold)

    @property
    def version(self) -> str:
        """The version id recorded when the artifact was saved (weights digest + time)."""
        return str(self.model.config.version or "unsaved")

    @property
    def mode(self) -> str:
        """``supervised`` or ``unsupervised``."""
        return self.calibration.mode

    # ------------------------------------------------------------------------- save / load

    def save_pretrained(self, save_dir: str | Path) -> Path:
        """Write the whole artifact folder; stamps a fresh version id into the config."""
        out = Path(save_dir)
        out.mkdir(parents=True, exist_ok=True)
        cfg = self.model.config
        cfg.created_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        cfg.version = f"moebert-{weights_digest(self.model)}-{cfg.created_at.replace('-', '').replace(':', '')}"
        self.model.save_pretrained(out, tokenizer=self.tokenizer)
        write_json(out / NORMALIZER_NAME, self.normalizer.to_dict())
        write_json(out / CALIBRATION_NAME, self.calibration.to_dict())
        if self.bank is not None:
            save_file({"bank": self.bank.contiguous()}, str(out / BANK_NAME))
        if self.metrics:
            write_json(out / METRICS_NAME, self.metrics)
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path, batch_size: int = 32, device: str = "cpu") -> MoEBertDetector:
        """Load an artifact folder written by :meth:`save_pretrained` (or by training)."""
        folder = Path(path)
        if not folder.is_dir():
            raise ModelError(f"{folder}: no such detector folder")
        for name in (CONFIG_NAME, WEIGHTS_NAME, CALIBRATION_NAME):
            if not (folder / name).exists():
                raise ModelError(f"{folder}: not a detector artifact ({name} missing)")
        model = MoEBertForLogAnomaly.from_pretrained(folder).to(device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError) as exc:
            raise ModelError(f"{folder}: cannot load the tokenizer ({exc})") from None
        normalizer = Normalizer()
        if (folder / NORMALIZER_NAME).exists():
            normalizer = Normalizer.from_dict(json.loads((folder / NORMALIZER_NAME).read_text(encoding="utf-8")))
        calibration = Calibration.from_dict(json.loads((folder / CALIBRATION_NAME).read_text(encoding="utf-8")))
        bank = load_file(str(folder / BANK_NAME))["bank"] if (folder / BANK_NAME).exists() else None
        if calibration.weights.get("knn", 0) > 0 and bank is None:
            raise ModelError(f"{folder}: calibration uses the kNN score but {BANK_NAME} is missing")
        metrics = {}
        if (folder / METRICS_NAME).exists():
            metrics = json.loads((folder / METRICS_NAME).read_text(encoding="utf-8"))
        return cls(model, tokenizer, normalizer, calibration, bank, metrics, batch_size)

    # ------------------------------------------------------------------------- raw scores

    def texts(self, sequences: Sequence[Sequence[str]]) -> list[str]:
        """The model input text of each sequence (normalized lines joined with [SEP])."""
        return [sequence_text(lines, self.normalizer, self.config.line_separator) for lines in sequences]

    @torch.inference_mode()
    def raw_from_texts(self, texts: Sequence[str], components: Sequence[str] = COMPONENTS) -> dict[str, np.ndarray]:
        """Raw component scores (``head`` as a logit) and pooled embeddings (``pooled``) of prepared texts.

        Scoring is deterministic, so each distinct text is run once.
        """
        unique: dict[str, int] = {}
        where = np.array([unique.setdefault(t, len(unique)) for t in texts], dtype=np.int64)
        texts_in = list(unique)
        ids = encode_texts(self.tokenizer, texts_in, self.config.max_length)
        n = len(ids)
        pad_id = int(self.tokenizer.pad_token_id or 0)
        head = np.zeros(n)
        recon: dict[str, np.ndarray] = {}
        pooled = np.zeros((n, self.model.hidden_size), dtype=np.float32)
        order = sorted(range(n), key=lambda i: len(ids[i]))
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            input_ids, attention_mask = pad_batch([ids[i] for i in idx], pad_id)
            out = self.model(input_ids=input_ids, attention_mask=attention_mask)
            head[idx] = out.logits.double().cpu().numpy()  # logits: sigmoid saturates on normals
            pooled[idx] = out.pooled.float().cpu().numpy()
            if "recon" in components:
                parts = self._recon(input_ids, attention_mask, [texts_in[i] for i in idx])
                for name, values in parts.items():
                    recon.setdefault(name, np.zeros(n))[idx] = values
        result: dict[str, np.ndarray] = {"head": head[where], "pooled": pooled[where]}
        if "recon" in components:
            # the worst of its parts; each part also kept (``recon:lines``, ``recon:next``) for reports
            worst = np.max(np.stack(list(recon.values())), axis=0) if recon else np.zeros(n)
            result["recon"] = worst[where]
            if len(recon) > 1:
                result.update({f"recon:{name}": values[where] for name, values in recon.items()})
        if "knn" in components and self.bank is not None:
            result["knn"] = knn_distance(pooled, self.bank, self.calibration.knn_k)[where]
        return result

    def _recon(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, texts: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """The reconstruction score of each row, by part: ``lines`` (masked line modeling), ``next``
        (forward line modeling, when the model has it) or ``tokens`` (masked token NLL)."""
        if self.config.recon_masking == "lines" and self.model.line_head is not None:
            parts = {"lines": self._worst_line(*self._line_nll(input_ids, attention_mask, texts), "line")}
            if self.model.next_head is not None:
                parts["next"] = self._worst_line(*self._next_nll(input_ids, attention_mask, texts), "next")
            return parts
        mask_id = int(self.tokenizer.mask_token_id)
        nll = torch.zeros(input_ids.shape, dtype=torch.float32)
        for masked_ids, labels in strided_masks(
            input_ids,
            attention_mask,
            self._never,
            mask_id,
            self.config.recon_passes,
            sep_id=int(self.tokenizer.sep_token_id) if self.config.recon_masking == "lines" else None,
        ):
            out = self.model(input_ids=masked_ids, attention_mask=attention_mask, mlm_labels=labels)
            assert out.mlm_nll is not None
            nll += out.mlm_nll.float().cpu()
        scored = maskable(input_ids, attention_mask, self._never)  # (B, T)
        sep_id = int(self.tokenizer.sep_token_id)
        return {"tokens": reduce_nll(nll, scored, input_ids, sep_id, self.calibration.recon_reduce)}

    def _keys(self, texts: Sequence[str]) -> list[list[int]]:
        return [line_keys(t, self.config.line_separator, self._line_map, len(self._line_map)) for t in texts]

    def _line_nll(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, texts: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each line masked whole in turn (``recon_passes`` strided passes): ``(nll, classes)``, both (B, L),
        the NLL of each line's class under the line head and the class (-100 where no line or a cut one)."""
        sep_id = int(self.tokenizer.sep_token_id)
        keys = self._keys(texts)
        num_lines = int(line_index(input_ids, sep_id).max()) + 1
        passes = self.config.recon_passes
        nll = torch.zeros(input_ids.shape[0], num_lines)
        classes = torch.full((input_ids.shape[0], num_lines), -100, dtype=torch.long)
        masks = strided_masks(input_ids, attention_mask, self._never, int(self.tokenizer.mask_token_id), passes, sep_id)
        for j, (masked_ids, _) in enumerate(masks):
            chosen = (torch.arange(num_lines) % passes == j)[None].expand(input_ids.shape[0], -1)
            targets = line_targets(input_ids, keys, sep_id, chosen)
            out = self.model(input_ids=masked_ids, attention_mask=attention_mask, line_labels=targets)
            assert out.line_nll is not None
            nll += out.line_nll.float().cpu()
            classes = torch.where(targets != -100, targets, classes)
        return nll, classes

    def _next_nll(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, texts: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward line modeling in one block-causal pass: ``(nll, classes)``, both (B, L), the NLL of the
        next line's class at each line and that class (-100 where there is none)."""
        sep_id = int(self.tokenizer.sep_token_id)
        targets = next_targets(input_ids, self._keys(texts), sep_id, len(self._line_map) + 1)
        causal = torch.ones(input_ids.shape[0], dtype=torch.bool)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, causal_rows=causal, next_labels=targets)
        assert out.next_nll is not None
        return out.next_nll.float().cpu(), targets

    def _worst_line(self, nll: torch.Tensor, classes: torch.Tensor, kind: Literal["line", "next"]) -> np.ndarray:
        """Per line its NLL above the class baseline (``kind``: which baseline); per sequence the worst
        line (``recon_reduce`` ``mean``: the average)."""
        scored = classes != -100
        cal = self.calibration
        baseline, scale = (cal.line_baseline, cal.line_scale) if kind == "line" else (cal.next_baseline, cal.next_scale)
        if baseline:
            nll = nll - torch.tensor(baseline, dtype=nll.dtype)[classes.clamp_min(0)]
        if scale:
            nll = nll / torch.tensor(scale, dtype=nll.dtype)[classes.clamp_min(0)]
        if self.calibration.recon_reduce == "mean":
            return (nll.masked_fill(~scored, 0.0).sum(dim=1) / scored.sum(dim=1).clamp_min(1)).double().numpy()
        return nll.masked_fill(~scored, float("-inf")).max(dim=1).values.clamp_min(-1e6).double().numpy()

    @torch.inference_mode()
    def fit_line_baseline(self, texts: Sequence[str], min_count: int = 3, spread: float = 0.5) -> dict[str, Any]:
        """Set ``calibration.line_baseline``/``line_scale`` (and ``next_baseline``/``next_scale``) from normal
        ``texts``: the mean NLL of each line class seen at least ``min_count`` times and its standard
        deviation + ``spread`` (0 and 1 for the others, which keep their raw NLL). Returns a summary."""
        if self.model.line_head is None or self.config.recon_masking != "lines" or not texts:
            return {}
        kinds: dict[str, Any] = {"line": (self._line_nll, len(self._line_map) + 1)}
        if self.model.next_head is not None:
            kinds["next"] = (self._next_nll, len(self._line_map) + 2)
        stats = {k: (torch.zeros(c), torch.zeros(c), torch.zeros(c)) for k, (_, c) in kinds.items()}
        unique = sorted(set(texts))
        ids = encode_texts(self.tokenizer, unique, self.config.max_length)
        pad_id = int(self.tokenizer.pad_token_id or 0)
        for start in range(0, len(ids), self.batch_size):
            input_ids, attention_mask = pad_batch(ids[start : start + self.batch_size], pad_id)
            for kind, (fn, _) in kinds.items():
                nll, classes = fn(input_ids, attention_mask, unique[start : start + self.batch_size])
                keep = classes != -100
                sums, squares, counts = stats[kind]
                sums.index_add_(0, classes[keep], nll[keep])
                squares.index_add_(0, classes[keep], nll[keep] ** 2)
                counts.index_add_(0, classes[keep], torch.ones(int(keep.sum())))
        notes: dict[str, Any] = {"line_baseline_texts": len(unique)}
        other = len(self._line_map)
        for kind, (sums, squares, counts) in stats.items():
            seen = counts >= min_count
            mean = sums / counts.clamp_min(1)
            std = (squares / counts.clamp_min(1) - mean**2).clamp_min(0).sqrt()
            # the rare lines of the vocabulary (background events seen in training, too seldom here for
            # stats of their own) share the stats of all their occurrences: a rare line is hard to
            # predict by nature. A line outside the vocabulary (other) keeps its raw NLL
            rare = ~seen & (torch.arange(len(counts)) != other)
            pooled = float(counts[rare].sum())
            baseline, scale = torch.zeros_like(mean), torch.ones_like(std)  # raw NLL
            if pooled >= min_count:
                rare_mean = sums[rare].sum() / pooled
                baseline[rare] = rare_mean
                scale[rare] = (squares[rare].sum() / pooled - rare_mean**2).clamp_min(0).sqrt() + spread
            baseline, scale = torch.where(seen, mean, baseline), torch.where(seen, std + spread, scale)
            setattr(self.calibration, f"{kind}_baseline", [round(float(x), 5) for x in baseline])
            setattr(self.calibration, f"{kind}_scale", [round(float(x), 5) for x in scale])
            notes[f"{kind}_baseline_classes"] = int(seen.sum())
            notes[f"{kind}_rare_pooled"] = int(pooled)
        return notes

    def raw_scores(self, sequences: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
        """Raw component scores (``head``, ``knn``, ``recon``) and ``pooled`` embeddings of sequences."""
        components = [*self.calibration.active(), "head"] if self.calibration.fused else ["head"]
        return self.raw_from_texts(self.texts(sequences), components)

    # ------------------------------------------------------------------------- public API

    def score(self, sequences: Sequence[Sequence[str]]) -> np.ndarray:
        """Anomaly score in [0, 1] of each sequence (a list of raw log lines)."""
        if not sequences:
            return np.zeros(0)
        return self.calibration.fuse(self.raw_scores(sequences))

    def embed(self, sequences: Sequence[Sequence[str]]) -> np.ndarray:
        """Pooled embedding (N, H) of each sequence."""
        if not sequences:
            return np.zeros((0, self.model.hidden_size), dtype=np.float32)
        return self.raw_from_texts(self.texts(sequences), ["head"])["pooled"]

    def predict(self, sequences: Sequence[Sequence[str]]) -> list[Detection]:
        """Score, decision and risk level of each sequence."""
        thr = self.threshold
        return [Detection(float(s), bool(s >= thr), risk_level(float(s), thr)) for s in self.score(sequences)]

    def line_contributions(self, lines: Sequence[str]) -> list[float]:
        """How much each line raises the score: full score minus the score without that line."""
        if len(lines) <= 1:
            return [float(s) for s in self.score([list(lines)])] if lines else []
        variants = [list(lines)] + [[x for j, x in enumerate(lines) if j != i] for i in range(len(lines))]
        scores = self.score(variants)
        return [float(scores[0] - scores[i + 1]) for i in range(len(lines))]


def knn_distance(queries: np.ndarray, bank: torch.Tensor, k: int) -> np.ndarray:
    """Mean cosine distance of each query to its ``k`` nearest bank embeddings."""
    q = F.normalize(torch.as_tensor(queries, dtype=torch.float32), dim=-1)  # (N, H)
    bank = F.normalize(bank.float(), dim=-1)  # (Nb, H)
    out = np.zeros(len(q))
    k = max(1, min(k, bank.shape[0]))
    for start in range(0, len(q), 1024):
        sims = q[start : start + 1024] @ bank.T  # (n, Nb)
        top = sims.topk(k, dim=-1).values  # (n, k)
        out[start : start + 1024] = (1.0 - top.mean(dim=-1)).double().numpy()
    return out


def reduce_nll(nll: torch.Tensor, scored: torch.Tensor, input_ids: torch.Tensor, sep_id: int, how: str) -> np.ndarray:
    """Per-sequence reconstruction score from token NLLs (B, T): mean, worst line mean, top-5 mean or max."""
    counts = scored.sum(dim=1).clamp_min(1)  # (B,)
    if how == "mean":
        return (nll.sum(dim=1) / counts).double().numpy()
    if how == "max":
        return nll.masked_fill(~scored, 0.0).max(dim=1).values.double().numpy()
    if how == "topk":
        k = min(5, nll.shape[1])
        return nll.masked_fill(~scored, 0.0).topk(k, dim=1).values.mean(dim=1).double().numpy()
    lines = line_index(input_ids, sep_id)  # (B, T)
    num_lines = int(lines.max().item()) + 1
    sums = torch.zeros(nll.shape[0], num_lines).scatter_add(1, lines, nll * scored)  # (B, L)
    cnts = torch.zeros(nll.shape[0], num_lines).scatter_add(1, lines, scored.float())  # (B, L)
    means = torch.where(cnts > 0, sums / cnts.clamp_min(1), torch.zeros_like(sums))
    return means.max(dim=1).values.double().numpy()
