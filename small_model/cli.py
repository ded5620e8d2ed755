"""``logtriage train-small`` and ``logtriage evaluate-small``: the detector and its DeepLog baseline
through the same commands (``--model moe-bert|deeplog``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from core.cli_args import DEVICE_HELP
from small_model.config import TRAIN_OPTIONS, TRAIN_PROFILES

MODELS = ("moe-bert", "deeplog")
DEEPLOG_OPTIONS = {"window": int, "top_g": int, "hidden_size": int, "embedding_dim": int}


def _train(args: argparse.Namespace) -> int:
    from core.errors import DataError

    if not Path(args.train).exists():
        raise DataError("no such file", args.train)
    if args.model == "deeplog":
        from small_model.deeplog import train_deeplog

        config: dict[str, Any] = {k: getattr(args, k) for k in DEEPLOG_OPTIONS if getattr(args, k) is not None}
        if args.epochs is not None:
            config["epochs"] = int(args.epochs)
        if args.seed is not None:
            config["seed"] = args.seed
        out = train_deeplog(
            args.train,
            args.val,
            args.out or "artifacts/deeplog",
            args.unsupervised,
            test_path=args.test,
            progress=not args.no_progress,
            threads=args.threads,
            **config,
        )
    else:
        from small_model.moe_train import TrainArgs, train_detector

        options = {k: getattr(args, k) for k in (*TRAIN_OPTIONS, "epochs") if getattr(args, k, None) is not None}
        train_args = TrainArgs.for_profile(options.pop("profile", "full"), train_file=Path(args.train), val_file=Path(args.val) if args.val else None,
                               test_file=Path(args.test) if args.test else None,
                               output_dir=Path(args.out or "artifacts/detector"), unsupervised=args.unsupervised,
                               progress=not args.no_progress, **options)  # fmt: skip
        out = train_detector(train_args)
    metrics_file = Path(out) / "metrics.json"
    if metrics_file.exists():
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        for split in ("val", "test"):
            m = metrics.get(split)
            if isinstance(m, dict) and "f1" in m:
                print(
                    f"{split}: F1 {m['f1']:.4f}  ROC-AUC {m.get('roc_auc') or float('nan'):.4f}  "
                    f"precision {m['precision']:.4f}  recall {m['recall']:.4f}",
                    file=sys.stderr,
                )
    print(out)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from core.io import read_records, write_json
    from small_model.evaluate import compare_table, evaluate_detector
    from small_model.registry import detector_kind, load_detector

    records = read_records(args.data)
    out_root = Path(args.out)
    rows = []
    reports = {}
    for path in args.model_path:
        detector = load_detector(path, device=args.device)
        name = f"{detector_kind(path)} ({Path(path).name})"
        folder = out_root / Path(path).name if len(args.model_path) > 1 else out_root
        report = evaluate_detector(detector, records, folder, top_n=args.top, title=f"{name} on {Path(args.data).name}",
                                   embed=not args.no_tsne)  # fmt: skip
        reports[str(path)] = report
        m = report["metrics"]
        rows.append({"model": name, "f1": m["f1"], "precision": m["precision"], "recall": m["recall"],
                     "roc_auc": m["roc_auc"], "pr_auc": m["pr_auc"], "best_f1": m["best_f1"],
                     "accuracy": m["accuracy"], "seq/s": report.get("sequences_per_second")})  # fmt: skip
        print(f"{name}: report, plots and top-{args.top} sequences in {folder}", file=sys.stderr)
    table = compare_table(rows)
    if len(args.model_path) > 1:
        write_json(out_root / "comparison.json", {"data": str(args.data), "rows": rows})
    print(table)
    return 0


def add_commands(sub: Any) -> None:
    """Register ``train-small`` and ``evaluate-small``."""
    t = sub.add_parser(
        "train-small",
        help="train the detector (MoE-BERT, or the DeepLog baseline)",
        description="Supervised when the training file has labels; --unsupervised trains on the normal or unlabeled "
        "sequences only (label-free scores fused and calibrated). Writes one artifact folder with its metrics.",
    )
    t.add_argument("--model", choices=MODELS, default="moe-bert")
    t.add_argument("--train", required=True, help="sequence records (JSON/JSONL/CSV)")
    t.add_argument("--val", help="validation records: calibrate the fusion weights and the threshold")
    t.add_argument("--test", help="test records: metrics recorded in metrics.json")
    t.add_argument("--out", help="artifact folder (default artifacts/detector, or artifacts/deeplog)")
    t.add_argument("--unsupervised", action="store_true", help="label-free: ignore labels, train on normal sequences")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument(
        "--epochs", type=float, help="training epochs (MoE-BERT: the head phase; default 1 supervised, 0.5 label-free)"
    )
    moe = t.add_argument_group("MoE-BERT options (defaults from small_model.moe_train.TrainArgs)")
    for name, (kind, text) in TRAIN_OPTIONS.items():
        if name in DEEPLOG_OPTIONS:
            continue
        group = t if name in ("seed", "threads", "profile") else moe
        choices = tuple(TRAIN_PROFILES) if name == "profile" else None
        group.add_argument("--" + name.replace("_", "-"), type=kind, choices=choices, help=text)
    dl = t.add_argument_group("DeepLog options")
    for name, kind in DEEPLOG_OPTIONS.items():
        dl.add_argument("--" + name.replace("_", "-"), type=kind)
    t.set_defaults(handler=_train)

    e = sub.add_parser(
        "evaluate-small",
        help="evaluate detectors: metrics, plots, t-SNE, top sequences",
        description="Accuracy, precision, recall, F1, ROC-AUC, PR-AUC, best-F1 threshold and confusion matrix into "
        "report.json; PNG plots (score histograms, ROC, PR, t-SNE by label and by anomaly type); the top-N "
        "highest-scoring sequences as text. Several models: a comparison table.",
    )
    e.add_argument("model_path", nargs="+", help="detector artifact folder(s); the first is the main model")
    e.add_argument("--data", required=True, help="labeled sequence records")
    e.add_argument("--out", default="runs/evaluate", help="report folder (one sub-folder per model when several)")
    e.add_argument("--device", default="cpu", help=DEVICE_HELP)
    e.add_argument("--top", type=int, default=20)
    e.add_argument("--no-tsne", action="store_true", help="skip embeddings and t-SNE (faster)")
    e.set_defaults(handler=_evaluate)
