"""Stage 3: Birch clustering of the deep features; k chosen by silhouette when not given."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from core.errors import DataError
from small_model.clusters.config import BirchConfig

logger = logging.getLogger(__name__)


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
