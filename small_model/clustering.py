"""Anomaly categories without labels: deep features, Birch clustering and a dual-input multi-class model.

The four stages (issue 6)::

    1. sequence model trained on normal sequences only -> a detector artifact (DeepLog or MoE-BERT)
    2. deep features of each sequence        -> DeepFeaturizer (fitted on a normal reference)
    3. Birch clustering (k by silhouette)     -> pseudo-labels; the largest cluster is "normal"
                                                 unless the input holds anomalies only
    4. dual-input classifier on the labels    -> ClusterModel, saved as one artifact folder

    model = ClusterModel.fit(detector, records, normal=normal_records, config=ClusterConfig())
    model.save_pretrained("artifacts/clusters")
    ClusterModel.from_pretrained("artifacts/clusters").predict([["line", "line"]])  # [(cluster_id, description)]

Deep features (stage 2), one block each, every block scaled to unit mean norm and weighted:

- ``deep``: the detector's own embedding (DeepLog: final LSTM state; MoE-BERT: pooled output),
  standardized by the normal reference, optionally reduced by PCA;
- ``distance``: the distance of that embedding to the mean of the normal embeddings;
- ``structure``: how the sequence model is surprised. For DeepLog, the NLL gain of the best single
  edit that makes the sequence look normal to the LSTM (an adjacent swap, an inserted event), the
  largest repeat of one event and the number of lines of never-seen templates; for MoE-BERT only
  the last two (it has no next-event likelihood);
- ``vocabulary``: the words of the lines whose template the normal reference never produced,
  weighted by how novel each word is against normal logs and how often it recurs among the input
  sequences (a bag-of-templates variant that survives re-phrasing).

Evaluation helpers (Hungarian-matched accuracy, NMI, ARI, per-class table) and the
``logtriage cluster`` / ``logtriage analyze-clusters`` handlers live here too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core.errors import DataError, ModelError
from core.io import read_records, write_json
from core.normalize import Normalizer, NormalizerConfig
from core.schema import SequenceRecord
from core.templates import UNKNOWN_TEMPLATE, TemplateMiner
from small_model.cluster_model import UNK_ID, ClassifierConfig, DualInputClassifier, predict_proba, train_classifier

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
STATE_NAME = "cluster_state.safetensors"
CLUSTERS_NAME = "clusters.json"
ASSIGNMENTS_NAME = "assignments.json"
NOVELTY_DRAIN = "novelty_drain3.json"
EVENTS_DRAIN = "events_drain3.json"
VALUE_DRAIN = "value_drain3.json"
KNOWN, VALUE, NOVEL = 0, 1, 2  # line kinds against the normal reference
SIGNALS = {
    "swap": "steps out of order",
    "insert": "a step missing",
    "repeat": "a repeated event",
    "novel": "new messages",
    "value": "an out-of-range value",
}
NORMALIZER_NAME = "normalizer.json"
ARTIFACT_KIND = "cluster-model"
NORMAL_DESCRIPTION = "normal"
FEATURE_MODELS = ("deeplog", "moe-bert")
MAX_TSNE = 5000
_TOKEN = re.compile(r"<[^<>\s]+>|[^\W\d_][\w.:\-]*")

Mode = Literal["all", "anomalies-only", "flagged-only"]


# ----------------------------------------------------------------------------- configs


@dataclass
class FeatureConfig:
    """Stage 2: which deep-feature blocks and how much each weighs."""

    deep_weight: float = 0.25
    distance_weight: float = 0.25
    structure_weight: float = 1.0
    vocabulary_weight: float = 1.0
    pca_components: int = 16  # of the deep block; 0 keeps every dimension
    gain_scale: float = 3.0  # nats: an edit gain of this size counts tanh(1) = 0.76
    insert_candidates: int = 3  # DeepLog: events tried at each insertion point
    min_word_count: int = 2  # words seen in fewer input sequences are dropped
    max_vocabulary: int = 5000
    max_normal: int = 2000  # normal sequences embedded for the reference statistics

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureConfig:
        """Rebuild from :meth:`to_dict`; unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class BirchConfig:
    """Stage 3: the CF tree and the global clustering of its subclusters."""

    threshold: float = 0.1
    branching_factor: int = 50
    n_clusters: int | None = None  # None: chosen by silhouette in [min_clusters, max_clusters]
    min_clusters: int = 2
    max_clusters: int = 15
    global_method: Literal["ward", "kmeans"] = "kmeans"  # kmeans is weighted by subcluster sizes
    kmeans_init: int = 50  # restarts: k-means keeps the lowest-inertia one, which many restarts find reliably
    silhouette_sample: int = 3000
    seed: int = 42

    def __post_init__(self) -> None:
        if self.threshold <= 0:
            raise ValueError(f"threshold must be > 0, got {self.threshold}")
        if self.branching_factor < 2:
            raise ValueError(f"branching_factor must be >= 2, got {self.branching_factor}")
        if self.n_clusters is not None and self.n_clusters < 1:
            raise ValueError(f"n_clusters must be >= 1, got {self.n_clusters}")
        if not 2 <= self.min_clusters <= self.max_clusters:
            raise ValueError("need 2 <= min_clusters <= max_clusters")
        if self.global_method not in ("ward", "kmeans"):
            raise ValueError(f"global_method must be 'ward' or 'kmeans', got {self.global_method!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BirchConfig:
        """Rebuild from :meth:`to_dict`; unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class ClusterConfig:
    """The whole pipeline: input mode, features, Birch, the classifier and descriptions."""

    mode: Mode = "all"
    features: FeatureConfig = field(default_factory=FeatureConfig)
    birch: BirchConfig = field(default_factory=BirchConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    train_classifier: bool = True
    samples_per_cluster: int = 5
    top_templates: int = 5
    profile: str = "full"  # the budget that made it: full, or quick (make demo's; see CLUSTER_PROFILES)

    def __post_init__(self) -> None:
        if self.mode not in ("all", "anomalies-only", "flagged-only"):
            raise ValueError(f"mode must be all, anomalies-only or flagged-only, got {self.mode!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "mode": self.mode,
            "features": self.features.to_dict(),
            "birch": self.birch.to_dict(),
            "classifier": self.classifier.to_dict(),
            "train_classifier": self.train_classifier,
            "samples_per_cluster": self.samples_per_cluster,
            "top_templates": self.top_templates,
            "profile": self.profile,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClusterConfig:
        """Rebuild from :meth:`to_dict`."""
        return cls(
            mode=data.get("mode", "all"),
            features=FeatureConfig.from_dict(data.get("features", {})),
            birch=BirchConfig.from_dict(data.get("birch", {})),
            classifier=ClassifierConfig.from_dict(data.get("classifier", {})),
            train_classifier=bool(data.get("train_classifier", True)),
            samples_per_cluster=int(data.get("samples_per_cluster", 5)),
            top_templates=int(data.get("top_templates", 5)),
            profile=str(data.get("profile", "full")),
        )


# ----------------------------------------------------------------------------- detectors


def feature_model_of(detector: Any) -> str:
    """``deeplog`` or ``moe-bert`` for a loaded detector."""
    name = type(detector).__name__.lower()
    if "deeplog" in name:
        return "deeplog"
    if hasattr(detector, "embed"):
        return "moe-bert"
    raise ModelError(f"{type(detector).__name__} has no embed(); it cannot serve as a feature model")


def load_feature_model(path: str | Path, expected: str | None = None) -> Any:
    """Load a detector artifact (stage 1) through the registry; check its kind against ``expected``."""
    from small_model.registry import detector_kind, load_detector

    kind = detector_kind(path)
    if expected is not None and expected != kind:
        raise ModelError(f"{path} holds a {kind} detector, not {expected}")
    return load_detector(path)


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


def deeplog_edit_gains(detector: Any, sequences: Sequence[Sequence[str]], candidates: int = 3) -> np.ndarray:
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


# ----------------------------------------------------------------------------- stage 2: deep features


def value_normalizer(normalizer: Normalizer) -> Normalizer:
    """The same masking with durations as plain numbers: a line that matches a normal template only
    this way differs from normal logs by a value (a latency out of range), not by its message."""
    return Normalizer(NormalizerConfig(**{**asdict(normalizer.config), "bucket_durations": False}))


def line_tokens(line: str, normalizer: Normalizer) -> list[str]:
    """Lower-cased words and placeholders of a normalized line."""
    return [t.lower() for t in _TOKEN.findall(normalizer.normalize(line))]


class DeepFeaturizer:
    """Stage 2: turns sequences into clustering features with a detector; fitted once, then frozen."""

    def __init__(self, config: FeatureConfig | None = None, normalizer: Normalizer | None = None) -> None:
        self.config = config or FeatureConfig()
        self.normalizer = normalizer or Normalizer()
        self.miner: TemplateMiner | None = None  # templates of the normal reference (frozen)
        self.value_miner: TemplateMiner | None = None  # the same with durations as plain numbers
        self.kind = ""
        self.arrays: dict[str, np.ndarray] = {}
        self.vocabulary: list[str] = []
        self._index: dict[str, int] = {}
        self.last_blocks: dict[str, np.ndarray] = {}  # the blocks of the inputs seen by fit_transform

    @property
    def dim(self) -> int:
        """Width of the feature vector."""
        return int(self.arrays["dim"][0]) if "dim" in self.arrays else 0

    def fit(
        self, detector: Any, normal: Sequence[Sequence[str]], inputs: Sequence[Sequence[str]], seed: int = 42
    ) -> DeepFeaturizer:
        """Fit the normal statistics (mean, spread, templates, word rarity) and the input-side scalings."""
        self.fit_transform(detector, normal, inputs, seed)
        return self

    def fit_transform(
        self, detector: Any, normal: Sequence[Sequence[str]], inputs: Sequence[Sequence[str]], seed: int = 42
    ) -> np.ndarray:
        """:meth:`fit`, returning the features of ``inputs``."""
        if not normal:
            raise DataError("no normal reference sequences to fit the deep features on")
        if not inputs:
            raise DataError("no sequences to cluster")
        cfg = self.config
        self.kind = feature_model_of(detector)
        self.normalizer = getattr(detector, "normalizer", None) or self.normalizer
        self.miner = TemplateMiner(normalizer=self.normalizer)
        self.value_miner = TemplateMiner(normalizer=value_normalizer(self.normalizer))
        for lines in normal:
            self.miner.template_ids(lines, learn=True)
            self.value_miner.template_ids(lines, learn=True)
        rng = np.random.default_rng(seed)
        sample = list(normal)
        if len(sample) > cfg.max_normal:
            sample = [sample[i] for i in sorted(rng.choice(len(sample), cfg.max_normal, replace=False))]
        ref = np.asarray(detector.embed(sample), dtype=np.float64)
        mu, sd = ref.mean(0), ref.std(0) + 1e-6
        arrays: dict[str, np.ndarray] = {"mu": mu, "sd": sd}
        z = (np.asarray(detector.embed(list(inputs)), dtype=np.float64) - mu) / sd
        if 0 < cfg.pca_components < z.shape[1] and len(z) > 2:
            k = min(cfg.pca_components, len(z) - 1)
            center = z.mean(0)
            _, _, vt = np.linalg.svd(z - center, full_matrices=False)
            arrays["pca_mean"], arrays["pca"] = center, vt[:k].T
            deep = (z - center) @ vt[:k].T
        else:
            deep = z
        arrays["deep_scale"] = np.array([max(float(np.linalg.norm(deep, axis=1).mean()), 1e-9)])
        dist = np.log1p(np.linalg.norm(z, axis=1) / math.sqrt(z.shape[1]))
        arrays["dist_mean"] = np.array([dist.mean()])
        arrays["dist_std"] = np.array([dist.std() + 1e-9])
        # word rarity against the normal reference, recurrence among the inputs
        normal_df: Counter[str] = Counter()
        for lines in normal:
            normal_df.update({t for line in lines for t in line_tokens(line, self.normalizer)})
        docs = self._novel_words(inputs)
        input_df: Counter[str] = Counter()
        for doc in docs:
            input_df.update(set(doc))
        ranked = sorted(input_df.items(), key=lambda tn: (-tn[1], tn[0]))  # no dependence on hash order
        kept = [t for t, n in ranked if n >= cfg.min_word_count][: cfg.max_vocabulary]
        n_norm, n_in = len(normal), len(inputs)
        weights = [math.log((n_norm + 1) / (normal_df.get(t, 0) + 1)) * math.sqrt(input_df[t] / n_in) for t in kept]
        self.vocabulary = kept
        self._index = {t: i for i, t in enumerate(kept)}
        arrays["word_weights"] = np.asarray(weights, dtype=np.float64)
        self.arrays = arrays
        blocks = self._blocks(detector, inputs, z=z, docs=docs)
        arrays["dim"] = np.array([sum(b.shape[1] for b in blocks.values())])
        self.last_blocks = blocks
        return self.combine(blocks)

    def line_kinds(self, lines: Sequence[str]) -> list[int]:
        """Per line: ``KNOWN``, ``VALUE`` (a normal template with an out-of-range duration) or ``NOVEL``."""
        if self.miner is None or self.value_miner is None:
            raise ModelError("the featurizer is not fitted")
        kinds = []
        for line in lines:
            if self.miner.template_id(line, learn=False) != UNKNOWN_TEMPLATE:
                kinds.append(KNOWN)
            elif self.value_miner.template_id(line, learn=False) != UNKNOWN_TEMPLATE:
                kinds.append(VALUE)
            else:
                kinds.append(NOVEL)
        return kinds

    def _novel_words(self, sequences: Sequence[Sequence[str]]) -> list[Counter[str]]:
        """Per sequence: word counts of its lines whose template the normal reference never produced."""
        docs = []
        for lines in sequences:
            doc: Counter[str] = Counter()
            for line, kind in zip(lines, self.line_kinds(lines), strict=True):
                if kind == NOVEL:
                    doc.update(line_tokens(line, self.normalizer))
            docs.append(doc)
        return docs

    def _structure(self, detector: Any, sequences: Sequence[Sequence[str]]) -> np.ndarray:
        assert self.miner is not None
        cfg = self.config
        rows = []
        for lines in sequences:
            ids = self.miner.template_ids(lines, learn=False)
            kinds = self.line_kinds(lines)
            known = Counter(i for i in ids if i != UNKNOWN_TEMPLATE)
            repeat = max(known.values()) - 1 if known else 0
            rows.append([math.tanh(repeat / 2.0), math.tanh(kinds.count(NOVEL)), math.tanh(kinds.count(VALUE))])
        struct = np.asarray(rows, dtype=np.float64).reshape(len(sequences), 3)
        if self.kind == "deeplog":
            gains = deeplog_edit_gains(detector, sequences, cfg.insert_candidates)
            struct = np.concatenate([np.tanh(np.maximum(gains, 0.0) / cfg.gain_scale), struct], axis=1)
        return struct

    def _blocks(
        self,
        detector: Any,
        sequences: Sequence[Sequence[str]],
        z: np.ndarray | None = None,
        docs: list[Counter[str]] | None = None,
    ) -> dict[str, np.ndarray]:
        a = self.arrays
        if z is None:
            z = (np.asarray(detector.embed(list(sequences)), dtype=np.float64) - a["mu"]) / a["sd"]
        deep = (z - a["pca_mean"]) @ a["pca"] if "pca" in a else z
        deep = deep / a["deep_scale"][0]
        dist = np.log1p(np.linalg.norm(z, axis=1) / math.sqrt(z.shape[1]))
        dist = ((dist - a["dist_mean"][0]) / a["dist_std"][0])[:, None]
        docs = docs if docs is not None else self._novel_words(sequences)
        vocab = np.zeros((len(sequences), len(self.vocabulary)))
        w = a["word_weights"]
        for i, doc in enumerate(docs):
            for t, n in doc.items():
                j = self._index.get(t)
                if j is not None:
                    vocab[i, j] = (1.0 + math.log(n)) * w[j]
        norms = np.linalg.norm(vocab, axis=1, keepdims=True)
        vocab = np.divide(vocab, norms, out=np.zeros_like(vocab), where=norms > 0)
        return {"deep": deep, "distance": dist, "structure": self._structure(detector, sequences), "vocabulary": vocab}

    def transform(self, detector: Any, sequences: Sequence[Sequence[str]]) -> np.ndarray:
        """The weighted feature matrix (N, dim)."""
        if not self.arrays:
            raise ModelError("the featurizer is not fitted")
        if not sequences:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.combine(self._blocks(detector, sequences))

    def combine(self, blocks: Mapping[str, np.ndarray]) -> np.ndarray:
        """Concatenate the blocks with their weights."""
        c = self.config
        weights = {
            "deep": c.deep_weight,
            "distance": c.distance_weight,
            "structure": c.structure_weight,
            "vocabulary": c.vocabulary_weight,
        }
        return np.concatenate([weights[k] * blocks[k] for k in weights], axis=1).astype(np.float32)

    @property
    def structure_names(self) -> list[str]:
        """Names of the structure block's columns."""
        base = ["repeat", "novel", "value"]
        return ["swap", "insert", *base] if self.kind == "deeplog" else base

    def split(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The unweighted blocks of a feature matrix made by :meth:`combine` (zeros where a weight is 0)."""
        a, c = self.arrays, self.config
        widths = {
            "deep": a["pca"].shape[1] if "pca" in a else len(a["mu"]),
            "distance": 1,
            "structure": len(self.structure_names),
            "vocabulary": len(self.vocabulary),
        }
        weights = {
            "deep": c.deep_weight,
            "distance": c.distance_weight,
            "structure": c.structure_weight,
            "vocabulary": c.vocabulary_weight,
        }
        out, start = {}, 0
        for name, width in widths.items():
            part = np.asarray(x[:, start : start + width], dtype=np.float64)
            out[name] = part / weights[name] if weights[name] else np.zeros_like(part)
            start += width
        return out

    # save / load
    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON metadata and arrays to persist."""
        meta = {"kind": self.kind, "config": self.config.to_dict(), "vocabulary": self.vocabulary}
        return meta, {f"feat.{k}": v for k, v in self.arrays.items()}

    def save_miners(self, folder: Path) -> None:
        """Persist the normal-reference miners."""
        if self.miner is None or self.value_miner is None:
            raise ModelError("the featurizer is not fitted")
        self.miner.save(folder / NOVELTY_DRAIN)
        self.value_miner.save(folder / VALUE_DRAIN)

    @classmethod
    def from_state(
        cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], folder: Path, normalizer: Normalizer
    ) -> DeepFeaturizer:
        """Rebuild from :meth:`state` output and the miners saved in ``folder``."""
        out = cls(FeatureConfig.from_dict(meta.get("config", {})), normalizer)
        out.kind = str(meta.get("kind", ""))
        out.vocabulary = list(meta.get("vocabulary", []))
        out._index = {t: i for i, t in enumerate(out.vocabulary)}
        out.arrays = {k.removeprefix("feat."): np.asarray(v) for k, v in arrays.items() if k.startswith("feat.")}
        out.miner = TemplateMiner.load(folder / NOVELTY_DRAIN, normalizer)
        out.value_miner = TemplateMiner.load(folder / VALUE_DRAIN, value_normalizer(normalizer))
        return out


# ----------------------------------------------------------------------------- stage 3: Birch


@dataclass
class BirchResult:
    """Cluster labels (0 = largest), the CF subclusters and how k was chosen."""

    labels: np.ndarray  # (N,)
    n_clusters: int
    centers: np.ndarray  # (M, D) subcluster centroids
    center_labels: np.ndarray  # (M,) cluster of each subcluster
    silhouette: dict[int, float]
    threshold: float


def _global(centers: np.ndarray, counts: np.ndarray, k: int, cfg: BirchConfig) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering, KMeans

    if k >= len(centers):
        return np.arange(len(centers))
    if cfg.global_method == "kmeans":
        km = KMeans(n_clusters=k, n_init=cfg.kmeans_init, random_state=cfg.seed).fit(centers, sample_weight=counts)
        return np.asarray(km.labels_)
    return np.asarray(AgglomerativeClustering(n_clusters=k).fit_predict(centers))


def _silhouette(x: np.ndarray, labels: np.ndarray, sample: int, seed: int) -> float:
    from sklearn.metrics import silhouette_score

    if len(np.unique(labels)) < 2 or len(np.unique(labels)) >= len(x):
        return -1.0
    size = min(sample, len(x)) if len(x) > sample else None
    return float(silhouette_score(x, labels, sample_size=size, random_state=seed))


def birch_cluster(x: np.ndarray, config: BirchConfig | None = None) -> BirchResult:
    """Birch CF tree, then a global clustering of its subclusters; k by silhouette when not given."""
    from sklearn.cluster import Birch

    cfg = config or BirchConfig()
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n == 0:
        raise DataError("no sequences to cluster")
    if n == 1:
        return BirchResult(np.zeros(1, dtype=np.int64), 1, x.copy(), np.zeros(1, dtype=np.int64), {}, cfg.threshold)
    wanted = cfg.n_clusters or cfg.max_clusters
    threshold = cfg.threshold
    while True:
        tree = Birch(threshold=threshold, branching_factor=cfg.branching_factor, n_clusters=None).fit(x)
        centers = np.asarray(tree.subcluster_centers_)
        if len(centers) >= min(wanted, n) or threshold < 1e-4:
            break
        threshold /= 2.0  # too coarse for the number of clusters asked for
        logger.info("birch: %d subclusters < %d wanted; threshold lowered to %.4g", len(centers), wanted, threshold)
    sub = np.asarray(tree.predict(x))  # subcluster of each sample (n_clusters=None)
    counts = np.bincount(sub, minlength=len(centers)).astype(np.float64)
    scores: dict[int, float] = {}
    if cfg.n_clusters is not None:
        k = min(cfg.n_clusters, len(centers))
        center_labels = _global(centers, counts, k, cfg)
    else:
        best: tuple[float, int, np.ndarray] | None = None
        for k in range(cfg.min_clusters, min(cfg.max_clusters, len(centers), n - 1) + 1):
            cl = _global(centers, counts, k, cfg)
            scores[k] = round(_silhouette(x, cl[sub], cfg.silhouette_sample, cfg.seed), 4)
            if best is None or scores[k] > best[0]:
                best = (scores[k], k, cl)
        center_labels = np.zeros(len(centers), dtype=np.int64) if best is None else best[2]
    labels = center_labels[sub]
    # relabel by size, largest first
    sizes = np.bincount(labels)
    order = sorted(np.unique(labels), key=lambda c: (-sizes[c], c))
    remap = np.zeros(max(order) + 1, dtype=np.int64)
    for new, old in enumerate(order):
        remap[old] = new
    return BirchResult(remap[labels], len(order), centers, remap[center_labels], scores, threshold)


def nearest_center(x: np.ndarray, centers: np.ndarray, center_labels: np.ndarray) -> np.ndarray:
    """Cluster of each row by its nearest Birch subcluster centroid."""
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64)
    d = ((x[:, None, :] - centers[None, :, :]) ** 2).sum(-1) if len(x) * len(centers) < 5e6 else None
    if d is None:
        out = np.zeros(len(x), dtype=np.int64)
        for s in range(0, len(x), 256):
            part = x[s : s + 256]
            out[s : s + 256] = np.argmin(((part[:, None, :] - centers[None, :, :]) ** 2).sum(-1), axis=1)
        return center_labels[out]
    return center_labels[np.argmin(d, axis=1)]


