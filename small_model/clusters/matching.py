"""How well clusters match known classes: Hungarian-matched accuracy, NMI, ARI and a per-class table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


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
