"""How the MoE-BERT detector's raw scores become one calibrated score and a decision.

Each part's raw score is mapped to [0, 1] by a robust z-score against held-out normal sequences
(:class:`ScoreStats`); with validation labels the parts' weights and the threshold are fitted on the
simplex (:func:`calibrate_fusion`); :class:`Calibration` is what the detector folder keeps of it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from small_model.metrics import best_f1_threshold

# the fused parts: the anomaly head, the kNN distance, and the two reconstruction parts (masked line
# modeling and forward line modeling); ``recon`` (the worst of the two) is reported, never fused
COMPONENTS = ("head", "knn", "lines", "next")
RECON_PARTS = ("lines", "next")


def squash(u: np.ndarray) -> np.ndarray:
    """Robust sigmas past the offset to a score in (0, 1): ``0.5 * exp(u)`` below 0, ``1 - 0.5 / (1 + u)`` above."""
    u = np.asarray(u, dtype=np.float64)
    return np.where(u <= 0, 0.5 * np.exp(np.minimum(u, 0.0)), 1.0 - 0.5 / (1.0 + np.maximum(u, 0.0)))


def unsquash(score: np.ndarray) -> np.ndarray:
    """The inverse of :func:`squash`: a score in (0, 1) back on the scale of robust sigmas."""
    s = np.clip(np.asarray(score, dtype=np.float64), 1e-300, 1.0 - 1e-16)
    return np.where(s <= 0.5, np.log(2.0 * s), 0.5 / (1.0 - s) - 1.0)


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
        return squash(u)

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
    weights: dict[str, float] = field(default_factory=lambda: {c: float(c == "head") for c in COMPONENTS})
    threshold: float = 0.5
    threshold_source: str = "default"  # validation | contamination | default
    stats: dict[str, ScoreStats] = field(default_factory=dict)
    contamination: float = 0.05
    knn_k: int = 1
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


def calibrate_fusion(
    raw: dict[str, np.ndarray], labels: np.ndarray, stats: dict[str, ScoreStats], step: float = 0.1
) -> tuple[dict[str, float], float, float]:
    """Grid-search weights on the simplex (maximizing average precision + best F1) and the best-F1 threshold.

    Average precision, not ROC-AUC: what the decision needs is the top of the ranking (the few
    anomalies among many normal sequences); ROC-AUC also rewards the order among the low-scoring
    normal bulk, and on a small validation set that picked parts that rank the bulk well and the top
    badly (real HDFS, 35 validation anomalies: the kNN part alone, test F1 0.49, against 0.69 with the
    forward part in the mix). Ties (validation sets that several mixtures separate equally well) go to
    the mixture of the fewest parts, then to the most balanced one: a part earns its weight only by what
    it adds on validation. The threshold lies midway, in robust sigmas (:func:`unsquash`), between the
    validation scores on either side of the best cut: midway on the squashed scale would sit close to
    the lower one, as the squashing packs high scores together. Returns ``(weights, threshold, objective)``.
    """
    from sklearn.metrics import average_precision_score

    y = np.asarray(labels, dtype=np.int64)
    normed = {c: stats[c].apply(raw[c]) for c in COMPONENTS if c in raw and c in stats}
    names = list(normed)
    ticks = round(1 / step)
    best: tuple[tuple[float, int, float], dict[str, float], np.ndarray] = ((-1.0, 0, 0.0), {}, np.zeros(0))
    for point in _simplex(len(names), ticks):
        w = {c: p / ticks for c, p in zip(names, point, strict=True)}
        fused = sum(w[c] * normed[c] for c in names)
        assert isinstance(fused, np.ndarray)
        _, f1 = best_f1_threshold(y, fused)
        objective = round(float(average_precision_score(y, fused)) + f1, 9)
        entropy = -sum(v * math.log(v) for v in w.values() if v > 0)
        key = (objective, -sum(v > 0 for v in w.values()), entropy)
        if key > best[0]:
            best = (key, w, fused)
    key, weights, fused = best
    threshold = float(squash(np.asarray(best_f1_threshold(y, unsquash(fused))[0])))
    return {c: float(weights.get(c, 0.0)) for c in COMPONENTS}, threshold, float(key[0])


def _simplex(dims: int, ticks: int) -> list[tuple[int, ...]]:
    if dims == 1:
        return [(ticks,)]
    out: list[tuple[int, ...]] = []
    for first in range(ticks + 1):
        out.extend((first, *rest) for rest in _simplex(dims - 1, ticks - first))
    return out