# ----------------------------------------------------------------------------- evaluation


def hungarian_mapping(y_true: Sequence[Any], y_pred: Sequence[int]) -> dict[int, Any]:
    """The one-to-one cluster -> class assignment that maximizes the matched count."""
    from scipy.optimize import linear_sum_assignment

    classes = sorted({str(c) for c in y_true})
    clusters = sorted({int(c) for c in y_pred})
    if not classes or not clusters:
        return {}
    ci = {c: i for i, c in enumerate(classes)}
    ki = {k: i for i, k in enumerate(clusters)}
    m = np.zeros((len(clusters), len(classes)))
    for t, p in zip(y_true, y_pred, strict=True):
        m[ki[int(p)], ci[str(t)]] += 1
    rows, cols = linear_sum_assignment(-m)
    return {clusters[r]: classes[c] for r, c in zip(rows, cols, strict=True)}


def hungarian_accuracy(y_true: Sequence[Any], y_pred: Sequence[int]) -> float:
    """Accuracy after the best one-to-one matching of clusters to classes (unmatched clusters count wrong)."""
    if len(y_true) == 0:
        return 0.0
    mapping = hungarian_mapping(y_true, y_pred)
    hits = sum(1 for t, p in zip(y_true, y_pred, strict=True) if mapping.get(int(p)) == str(t))
    return hits / len(y_true)


