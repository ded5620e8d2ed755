"""The saved cluster model: stages 2-4 fitted together, saved as one artifact folder, predicting the
cluster (and its description) of new sequences.

    model = ClusterModel.fit(detector, records, normal=normal_records, config=ClusterConfig())
    model.save_pretrained("artifacts/clusters")
    ClusterModel.from_pretrained("artifacts/clusters").predict([["line", "line"]])  # [(cluster_id, description)]
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import DataError, ModelError
from core.io import write_json
from core.normalize import Normalizer
from core.schema import SequenceRecord
from core.templates import TemplateMiner
from small_model.clusters.birch import BirchResult, birch_cluster, nearest_center
from small_model.clusters.classifier import DualInputClassifier, event_index, predict_proba, train_classifier
from small_model.clusters.config import ClassifierConfig, ClusterConfig
from small_model.clusters.describe import ClusterInfo, describe_clusters, true_label
from small_model.clusters.features import NOVELTY_DRAIN, VALUE_DRAIN, DeepFeaturizer, load_feature_model
from small_model.clusters.inputs import as_lines, select_inputs
from small_model.detector import Detector

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
STATE_NAME = "cluster_state.safetensors"
CLUSTERS_NAME = "clusters.json"
ASSIGNMENTS_NAME = "assignments.json"
EVENTS_DRAIN = "events_drain3.json"
NORMALIZER_NAME = "normalizer.json"
ARTIFACT_KIND = "cluster-model"


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
        detector: Detector | None = None,
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

    def _require_detector(self) -> Detector:
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
        detector: Detector,
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
        lines = as_lines(inputs)
        featurizer = DeepFeaturizer(cfg.features)
        x = featurizer.fit_transform(detector, as_lines(reference), lines, seed=cfg.birch.seed)
        result = birch_cluster(x, cfg.birch)
        labels = result.labels
        normal_cluster = None if cfg.mode != "all" else 0
        logger.info(
            "birch: %d clusters over %d sequences (silhouette %s)", result.n_clusters, len(x), result.silhouette
        )

        event_miner, template_ids = _mine_events(featurizer.normalizer, as_lines(reference), lines)
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
        meta: dict[str, Any] = {
            "detector_path": str(Path(detector_path).resolve()) if detector_path else None,
            "detector_kind": featurizer.kind,
            "detector_version": str(detector.version),
            "n_inputs": len(inputs),
            "n_reference": len(reference),
            "silhouette": {str(k): v for k, v in result.silhouette.items()},
            "birch_threshold_used": result.threshold,
            "n_subclusters": len(result.centers),
        }
        classifier: DualInputClassifier | None = None
        if cfg.train_classifier and result.n_clusters >= 2:
            vocab_size = max(event_miner.templates, default=0) + 2
            classifier = _fit_classifier(cfg, template_ids, x, result, vocab_size, meta, progress)
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
        return [event_index(self.event_miner.template_ids(s, learn=False), vocab) for s in sequences]

    def predict_birch(self, sequences: Sequence[Sequence[str]], features: np.ndarray | None = None) -> np.ndarray:
        """Cluster by the nearest Birch subcluster (no classifier)."""
        x = self.features(sequences) if features is None else features
        return nearest_center(np.asarray(x, dtype=np.float32), self.centers, self.center_labels)

    def predict_proba(self, sequences: Sequence[Sequence[str]]) -> np.ndarray:
        """Class probabilities (N, n_clusters) from the dual-input model (one-hot Birch when there is none)."""
        seqs = as_lines(sequences)
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
    def from_pretrained(cls, path: str | Path, detector: Detector | None = None) -> ClusterModel:
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
        if detector is not None and detector.kind != featurizer.kind:
            raise ModelError(f"{folder} was fitted on {featurizer.kind} features, not {detector.kind}")
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


def _mine_events(
    normalizer: Normalizer, reference: Sequence[Sequence[str]], inputs: Sequence[Sequence[str]]
) -> tuple[TemplateMiner, list[list[int]]]:
    """The classifier's event miner (templates of the reference, then of the inputs) and the inputs' template ids."""
    miner = TemplateMiner(normalizer=normalizer)
    for seq in reference:
        miner.template_ids(seq, learn=True)
    return miner, [miner.template_ids(seq, learn=True) for seq in inputs]


def _fit_classifier(
    cfg: ClusterConfig,
    template_ids: Sequence[Sequence[int]],
    x: np.ndarray,
    result: BirchResult,
    vocab_size: int,
    meta: dict[str, Any],
    progress: bool,
) -> DualInputClassifier:
    """Stage 4: train the dual-input model on the Birch labels; records its shape in ``cfg`` and its fit in ``meta``."""
    ccfg = ClassifierConfig.from_dict(
        {
            **cfg.classifier.to_dict(),
            "vocab_size": vocab_size,
            "num_classes": result.n_clusters,
            "feature_dim": x.shape[1],
        }
    )
    cfg.classifier = ccfg
    ids = [event_index(t, vocab_size) for t in template_ids]
    classifier, history = train_classifier(ids, x, result.labels, ccfg, progress=progress)
    agree = float((predict_proba(classifier, ids, x).argmax(1) == result.labels).mean())
    meta["classifier_history"] = history[-1:] if history else []
    meta["classifier_train_agreement"] = agree
    logger.info("cluster model: agrees with the Birch labels on %.3f of the training sequences", agree)
    return classifier
