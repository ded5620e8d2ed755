"""The configs of the clustering pipeline: features (stage 2), Birch (stage 3), the classifier (stage 4)
and the whole pipeline, each a dataclass with defaults that round-trips through the artifact's JSON."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, Self, cast

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Mode = Literal["all", "anomalies-only", "flagged-only"]


class JsonFields:
    """``to_dict`` and ``from_dict`` of a dataclass with JSON-ready fields, as the artifact stores it."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(cast("DataclassInstance", self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Rebuild from :meth:`to_dict`; keys without a field (from another version) are ignored."""
        known = {f.name for f in fields(cast("type[DataclassInstance]", cls))}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class FeatureConfig(JsonFields):
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


@dataclass
class BirchConfig(JsonFields):
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


@dataclass
class ClassifierConfig(JsonFields):
    """Shape and training of the dual-input model; JSON (de)serialisable."""

    vocab_size: int = 2  # event vocabulary incl. pad and unknown
    num_classes: int = 2
    feature_dim: int = 1
    embedding_dim: int = 32
    hidden_size: int = 64
    num_layers: int = 1
    dropout: float = 0.1
    max_len: int = 64  # longer sequences keep their last max_len events
    alpha: float = 0.3  # next-event prediction
    beta: float = 1.0  # class cross-entropy
    gamma: float = 0.3  # consistency with the deep feature
    consistency: Literal["mse", "cosine"] = "mse"
    epochs: int = 40
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 42

    def __post_init__(self) -> None:
        if self.consistency not in ("mse", "cosine"):
            raise ValueError(f"consistency must be 'mse' or 'cosine', got {self.consistency!r}")
        if min(self.vocab_size, self.num_classes, self.feature_dim, self.hidden_size, self.embedding_dim) < 1:
            raise ValueError("vocab_size, num_classes, feature_dim, hidden_size and embedding_dim must be >= 1")


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