def cluster_metrics(y_true: Sequence[Any], y_pred: Sequence[int]) -> dict[str, Any]:
    """Matched accuracy, NMI, ARI and per-class precision/recall/F1/support after Hungarian matching."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    truth = [str(t) for t in y_true]
    pred = [int(p) for p in y_pred]
    if len(truth) != len(pred):
        raise ValueError("y_true and y_pred differ in length")
    mapping = hungarian_mapping(truth, pred)
    mapped = [mapping.get(p, "(unmatched)") for p in pred]
    per_class: list[dict[str, Any]] = []
    for c in sorted(set(truth)):
        tp = sum(1 for t, m in zip(truth, mapped, strict=True) if t == c and m == c)
        predicted = sum(1 for m in mapped if m == c)
        support = sum(1 for t in truth if t == c)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        cluster = next((k for k, v in mapping.items() if v == c), None)
        per_class.append(
            {"class": c, "cluster": cluster, "precision": precision, "recall": recall, "f1": f1, "support": support}
        )
    total = max(len(truth), 1)
    return {
        "n": len(truth),
        "n_classes": len(set(truth)),
        "n_clusters": len(set(pred)),
        "accuracy": sum(1 for t, m in zip(truth, mapped, strict=True) if t == m) / total,
        "nmi": float(normalized_mutual_info_score(truth, pred)) if truth else 0.0,
        "ari": float(adjusted_rand_score(truth, pred)) if truth else 0.0,
        "macro_f1": float(np.mean([r["f1"] for r in per_class])) if per_class else 0.0,
        "weighted_f1": sum(float(r["f1"]) * int(r["support"]) for r in per_class) / total,
        "mapping": {str(k): v for k, v in sorted(mapping.items())},
        "per_class": per_class,
    }


def format_metrics(metrics: Mapping[str, Any], title: str | None = None) -> str:
    """A Markdown table of per-class precision/recall/F1/support plus the summary figures."""
    lines = [f"### {title}", ""] if title else []
    lines.append(
        f"accuracy (Hungarian) {metrics['accuracy']:.3f} · NMI {metrics['nmi']:.3f} · ARI {metrics['ari']:.3f} · "
        f"{metrics['n']} sequences, {metrics['n_classes']} classes, {metrics['n_clusters']} clusters"
    )
    lines += ["", "| class | cluster | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|---:|"]
    for r in metrics["per_class"]:
        cluster = "-" if r["cluster"] is None else str(r["cluster"])
        lines.append(
            f"| {r['class']} | {cluster} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |"
        )
    lines.append(f"| **macro avg** | | | | {metrics['macro_f1']:.3f} | {metrics['n']} |")
    lines.append(f"| **weighted avg** | | | | {metrics['weighted_f1']:.3f} | {metrics['n']} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- descriptions


@dataclass
class ClusterInfo:
    """What one cluster is: size, distinctive templates, typical members and (if known) its labels."""

    cluster_id: int
    size: int
    is_normal: bool
    description: str
    templates: list[dict[str, Any]]
    words: list[str]
    samples: list[dict[str, Any]]  # {"sequence_id", "log_entries"}
    labels: dict[str, int] = field(default_factory=dict)
    purity: float | None = None
    majority: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClusterInfo:
        """Rebuild from :meth:`to_dict`."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def true_label(record: SequenceRecord) -> str | None:
    """The category a record is known to have: its anomaly type, ``normal`` for label 0, else ``None``."""
    if record.anomaly_type:
        return str(record.anomaly_type)
    if record.label == 0:
        return NORMAL_DESCRIPTION
    if record.label == 1:
        return "anomaly"
    return None


