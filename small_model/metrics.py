"""The figures of a detector's scores against labels, the same for every detector and every report.

    metrics = evaluate_scores(labels, scores, threshold)    # the dict saved in metrics.json and report.json
    threshold, f1 = best_f1_threshold(labels, scores)

A sequence is flagged when ``score >= threshold``. One rule for what is undefined: a figure that
needs both classes (ROC-AUC, PR-AUC, the best-F1 cut) or any sequence at all (accuracy) is ``None``
in :func:`evaluate_scores`, never NaN, so a saved report is valid JSON and a comparison with it
fails loudly instead of being silently false; :func:`best_f1_threshold` and :func:`roc_auc`, which
return one number, raise ``ValueError`` where theirs is undefined.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Labels = Sequence[int] | np.ndarray
Scores = Sequence[float] | np.ndarray


def _two_classes(y: np.ndarray) -> bool:
    return len(np.unique(y)) == 2


def best_f1_threshold(labels: Labels, scores: Scores) -> tuple[float, float]:
    """The threshold (midway between neighbouring distinct scores) with the best F1, and that F1."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.sum() == 0:
        raise ValueError("the best-F1 threshold needs at least one anomalous label")
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(1 - y_sorted)
    f1 = 2 * tp / (tp + fp + y.sum())
    distinct = np.r_[s_sorted[1:] < s_sorted[:-1], True]  # cut only between different scores
    f1 = np.where(distinct, f1, -1.0)
    i = int(np.argmax(f1))
    upper = s_sorted[i]
    lower = s_sorted[i + 1] if i + 1 < len(s_sorted) else upper - 1e-6
    return float((upper + lower) / 2), float(f1[i])


def roc_auc(labels: Labels, scores: Scores) -> float:
    """ROC-AUC of the scores (labels of both classes needed)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels, dtype=np.int64)
    if not _two_classes(y):
        raise ValueError("ROC-AUC needs labels of both classes")
    return float(roc_auc_score(y, np.asarray(scores, dtype=np.float64)))


def evaluate_scores(labels: Labels, scores: Scores, threshold: float) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 at ``threshold`` (score >= threshold is anomalous), ROC-AUC, PR-AUC,
    the best-F1 threshold and its F1, and the confusion matrix ``[[tn, fp], [fn, tp]]`` (also as
    ``tn``, ``fp``, ``fn``, ``tp``); undefined figures are ``None`` (see the module docstring)."""
    from sklearn.metrics import average_precision_score

    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"{len(y)} labels but {len(s)} scores")
    if len(y) and not set(np.unique(y).tolist()) <= {0, 1}:
        raise ValueError("labels must be 0 or 1")
    pred = s >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    tn = int(np.sum(~pred & (y == 0)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    both = _two_classes(y)
    best_thr, best_f1 = best_f1_threshold(y, s) if both else (None, None)
    return {
        "n": len(y),
        "n_anomalous": int(y.sum()),
        "threshold": float(threshold),
        "accuracy": (tp + tn) / len(y) if len(y) else None,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "roc_auc": roc_auc(y, s) if both else None,
        "pr_auc": float(average_precision_score(y, s)) if both else None,
        "best_f1_threshold": best_thr,
        "best_f1": best_f1,
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "tn": tn,
        "fp": fp,
        "fn": fn,
        "tp": tp,
    }


def per_type_recall(
    anomaly_types: Sequence[str | None], labels: Labels, flagged: np.ndarray
) -> dict[str, dict[str, Any]]:
    """For each anomaly type: how many sequences, how many flagged (normals under ``normal``)."""
    out: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[int]] = {}
    for i, (t, y) in enumerate(zip(anomaly_types, labels, strict=True)):
        groups.setdefault("normal" if y == 0 else (t or "unknown"), []).append(i)
    for name in sorted(groups):
        idx = groups[name]
        hit = int(np.sum(flagged[idx]))
        out[name] = {"support": len(idx), "flagged": hit, "rate": hit / len(idx)}
    return out
