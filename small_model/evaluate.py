"""Model-agnostic evaluation of anomaly scores: a report folder, comparison tables, BGL.

Any :class:`~small_model.detector.Scorer` fits (MoE-BERT, DeepLog, a rule); a detector's ``embed``
adds the t-SNE plots. The figures come from :mod:`small_model.metrics`.

    report = evaluate_detector(detector, records, out_dir="runs/eval")       # JSON + PNGs + top-N text
    print(compare_table([{"model": "moe-bert", **m1}, {"model": "deeplog", **m2}]))

The loghub BGL_2k label-free protocol (:func:`evaluate_bgl`): 10-line windows, a window anomalous
when any of its lines carries an alert; the first 60% of windows in time order train (normal
windows only), the rest test. Nothing from the test part (labels included) tunes the detector.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import DataError
from core.io import atomic_write, write_json
from core.loghub import chronological_split, labelled_windows
from core.schema import SequenceRecord
from small_model.detector import Scorer
from small_model.metrics import evaluate_scores, per_type_recall, roc_auc

logger = logging.getLogger(__name__)

REPORT_NAME = "report.json"
TOP_NAME = "top_anomalies.txt"
MAX_TSNE_POINTS = 2000
METRIC_COLUMNS = ("n", "accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "best_f1")


# ----------------------------------------------------------------------------- tables


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.3f}"
    return str(value)


def compare_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of several runs' metrics side by side (text columns first, then metrics)."""
    if not rows:
        return ""
    if columns is None:
        text_cols = [k for k in rows[0] if isinstance(rows[0][k], str)]
        for row in rows[1:]:
            text_cols += [k for k in row if isinstance(row[k], str) and k not in text_cols]
        columns = [*text_cols, *(c for c in METRIC_COLUMNS if any(c in r for r in rows))]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- report


def _record_fields(record: SequenceRecord | Mapping[str, Any]) -> tuple[str, list[str], str | None]:
    if isinstance(record, SequenceRecord):
        return record.sequence_id, list(record.log_entries), record.anomaly_type
    return str(record.get("sequence_id", "?")), list(record.get("log_entries", [])), record.get("anomaly_type")


def tsne_2d(embeddings: np.ndarray, seed: int = 42) -> np.ndarray:
    """A 2-D t-SNE projection (perplexity adapted to small sets)."""
    from sklearn.manifold import TSNE

    x = np.asarray(embeddings, dtype=np.float32)
    perplexity = float(max(2.0, min(30.0, (len(x) - 1) / 3)))
    return np.asarray(TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x))