def distinctive_templates(
    template_ids: Sequence[Sequence[int]], labels: np.ndarray, cluster: int, top: int
) -> list[tuple[int, float, float]]:
    """(template id, share of the cluster's sequences holding it, contrast score) of its most distinctive templates."""
    inside = [set(t) for t, c in zip(template_ids, labels, strict=True) if c == cluster]
    outside = [set(t) for t, c in zip(template_ids, labels, strict=True) if c != cluster]
    df_in: Counter[int] = Counter(t for s in inside for t in s)
    df_out: Counter[int] = Counter(t for s in outside for t in s)
    n_in, n_out = max(len(inside), 1), max(len(outside), 1)
    scored = []
    for t, n in df_in.items():
        p_in = n / n_in
        p_out = df_out.get(t, 0) / n_out
        scored.append((t, p_in, p_in * math.log((p_in + 1e-3) / (p_out + 1e-3))))
    scored.sort(key=lambda r: (-r[2], r[0]))
    return [r for r in scored if r[2] > 0][:top]


def describe_clusters(
    records: Sequence[SequenceRecord],
    labels: np.ndarray,
    features: np.ndarray,
    template_ids: Sequence[Sequence[int]],
    templates: Mapping[int, str],
    featurizer: DeepFeaturizer,
    normal_cluster: int | None,
    samples: int = 5,
    top: int = 5,
) -> list[ClusterInfo]:
    """One :class:`ClusterInfo` per cluster: distinctive templates vs the rest, the members nearest its centre.

    The description names the structure signals most members show (steps out of order, a missing
    step, a repeated event, new messages, an out-of-range value) and the top two templates.
    """
    blocks = featurizer.split(features)
    vocabulary_block, vocabulary = blocks["vocabulary"], featurizer.vocabulary
    out = []
    for c in range(int(labels.max()) + 1 if len(labels) else 0):
        members = np.where(labels == c)[0]
        if len(members) == 0:
            continue
        centre = features[members].mean(0)
        order = members[np.argsort(((features[members] - centre) ** 2).sum(1), kind="stable")]
        picked = [
            {"sequence_id": records[i].sequence_id, "log_entries": list(records[i].log_entries)}
            for i in order[:samples]
        ]
        tops = distinctive_templates(template_ids, labels, c, top)
        tmpl: list[dict[str, Any]] = [
            {"template_id": t, "template": templates.get(t, "?"), "share": round(s, 3)} for t, s, _ in tops
        ]
        words: list[str] = []
        if vocabulary_block.shape[1]:
            mean = vocabulary_block[members].mean(0)
            words = [vocabulary[j] for j in np.argsort(-mean)[:top] if mean[j] > 0]
        known = [true_label(records[i]) for i in members]
        counts = Counter(k for k in known if k is not None)
        majority, purity = None, None
        if counts:
            majority, hits = counts.most_common(1)[0]
            purity = hits / sum(counts.values())
        is_normal = normal_cluster is not None and c == normal_cluster
        if is_normal:
            text = NORMAL_DESCRIPTION
        else:
            cue = "; ".join(t["template"][:80] for t in tmpl[:2]) or ", ".join(words[:4]) or "no distinctive template"
            shown = (blocks["structure"][members] >= 0.75).mean(0)  # share of members showing each signal
            signals = [SIGNALS[n] for n, v in zip(featurizer.structure_names, shown, strict=True) if v > 0.5]
            text = f"anomaly cluster {c} ({len(members)} seqs; {', '.join(signals) or 'no strong signal'}): {cue}"
        out.append(
            ClusterInfo(
                cluster_id=c,
                size=len(members),
                is_normal=is_normal,
                description=text,
                templates=tmpl,
                words=words,
                samples=picked,
                labels=dict(counts.most_common()),
                purity=purity,
                majority=majority,
            )
        )
    return out


