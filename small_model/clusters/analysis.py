"""Reading a fitted cluster model: each cluster's size, samples, templates and purity, and a 2-D
projection of the deep features (t-SNE, PCA above :data:`MAX_TSNE` points) as a PNG."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import DataError
from core.schema import SequenceRecord
from small_model.clusters.classifier import predict_proba
from small_model.clusters.describe import describe_clusters, true_label
from small_model.clusters.inputs import as_lines
from small_model.clusters.matching import cluster_metrics, format_metrics
from small_model.clusters.model import ClusterModel

MAX_TSNE = 5000


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
        seqs = as_lines(records)
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