def _scatter(path: Path, points: np.ndarray, groups: Sequence[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6))
    names = sorted(set(groups), key=lambda g: (g != "normal", g))
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    arr = np.asarray(groups)
    for k, name in enumerate(names):
        sel = arr == name
        ax.scatter(
            points[sel, 0], points[sel, 1], s=8, alpha=0.7, color=cmap(k % cmap.N), label=f"{name} ({sel.sum()})"
        )
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(
    out: Path,
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    embeddings: np.ndarray | None = None,
    anomaly_types: Sequence[str | None] | None = None,
    title: str = "",
    seed: int = 42,
) -> list[str]:
    """Score histograms, ROC and PR curves, and t-SNE plots of embeddings; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    files: list[str] = []
    prefix = f"{title}: " if title else ""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bins = np.linspace(float(min(scores.min(), threshold)), float(max(scores.max(), threshold)) + 1e-9, 41).tolist()
    for value, name, color in ((0, "normal", "tab:blue"), (1, "anomalous", "tab:red")):
        sel = labels == value
        if sel.any():
            ax.hist(scores[sel], bins=bins, alpha=0.6, color=color, label=f"{name} ({int(sel.sum())})")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("anomaly score")
    ax.set_ylabel("sequences")
    ax.set_yscale("log")
    ax.set_title(prefix + "score distribution")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "score_hist.png", dpi=110)
    plt.close(fig)
    files.append("score_hist.png")

    if len(np.unique(labels)) == 2:
        fpr, tpr, _ = roc_curve(labels, scores)
        precision, recall, _ = precision_recall_curve(labels, scores)
        for name, xs, ys, xl, yl in (
            ("roc_curve.png", fpr, tpr, "false positive rate", "true positive rate"),
            ("pr_curve.png", recall, precision, "recall", "precision"),
        ):
            fig, ax = plt.subplots(figsize=(5, 5))
            ax.plot(xs, ys, color="tab:red")
            if name == "roc_curve.png":
                ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
                ax.set_title(prefix + f"ROC (AUC {roc_auc(labels, scores):.3f})")
            else:
                ax.axhline(labels.mean(), color="grey", linestyle=":")
                ax.set_title(prefix + "precision-recall")
            ax.set_xlabel(xl)
            ax.set_ylabel(yl)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            fig.tight_layout()
            fig.savefig(out / name, dpi=110)
            plt.close(fig)
            files.append(name)

    if embeddings is not None and len(embeddings) >= 5:
        rng = np.random.default_rng(seed)
        idx = np.arange(len(embeddings))
        if len(idx) > MAX_TSNE_POINTS:
            idx = np.sort(rng.choice(idx, MAX_TSNE_POINTS, replace=False))
        points = tsne_2d(np.asarray(embeddings)[idx], seed)
        _scatter(
            out / "tsne_label.png",
            points,
            ["anomalous" if labels[i] == 1 else "normal" for i in idx],
            prefix + "t-SNE by label",
        )
        files.append("tsne_label.png")
        if anomaly_types is not None:
            groups = ["normal" if labels[i] == 0 else (anomaly_types[int(i)] or "unknown") for i in idx]
            _scatter(out / "tsne_type.png", points, groups, prefix + "t-SNE by anomaly type")
            files.append("tsne_type.png")
    return files


def write_top(
    path: Path,
    records: Sequence[SequenceRecord | Mapping[str, Any]],
    scores: np.ndarray,
    labels: np.ndarray | None,
    threshold: float,
    top_n: int = 20,
) -> list[dict[str, Any]]:
    """The ``top_n`` highest-scoring sequences as text; returns their summaries."""
    order = np.argsort(-scores, kind="stable")[:top_n]
    top = []
    with atomic_write(path) as handle:
        handle.write(f"# top {len(order)} of {len(scores)} sequences by anomaly score (threshold {threshold:.4f})\n\n")
        for rank, i in enumerate(order, start=1):
            sid, lines, kind = _record_fields(records[i])
            label = None if labels is None else int(labels[i])
            top.append(
                {"rank": rank, "sequence_id": sid, "score": float(scores[i]), "label": label, "anomaly_type": kind}
            )
            handle.write(f"{rank}. {sid}  score={scores[i]:.4f}  label={label}  type={kind}\n")
            for line in lines:
                handle.write(f"    {line}\n")
            handle.write("\n")
    return top


def write_report(
    out_dir: str | Path,
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    threshold: float,
    records: Sequence[SequenceRecord | Mapping[str, Any]],
    embeddings: np.ndarray | None = None,
    anomaly_types: Sequence[str | None] | None = None,
    top_n: int = 20,
    title: str = "",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``report.json``, the PNG plots and ``top_anomalies.txt`` into ``out_dir``; returns the report."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if not (len(y) == len(s) == len(records)):
        raise ValueError(f"{len(y)} labels, {len(s)} scores and {len(records)} records differ in number")
    if len(y) == 0:
        raise DataError("nothing to evaluate: no labeled sequences")
    if anomaly_types is None:
        anomaly_types = [_record_fields(r)[2] for r in records]
    report: dict[str, Any] = {"title": title, **(dict(extra) if extra else {})}
    report["metrics"] = evaluate_scores(y, s, threshold)
    report["per_type"] = per_type_recall(anomaly_types, y, s >= threshold)
    report["files"] = write_plots(out, y, s, threshold, embeddings, anomaly_types, title)
    report["top"] = write_top(out / TOP_NAME, records, s, y, threshold, top_n)
    report["files"] += [TOP_NAME, REPORT_NAME]
    write_json(out / REPORT_NAME, report)
    return report


def evaluate_detector(
    detector: Scorer,
    records: Sequence[SequenceRecord],
    out_dir: str | Path | None = None,
    top_n: int = 20,
    title: str = "",
    embed: bool = True,
) -> dict[str, Any]:
    """Score the labeled records with a detector; metrics, plus the report folder when ``out_dir`` is given."""
    keep = [r for r in records if r.label is not None]
    if not keep:
        raise DataError("no labeled sequences to evaluate")
    seqs = [list(r.log_entries) for r in keep]
    labels = np.array([r.label for r in keep], dtype=np.int64)
    t0 = time.perf_counter()
    scores = np.asarray(detector.score(seqs), dtype=np.float64)
    seconds = time.perf_counter() - t0
    timing = {"score_seconds": round(seconds, 3), "sequences_per_second": round(len(seqs) / max(seconds, 1e-9), 1)}
    threshold = float(detector.threshold)
    if out_dir is None:
        return {"metrics": evaluate_scores(labels, scores, threshold), **timing}
    embeddings = None
    embed_fn = getattr(detector, "embed", None)  # a Detector embeds; a bare Scorer (a rule) need not
    if embed and callable(embed_fn):
        embeddings = np.asarray(embed_fn(seqs))
    return write_report(out_dir, labels, scores, threshold, keep, embeddings, None, top_n, title, timing)


# ----------------------------------------------------------------------------- loghub BGL protocol

Trainer = Callable[[list[SequenceRecord], Path], Scorer]


def bgl_split(
    log_path: str | Path, size: int = 10, train_fraction: float = 0.6
) -> tuple[list[SequenceRecord], list[SequenceRecord]]:
    """BGL windows of ``size`` lines split in time order: normal training windows and all test windows."""
    records = list(labelled_windows(log_path, size))
    train, test = chronological_split(records, train_fraction, normal_only_train=True)
    if not train:
        raise DataError("no normal window in the training part", log_path)
    if len({r.label for r in test}) < 2:
        raise DataError("the test part needs normal and anomalous windows", log_path)
    return train, test


def evaluate_bgl(
    trainer: Trainer,
    log_path: str | Path,
    work_dir: str | Path,
    size: int = 10,
    train_fraction: float = 0.6,
    name: str = "detector",
    report: bool = True,
) -> dict[str, Any]:
    """The label-free loghub protocol for any detector: train with ``trainer(train_records, dir)``, test.

    ``trainer`` gets the normal windows of the first ``train_fraction`` and a folder to save into,
    and returns a trained detector; its own threshold is used as is (no test labels tune it).
    """
    train, test = bgl_split(log_path, size, train_fraction)
    work = Path(work_dir)
    t0 = time.perf_counter()
    detector = trainer(train, work / "model")
    train_seconds = time.perf_counter() - t0
    if report:
        result = evaluate_detector(detector, test, work / "report", title=f"{name} on {Path(log_path).name}")
    else:
        result = evaluate_detector(detector, test)
    types = Counter(r.anomaly_type for r in test if r.label == 1)
    return {
        "model": name,
        "data": f"{Path(log_path).name} w{size} {int(train_fraction * 100)}/{100 - int(train_fraction * 100)}",
        "n_train_windows": len(train),
        "n_test_windows": len(test),
        "n_test_anomalous": sum(r.label == 1 for r in test),
        "test_alert_types": dict(types),
        "train_seconds": round(train_seconds, 2),
        **result,
    }