# ----------------------------------------------------------------------------- records and modes


def _as_lines(items: Sequence[Any]) -> list[list[str]]:
    out: list[list[str]] = []
    for item in items:
        if isinstance(item, SequenceRecord):
            out.append(list(item.log_entries))
        elif isinstance(item, Mapping):
            out.append([str(x) for x in item.get("log_entries", [])])
        else:
            out.append([str(x) for x in item])
    return out


def select_inputs(
    records: Sequence[SequenceRecord], mode: Mode, detector: Any | None = None
) -> tuple[list[SequenceRecord], list[SequenceRecord]]:
    """(records to cluster, records usable as the normal reference) for an input mode.

    ``all``: everything is clustered; ``anomalies-only``: records labeled 0 are left out, the rest
    (label 1 or unlabeled) are clustered; ``flagged-only``: the records the detector flags are
    clustered. The reference is the records labeled 0, else those the detector does not flag.
    """
    normal = [r for r in records if r.label == 0]
    if mode == "anomalies-only":
        return [r for r in records if r.label != 0], normal
    if mode == "all" and (normal or detector is None):
        return list(records), normal
    if detector is None:
        raise ModelError("--flagged-only needs a detector to flag anomalies")
    scores = np.asarray(detector.score(_as_lines(records)))
    flagged = scores >= float(detector.threshold)
    logger.info(
        "the detector flags %d of %d sequences (threshold %.3f)", int(flagged.sum()), len(records), detector.threshold
    )
    quiet = [r for r, f in zip(records, flagged, strict=True) if not f]
    if mode == "all":
        return list(records), quiet
    return [r for r, f in zip(records, flagged, strict=True) if f], normal or quiet


# ----------------------------------------------------------------------------- stage 4 + artifact


def _event_index(ids: Sequence[int], vocab_size: int) -> list[int]:
    return [t + 1 if t != UNKNOWN_TEMPLATE and t + 1 < vocab_size else UNK_ID for t in ids]


