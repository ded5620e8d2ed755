"""The ``logtriage cluster`` and ``logtriage analyze-clusters`` commands (registered by :mod:`logtriage.cli`)."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core.errors import DataError, ModelError
from core.io import read_records
from core.schema import SequenceRecord
from small_model.clusters.analysis import MAX_TSNE, analyze, format_analysis, plot_clusters, projection_2d
from small_model.clusters.config import BirchConfig, ClassifierConfig, ClusterConfig, Mode
from small_model.clusters.features import load_feature_model
from small_model.clusters.matching import cluster_metrics, format_metrics
from small_model.clusters.model import ClusterModel
from small_model.detector import DETECTOR_KINDS

logger = logging.getLogger(__name__)


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
    detector_path = Path(args.detector) if args.detector else _default_detector(args.feature_model or "deeplog")
    if not detector_path.is_dir():
        _train_feature_model(args, detector_path, records, normal, budget)
    detector = load_feature_model(detector_path, args.feature_model)
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
    _print_summary(model, out, args.json)
    return 0


def _train_feature_model(
    args: argparse.Namespace,
    detector_path: Path,
    records: Sequence[SequenceRecord],
    normal: Sequence[SequenceRecord] | None,
    budget: Mapping[str, int],
) -> None:
    """``--train-detector``: fit a DeepLog feature model on the normal sequences and save it at ``detector_path``."""
    if not args.train_detector:
        raise ModelError(f"no detector at {detector_path}: train one (logtriage train-small) or pass --train-detector")
    if args.feature_model not in (None, "deeplog"):
        raise ModelError("--train-detector trains a DeepLog detector only; train MoE-BERT with train-small")
    from small_model.deeplog import DeepLogConfig, DeepLogDetector

    train = normal or [r for r in records if r.label == 0] or [r for r in records if r.label is None]
    if not train:
        raise DataError("--train-detector needs normal sequences: pass --normal or label some records 0")
    logger.info("training a DeepLog detector on %d normal sequences -> %s", len(train), detector_path)
    deeplog = DeepLogConfig(epochs=budget["detector_epochs"]) if "detector_epochs" in budget else DeepLogConfig()
    DeepLogDetector(deeplog).fit(train, progress=False).save_pretrained(detector_path)


def _print_summary(model: ClusterModel, out: Path, as_json: bool) -> None:
    """What ``cluster`` made: the clusters, and how they match the known labels where there are any."""
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
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['n_sequences']} sequences -> {model.n_clusters} clusters, saved to {out}")
        for c in model.clusters:
            purity = f"  purity {c.purity:.2f} ({c.majority})" if c.purity is not None else ""
            print(f"  [{c.cluster_id}] {c.size:5d}  {c.description[:110]}{purity}")
        if "metrics" in summary:
            print()
            print(format_metrics(summary["metrics"], "clusters vs known labels"))


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
    return {"cluster": _add_cluster_parser(subparsers), "analyze-clusters": _add_analyze_parser(subparsers)}


def _add_cluster_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "cluster",
        help="group anomalies into categories: deep features, Birch, a dual-input classifier",
        description="Deep-feature clustering of log sequences; saves a cluster model artifact folder.",
    )
    p.add_argument("--data", nargs="+", required=True, help="sequence file(s) (JSON, JSONL, CSV)")
    p.add_argument(
        "--detector", help="detector artifact folder (stage 1); default artifacts/deeplog or artifacts/detector"
    )
    p.add_argument("--feature-model", choices=DETECTOR_KINDS, help="check the detector is of this kind")
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
    return p


def _add_analyze_parser(subparsers: Any) -> argparse.ArgumentParser:
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
    return a
