"""Stage 2: the deep features of a sequence, made with a trained detector and a normal reference.

Four blocks, each scaled to unit mean norm and weighted (:class:`~small_model.clusters.config.FeatureConfig`):

- ``deep``: the detector's own embedding (DeepLog: final LSTM state; MoE-BERT: pooled output),
  standardized by the normal reference, optionally reduced by PCA;
- ``distance``: the distance of that embedding to the mean of the normal embeddings;
- ``structure``: how the sequence model is surprised. For a detector with a next-event model
  (DeepLog), the NLL gain of the best single edit that makes the sequence look normal
  (:mod:`small_model.clusters.edits`), then for every detector the largest repeat of one event and
  the number of lines of never-seen templates and of out-of-range values;
- ``vocabulary``: the words of the lines whose template the normal reference never produced,
  weighted by how novel each word is against normal logs and how often it recurs among the input
  sequences (a bag-of-templates variant that survives re-phrasing).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import DataError, ModelError
from core.normalize import Normalizer, NormalizerConfig
from core.templates import UNKNOWN_TEMPLATE, TemplateMiner
from small_model.clusters.config import FeatureConfig
from small_model.clusters.edits import deeplog_edit_gains, has_next_event_model
from small_model.detector import Detector

NOVELTY_DRAIN = "novelty_drain3.json"
VALUE_DRAIN = "value_drain3.json"
KNOWN, VALUE, NOVEL = 0, 1, 2  # line kinds against the normal reference
_TOKEN = re.compile(r"<[^<>\s]+>|[^\W\d_][\w.:\-]*")


def load_feature_model(path: str | Path, expected: str | None = None) -> Detector:
    """Load a detector artifact (stage 1) through the registry; check its kind against ``expected``."""
    from small_model.registry import detector_kind, load_detector

    kind = detector_kind(path)
    if expected is not None and expected != kind:
        raise ModelError(f"{path} holds a {kind} detector, not {expected}")
    return load_detector(path)


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
        self, detector: Detector, normal: Sequence[Sequence[str]], inputs: Sequence[Sequence[str]], seed: int = 42
    ) -> DeepFeaturizer:
        """Fit the normal statistics (mean, spread, templates, word rarity) and the input-side scalings."""
        self.fit_transform(detector, normal, inputs, seed)
        return self

    def fit_transform(
        self, detector: Detector, normal: Sequence[Sequence[str]], inputs: Sequence[Sequence[str]], seed: int = 42
    ) -> np.ndarray:
        """:meth:`fit`, returning the features of ``inputs``."""
        if not normal:
            raise DataError("no normal reference sequences to fit the deep features on")
        if not inputs:
            raise DataError("no sequences to cluster")
        cfg = self.config
        self.kind = detector.kind
        self.normalizer = detector.normalizer
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

    def _structure(self, detector: Detector, sequences: Sequence[Sequence[str]]) -> np.ndarray:
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
        if has_next_event_model(detector):
            gains = deeplog_edit_gains(detector, sequences, cfg.insert_candidates)
            struct = np.concatenate([np.tanh(np.maximum(gains, 0.0) / cfg.gain_scale), struct], axis=1)
        return struct

    def _blocks(
        self,
        detector: Detector,
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

    def transform(self, detector: Detector, sequences: Sequence[Sequence[str]]) -> np.ndarray:
        """The weighted feature matrix (N, dim)."""
        if not self.arrays:
            raise ModelError("the featurizer is not fitted")
        if detector.kind != self.kind:
            raise ModelError(f"the features were fitted on a {self.kind} detector, not {detector.kind}")
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