class ClusterModel:
    """The saved result of the four stages: predicts the cluster (and its description) of new sequences."""

    def __init__(
        self,
        config: ClusterConfig,
        featurizer: DeepFeaturizer,
        event_miner: TemplateMiner,
        clusters: list[ClusterInfo],
        centers: np.ndarray,
        center_labels: np.ndarray,
        classifier: DualInputClassifier | None = None,
        detector: Any | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.featurizer = featurizer
        self.event_miner = event_miner
        self.clusters = clusters
        self.centers = np.asarray(centers, dtype=np.float32)
        self.center_labels = np.asarray(center_labels, dtype=np.int64)
        self.classifier = classifier
        self.detector = detector
        self.meta = meta or {}
        self.train_features: np.ndarray | None = None
        self.assignments: dict[str, Any] = {}

    # ------------------------------------------------------------------------- properties

    @property
    def n_clusters(self) -> int:
        """Number of clusters."""
        return len(self.clusters)

    @property
    def normal_cluster(self) -> int | None:
        """The cluster taken as normal (``None`` when the input held anomalies only)."""
        return next((c.cluster_id for c in self.clusters if c.is_normal), None)

    @property
    def version(self) -> str:
        """Version id stamped at save time."""
        return str(self.meta.get("version", "unsaved"))

    def description(self, cluster_id: int) -> str:
        """The description of a cluster."""
        for c in self.clusters:
            if c.cluster_id == cluster_id:
                return c.description
        return f"cluster {cluster_id}"

    def _require_detector(self) -> Any:
        if self.detector is None:
            path = self.meta.get("detector_path")
            if not path or not Path(path).is_dir():
                raise ModelError(
                    f"the feature model of this cluster model ({path}) is not available: pass detector= to from_pretrained"
                )
            self.detector = load_feature_model(path, self.featurizer.kind or None)
        return self.detector

    # ------------------------------------------------------------------------- fitting

    @classmethod
    def fit(
        cls,
        detector: Any,
        records: Sequence[SequenceRecord],
        normal: Sequence[SequenceRecord] | None = None,
        config: ClusterConfig | None = None,
        detector_path: str | Path | None = None,
        progress: bool = False,
    ) -> ClusterModel:
        """Run stages 2-4 on ``records`` with a trained detector (stage 1)."""
        cfg = config or ClusterConfig()
        inputs, reference = select_inputs(records, cfg.mode, detector)
        if normal:
            reference = list(normal)
        if not inputs:
            raise DataError("nothing to cluster: the input holds no sequences for this mode")
        if not reference:
            logger.warning("no normal reference (--normal, label-0 or unflagged records); the input serves as one")
            reference = list(inputs)
        lines = _as_lines(inputs)
        featurizer = DeepFeaturizer(cfg.features)
        x = featurizer.fit_transform(detector, _as_lines(reference), lines, seed=cfg.birch.seed)
        result = birch_cluster(x, cfg.birch)
        labels = result.labels
        normal_cluster = None if cfg.mode != "all" else 0
        logger.info(
            "birch: %d clusters over %d sequences (silhouette %s)", result.n_clusters, len(x), result.silhouette
        )

        event_miner = TemplateMiner(normalizer=featurizer.normalizer)
        for seq in _as_lines(reference):
            event_miner.template_ids(seq, learn=True)
        template_ids = [event_miner.template_ids(seq, learn=True) for seq in lines]
        vocab_size = max(event_miner.templates, default=0) + 2
        clusters = describe_clusters(
            inputs,
            labels,
            x,
            template_ids,
            event_miner.templates,
            featurizer,
            normal_cluster,
            cfg.samples_per_cluster,
            cfg.top_templates,
        )
        classifier = None
        meta: dict[str, Any] = {
            "detector_path": str(Path(detector_path).resolve()) if detector_path else None,
            "detector_kind": featurizer.kind,
            "detector_version": str(getattr(detector, "version", "")),
            "n_inputs": len(inputs),
            "n_reference": len(reference),
            "silhouette": {str(k): v for k, v in result.silhouette.items()},
            "birch_threshold_used": result.threshold,
            "n_subclusters": len(result.centers),
        }
        if cfg.train_classifier and result.n_clusters >= 2:
            ccfg = ClassifierConfig.from_dict(
                {
                    **cfg.classifier.to_dict(),
                    "vocab_size": vocab_size,
                    "num_classes": result.n_clusters,
                    "feature_dim": x.shape[1],
                }
            )
            cfg.classifier = ccfg
            ids = [_event_index(t, vocab_size) for t in template_ids]
            classifier, history = train_classifier(ids, x, labels, ccfg, progress=progress)
            agree = float((predict_proba(classifier, ids, x).argmax(1) == labels).mean())
            meta["classifier_history"] = history[-1:] if history else []
            meta["classifier_train_agreement"] = agree
            logger.info("cluster model: agrees with the Birch labels on %.3f of the training sequences", agree)
        model = cls(
            cfg, featurizer, event_miner, clusters, result.centers, result.center_labels, classifier, detector, meta
        )
        model.train_features = x
        model.assignments = {
            "sequence_id": [r.sequence_id for r in inputs],
            "cluster": [int(c) for c in labels],
            "true_label": [true_label(r) for r in inputs],
        }
        return model

    # ------------------------------------------------------------------------- prediction

    def features(self, sequences: Sequence[Sequence[str]]) -> np.ndarray:
        """Deep features (stage 2) of new sequences."""
        return self.featurizer.transform(self._require_detector(), sequences)

    def event_ids(self, sequences: Sequence[Sequence[str]]) -> list[list[int]]:
        """Classifier input ids of each sequence (templates mined at fit time; unseen ones are unknown)."""
        vocab = self.classifier.config.vocab_size if self.classifier is not None else 2
        return [_event_index(self.event_miner.template_ids(s, learn=False), vocab) for s in sequences]

    def predict_birch(self, sequences: Sequence[Sequence[str]], features: np.ndarray | None = None) -> np.ndarray:
        """Cluster by the nearest Birch subcluster (no classifier)."""
        x = self.features(sequences) if features is None else features
        return nearest_center(np.asarray(x, dtype=np.float32), self.centers, self.center_labels)

    def predict_proba(self, sequences: Sequence[Sequence[str]]) -> np.ndarray:
        """Class probabilities (N, n_clusters) from the dual-input model (one-hot Birch when there is none)."""
        seqs = _as_lines(sequences)
        x = self.features(seqs)
        if self.classifier is None:
            out = np.zeros((len(seqs), max(self.n_clusters, 1)), dtype=np.float32)
            out[np.arange(len(seqs)), self.predict_birch(seqs, x)] = 1.0
            return out
        return predict_proba(self.classifier, self.event_ids(seqs), x)

    def predict_ids(self, sequences: Sequence[Sequence[str]]) -> np.ndarray:
        """Cluster id of each sequence."""
        if not sequences:
            return np.zeros(0, dtype=np.int64)
        return self.predict_proba(sequences).argmax(1).astype(np.int64)

    def predict(self, sequences: Sequence[Sequence[str]]) -> list[tuple[int, str]]:
        """``(cluster_id, description)`` of each sequence (a list of raw log lines)."""
        return [(int(c), self.description(int(c))) for c in self.predict_ids(sequences)]

    # ------------------------------------------------------------------------- save / load

    def save_pretrained(self, save_dir: str | Path) -> Path:
        """Write the artifact folder: config, classifier weights, Birch/featurizer state, clusters, miners."""
        from safetensors.numpy import save_file as save_numpy
        from safetensors.torch import save_file

        out = Path(save_dir)
        out.mkdir(parents=True, exist_ok=True)
        feat_meta, arrays = self.featurizer.state()
        arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        arrays["birch.centers"] = np.ascontiguousarray(self.centers)
        arrays["birch.center_labels"] = np.ascontiguousarray(self.center_labels)
        if self.train_features is not None:
            arrays["train.features"] = np.ascontiguousarray(self.train_features.astype(np.float32))
        digest = hashlib.sha256()
        for k in sorted(arrays):
            digest.update(k.encode())
            digest.update(arrays[k].tobytes())
        if self.classifier is not None:
            state = {k: v.detach().cpu().contiguous() for k, v in self.classifier.state_dict().items()}
            save_file(state, str(out / WEIGHTS_NAME))
            for k in sorted(state):
                digest.update(state[k].numpy().tobytes())
        elif (out / WEIGHTS_NAME).exists():
            (out / WEIGHTS_NAME).unlink()
        save_numpy(arrays, str(out / STATE_NAME))
        self.featurizer.save_miners(out)
        self.event_miner.save(out / EVENTS_DRAIN)
        write_json(out / NORMALIZER_NAME, self.featurizer.normalizer.to_dict())
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.meta["created_at"] = created
        self.meta["version"] = f"clusters-{digest.hexdigest()[:12]}-{created.replace('-', '').replace(':', '')}"
        write_json(
            out / CONFIG_NAME,
            {
                "kind": ARTIFACT_KIND,
                **self.meta,
                "n_clusters": self.n_clusters,
                "normal_cluster": self.normal_cluster,
                "config": self.config.to_dict(),
                "featurizer": feat_meta,
            },
        )
        write_json(out / CLUSTERS_NAME, [c.to_dict() for c in self.clusters])
        if self.assignments:
            write_json(out / ASSIGNMENTS_NAME, self.assignments)
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path, detector: Any | None = None) -> ClusterModel:
        """Load a folder written by :meth:`save_pretrained`; ``detector`` overrides the recorded feature model."""
        from safetensors.numpy import load_file as load_numpy
        from safetensors.torch import load_file

        folder = Path(path)
        if not folder.is_dir():
            raise ModelError(f"{folder}: no such cluster model folder")
        for name in (CONFIG_NAME, STATE_NAME, CLUSTERS_NAME, NOVELTY_DRAIN, VALUE_DRAIN, EVENTS_DRAIN):
            if not (folder / name).exists():
                raise ModelError(f"{folder}: not a cluster model ({name} missing)")
        try:
            meta = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
            clusters = [
                ClusterInfo.from_dict(c) for c in json.loads((folder / CLUSTERS_NAME).read_text(encoding="utf-8"))
            ]
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as exc:
            raise ModelError(f"{folder}: unreadable cluster model ({exc})") from None
        if meta.get("kind") != ARTIFACT_KIND:
            raise ModelError(f"{folder}: config.json is not a cluster model config")
        normalizer = Normalizer()
        if (folder / NORMALIZER_NAME).exists():
            normalizer = Normalizer.from_dict(json.loads((folder / NORMALIZER_NAME).read_text(encoding="utf-8")))
        arrays = load_numpy(str(folder / STATE_NAME))
        featurizer = DeepFeaturizer.from_state(meta.get("featurizer", {}), arrays, folder, normalizer)
        config = ClusterConfig.from_dict(meta.get("config", {}))
        classifier = None
        if (folder / WEIGHTS_NAME).exists():
            classifier = DualInputClassifier(config.classifier)
            try:
                classifier.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
            except RuntimeError as exc:
                raise ModelError(f"{folder}: classifier weights do not fit the config ({exc})") from None
            classifier.eval()
        if detector is not None and feature_model_of(detector) != featurizer.kind:
            raise ModelError(f"{folder} was fitted on {featurizer.kind} features, not {feature_model_of(detector)}")
        skip = {"kind", "n_clusters", "normal_cluster", "config", "featurizer"}
        model = cls(
            config,
            featurizer,
            TemplateMiner.load(folder / EVENTS_DRAIN, normalizer),
            clusters,
            arrays["birch.centers"],
            arrays["birch.center_labels"],
            classifier,
            detector,
            {k: v for k, v in meta.items() if k not in skip},
        )
        if "train.features" in arrays:
            model.train_features = arrays["train.features"]
        if (folder / ASSIGNMENTS_NAME).exists():
            model.assignments = json.loads((folder / ASSIGNMENTS_NAME).read_text(encoding="utf-8"))
        return model


# ----------------------------------------------------------------------------- analysis


def projection_2d(x: np.ndarray, method: str = "pca", seed: int = 42) -> np.ndarray:
    """A 2-D projection of the features (t-SNE for 5 to 5000 points, else PCA)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        return np.zeros((0, 2))
    if method == "tsne" and 5 <= len(x) <= MAX_TSNE:
        from sklearn.manifold import TSNE

        return np.asarray(
            TSNE(2, perplexity=min(30.0, (len(x) - 1) / 3), random_state=seed, init="pca").fit_transform(x)
        )
    centered = x - x.mean(0)
    if len(x) < 2 or not np.any(centered):
        return np.zeros((len(x), 2))
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    proj = centered @ vt[:2].T
    return proj if proj.shape[1] == 2 else np.pad(proj, ((0, 0), (0, 2 - proj.shape[1])))


def plot_clusters(points: np.ndarray, labels: Sequence[int], path: str | Path, title: str) -> Path:
    """Scatter of a 2-D projection coloured by cluster, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab20")
    lab = np.asarray(labels)
    for i, c in enumerate(sorted(set(lab.tolist()))):
        sel = lab == c
        ax.scatter(
            points[sel, 0],
            points[sel, 1],
            s=10,
            alpha=0.75,
            color=cmap(i % 20),
            label=f"cluster {c} ({int(sel.sum())})",
        )
    ax.set_title(title)
    ax.legend(fontsize=7, markerscale=1.5, loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def analyze(
    model: ClusterModel,
    records: Sequence[SequenceRecord] | None = None,
    samples: int = 5,
    top: int = 5,
) -> dict[str, Any]:
    """Per cluster: size, sample sequences, distinctive templates, purity (where labels exist).

    Without ``records``, the sequences the model was fitted on (as saved in the artifact) are used.
    """
    if records is None:
        a = model.assignments
        if not a:
            raise DataError("this cluster model holds no assignments; pass --data to analyze a file")
        labels = np.asarray(a["cluster"], dtype=np.int64)
        truth = list(a.get("true_label") or [None] * len(labels))
        x = model.train_features if model.train_features is not None else np.zeros((len(labels), 0))
        clusters = []
        for info in model.clusters:
            d = info.to_dict()
            d["samples"] = d["samples"][:samples]
            d["templates"] = d["templates"][:top]
            clusters.append(d)
        ids = list(a["sequence_id"])
    else:
        seqs = _as_lines(records)
        x = model.features(seqs)
        labels = (
            predict_proba(model.classifier, model.event_ids(seqs), x).argmax(1)
            if model.classifier is not None
            else model.predict_birch(seqs, x)
        )
        truth = [true_label(r) for r in records]
        template_ids = [model.event_miner.template_ids(s, learn=False) for s in seqs]
        infos = describe_clusters(
            records,
            labels,
            x,
            template_ids,
            model.event_miner.templates,
            model.featurizer,
            model.normal_cluster,
            samples,
            top,
        )
        clusters = []
        for info in infos:
            d = info.to_dict()
            d["description"] = model.description(info.cluster_id)
            clusters.append(d)
        ids = [r.sequence_id for r in records]
    report: dict[str, Any] = {
        "model_version": model.version,
        "n_sequences": len(labels),
        "n_clusters": len({int(c) for c in labels}),
        "normal_cluster": model.normal_cluster,
        "clusters": clusters,
        "sequence_ids": ids,
        "labels": [int(c) for c in labels],
    }
    known = [(t, int(c)) for t, c in zip(truth, labels, strict=True) if t is not None]
    if known and len({t for t, _ in known}) >= 1:
        report["metrics"] = cluster_metrics([t for t, _ in known], [c for _, c in known])
    report["_features"] = x
    return report


def format_analysis(report: Mapping[str, Any], width: int = 160) -> str:
    """Plain-text view of :func:`analyze` output."""
    out = [
        f"{report['n_sequences']} sequences in {report['n_clusters']} clusters"
        + (f" (normal cluster: {report['normal_cluster']})" if report.get("normal_cluster") is not None else "")
    ]
    for c in report["clusters"]:
        head = f"\n== cluster {c['cluster_id']}: {c['size']} sequences"
        if c.get("purity") is not None:
            head += f", purity {c['purity']:.3f} (majority: {c['majority']})"
        out.append(head)
        out.append(f"   description: {c['description']}")
        if c.get("labels"):
            out.append("   labels: " + ", ".join(f"{k}={v}" for k, v in c["labels"].items()))
        if c["templates"]:
            out.append("   distinctive templates:")
            out += [f"     [{t['share']:.2f}] {t['template'][:width]}" for t in c["templates"]]
        if c.get("words"):
            out.append("   novel words: " + ", ".join(c["words"]))
        out.append("   samples:")
        for s in c["samples"]:
            out.append(f"     - {s['sequence_id']}")
            out += [f"         {line[:width]}" for line in s["log_entries"]]
    if "metrics" in report:
        out.append("")
        out.append(format_metrics(report["metrics"], "clusters vs known labels"))
    return "\n".join(out)


# ----------------------------------------------------------------------------- CLI


def _read_many(paths: Sequence[str | Path]) -> list[SequenceRecord]:
    records: list[SequenceRecord] = []
    for p in paths:
        records.extend(read_records(p))
    if not records:
        raise DataError(f"no sequences in {', '.join(str(p) for p in paths)}")
    return records


def _default_detector(feature_model: str) -> Path:
    return Path("artifacts/deeplog" if feature_model == "deeplog" else "artifacts/detector")


# Budgets by name for `cluster`: what a profile sets where the flags do not. "quick" is make demo's: the DeepLog
# feature model that --train-detector trains runs few epochs, and Birch alone assigns clusters (no classifier).
CLUSTER_PROFILES: dict[str, dict[str, int]] = {
    "full": {},
    "quick": {"detector_epochs": 5, "epochs": 0},
}


def _cluster_handler(args: argparse.Namespace) -> int:
    import torch

    budget = {
        **CLUSTER_PROFILES[args.profile],
        **{k: v for k in ("detector_epochs", "epochs") if (v := getattr(args, k)) is not None},
    }
    epochs = int(budget.get("epochs", ClassifierConfig.epochs))
    if args.threads:
        torch.set_num_threads(args.threads)
    records = _read_many(args.data)
    normal = _read_many(args.normal) if args.normal else None
    feature_model = args.feature_model
    detector_path = Path(args.detector) if args.detector else _default_detector(feature_model or "deeplog")
    if not detector_path.is_dir():
        if not args.train_detector:
            raise ModelError(
                f"no detector at {detector_path}: train one (logtriage train-small) or pass --train-detector"
            )
        if feature_model not in (None, "deeplog"):
            raise ModelError("--train-detector trains a DeepLog detector only; train MoE-BERT with train-small")
        from small_model.deeplog import DeepLogConfig, DeepLogDetector

        train = normal or [r for r in records if r.label == 0] or [r for r in records if r.label is None]
        if not train:
            raise DataError("--train-detector needs normal sequences: pass --normal or label some records 0")
        logger.info("training a DeepLog detector on %d normal sequences -> %s", len(train), detector_path)
        deeplog = DeepLogConfig(epochs=budget["detector_epochs"]) if "detector_epochs" in budget else DeepLogConfig()
        DeepLogDetector(deeplog).fit(train, progress=False).save_pretrained(detector_path)
    detector = load_feature_model(detector_path, feature_model)
    mode: Mode = "anomalies-only" if args.anomalies_only else "flagged-only" if args.flagged_only else "all"
    config = ClusterConfig(
        mode=mode,
        birch=BirchConfig(
            threshold=args.threshold,
            branching_factor=args.branching_factor,
            n_clusters=args.n_clusters,
            min_clusters=args.min_clusters,
            max_clusters=args.max_clusters,
            global_method=args.global_method,
            seed=args.seed,
        ),
        classifier=ClassifierConfig(epochs=epochs, seed=args.seed),
        train_classifier=epochs > 0,
        profile=args.profile,
    )
    model = ClusterModel.fit(detector, records, normal, config, detector_path=detector_path)
    out = model.save_pretrained(args.output)
    truth = model.assignments.get("true_label", [])
    summary: dict[str, Any] = {
        "output": str(out),
        "version": model.version,
        "n_sequences": len(model.assignments["cluster"]),
        "n_clusters": model.n_clusters,
        "normal_cluster": model.normal_cluster,
        "clusters": [
            {"cluster_id": c.cluster_id, "size": c.size, "description": c.description} for c in model.clusters
        ],
    }
    known = [(t, c) for t, c in zip(truth, model.assignments["cluster"], strict=True) if t is not None]
    if known:
        summary["metrics"] = cluster_metrics([t for t, _ in known], [c for _, c in known])
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['n_sequences']} sequences -> {model.n_clusters} clusters, saved to {out}")
        for c in model.clusters:
            purity = f"  purity {c.purity:.2f} ({c.majority})" if c.purity is not None else ""
            print(f"  [{c.cluster_id}] {c.size:5d}  {c.description[:110]}{purity}")
        if "metrics" in summary:
            print()
            print(format_metrics(summary["metrics"], "clusters vs known labels"))
    return 0


def _analyze_handler(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    detector = load_feature_model(args.detector) if args.detector else None
    model = ClusterModel.from_pretrained(args.model, detector=detector)
    records = _read_many(args.data) if args.data else None
    report = analyze(model, records, samples=args.samples, top=args.top)
    x = report.pop("_features")
    plot_path = None
    if not args.no_plot:
        plot_path = Path(args.plot) if args.plot else Path(args.model) / "clusters_2d.png"
        if len(x) and x.shape[1]:
            points = projection_2d(x, args.projection)
            how = "t-SNE" if args.projection == "tsne" and 5 <= len(x) <= MAX_TSNE else "PCA"
            plot_clusters(points, report["labels"], plot_path, f"clusters ({how} of the deep features)")
            report["plot"] = str(plot_path)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(format_analysis(report))
        if "plot" in report:
            print(f"\nplot: {report['plot']}")
    return 0


def add_commands(subparsers: Any) -> dict[str, Any]:
    """Register ``cluster`` and ``analyze-clusters``; returns their parsers by name."""
    p = subparsers.add_parser(
        "cluster",
        help="group anomalies into categories: deep features, Birch, a dual-input classifier",
        description="Deep-feature clustering of log sequences; saves a cluster model artifact folder.",
    )
    p.add_argument("--data", nargs="+", required=True, help="sequence file(s) (JSON, JSONL, CSV)")
    p.add_argument(
        "--detector", help="detector artifact folder (stage 1); default artifacts/deeplog or artifacts/detector"
    )
    p.add_argument("--feature-model", choices=FEATURE_MODELS, help="check the detector is of this kind")
    p.add_argument("--normal", nargs="+", help="normal reference sequence file(s) (e.g. train_normal.json)")
    p.add_argument("--train-detector", action="store_true", help="train a DeepLog detector when --detector is missing")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--anomalies-only", action="store_true", help="cluster anomalies only (label-0 records are the reference)"
    )
    group.add_argument("--flagged-only", action="store_true", help="cluster what the detector flags")
    p.add_argument("--threshold", type=float, default=BirchConfig.threshold, help="Birch subcluster radius")
    p.add_argument("--branching-factor", type=int, default=BirchConfig.branching_factor)
    p.add_argument("--n-clusters", type=int, default=None, help="default: chosen by silhouette")
    p.add_argument("--min-clusters", type=int, default=BirchConfig.min_clusters)
    p.add_argument("--max-clusters", type=int, default=BirchConfig.max_clusters)
    p.add_argument("--global-method", choices=("kmeans", "ward"), default=BirchConfig.global_method)
    p.add_argument(
        "--epochs", type=int, default=None, help=f"classifier epochs (0: Birch only; default {ClassifierConfig.epochs})"
    )
    p.add_argument(
        "--detector-epochs",
        type=int,
        default=None,
        help="epochs of the DeepLog that --train-detector trains (default 60)",
    )
    p.add_argument(
        "--profile",
        choices=tuple(CLUSTER_PROFILES),
        default="full",
        help="budget: full, or quick (make demo's: "
        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in CLUSTER_PROFILES["quick"].items())
        + " where not given); recorded in the artifact",
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("-o", "--output", default="artifacts/clusters", help="artifact folder")
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p.set_defaults(handler=_cluster_handler)

    a = subparsers.add_parser(
        "analyze-clusters",
        help="print each cluster's size, samples, templates, purity; plot a 2-D projection",
        description="Describe a cluster model's clusters (or its predictions on --data).",
    )
    a.add_argument("--model", default="artifacts/clusters", help="cluster model folder")
    a.add_argument("--data", nargs="+", help="sequence file(s) to assign and analyze (default: the fitted ones)")
    a.add_argument("--detector", help="override the feature model folder recorded in the cluster model")
    a.add_argument("--samples", type=int, default=5)
    a.add_argument("--top", type=int, default=5, help="distinctive templates per cluster")
    a.add_argument("--plot", help="PNG path (default <model>/clusters_2d.png)")
    a.add_argument("--no-plot", action="store_true")
    a.add_argument(
        "--projection", choices=("pca", "tsne"), default="tsne", help="t-SNE (default; PCA above 5000 points)"
    )
    a.add_argument("--threads", type=int, default=None)
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.set_defaults(handler=_analyze_handler)
    return {"cluster": p, "analyze-clusters": a}


__all__ = [
    "BirchConfig",
    "BirchResult",
    "ClusterConfig",
    "ClusterInfo",
    "ClusterModel",
    "DeepFeaturizer",
    "FeatureConfig",
    "add_commands",
    "analyze",
    "birch_cluster",
    "cluster_metrics",
    "deeplog_edit_gains",
    "format_analysis",
    "format_metrics",
    "hungarian_accuracy",
    "hungarian_mapping",
    "load_feature_model",
    "select_inputs",
]
