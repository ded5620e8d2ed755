"""``logtriage train-small`` and ``logtriage evaluate-small``: the detector and its DeepLog baseline
through the same commands (``--model moe-bert|deeplog``)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from core.cli_args import DEVICE_HELP, add_dataclass_arguments, flag, given
from small_model.config import DEEPLOG_HELP, TRAIN_HELP, TRAIN_PROFILES, DeepLogConfig, TrainArgs

MODELS = ("moe-bert", "deeplog")


def _train(args: argparse.Namespace) -> int:
    from core.errors import DataError

    if not Path(args.train).exists():
        raise DataError("no such file", args.train)
    if args.model == "deeplog":
        from small_model.deeplog_train import train_deeplog

        options = model_options(args)
        threads = options.pop("threads", None)
        out = train_deeplog(args.train, args.val, args.out or "artifacts/deeplog", args.unsupervised,
                            test_path=args.test, progress=args.progress, threads=threads, **options)  # fmt: skip
    else:
        from small_model.moe_train import train_detector

        out = train_detector(moe_train_args(args))
    _print_metrics(Path(out))
    print(out)
    return 0


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options given for ``--model``'s model; one of the other model alone is an error."""
    from core.errors import DataError

    names = _deeplog_names() if args.model == "deeplog" else _moe_names()
    other = [flag(k) for k in given(args, set(_moe_names()) ^ set(_deeplog_names())) if k not in names]
    if other:
        raise DataError(f"{', '.join(other)}: not an option of --model {args.model}")
    options = given(args, names)
    if args.model == "deeplog" and "epochs" in options:
        options["epochs"] = int(options["epochs"])
    return options


def moe_train_args(args: argparse.Namespace) -> TrainArgs:
    """The :class:`TrainArgs` of parsed train-small flags: a flag not given takes the profile's budget, else the
    dataclass default."""
    from core.errors import DataError

    options = model_options(args)
    try:
        return TrainArgs.for_profile(options.pop("profile", "full"), train_file=Path(args.train),
                                     val_file=Path(args.val) if args.val else None,
                                     test_file=Path(args.test) if args.test else None,
                                     output_dir=Path(args.out or "artifacts/detector"),
                                     unsupervised=args.unsupervised, progress=args.progress, **options)  # fmt: skip
    except ValueError as exc:  # a value out of range (--top-p 2): the user's, one line
        raise DataError(str(exc)) from None


def _print_metrics(folder: Path) -> None:
    """The val and test figures of a fresh artifact's metrics.json, on stderr."""
    metrics_file = folder / "metrics.json"
    if not metrics_file.exists():
        return
    metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    for split in ("val", "test"):
        m = metrics.get(split)
        if isinstance(m, dict) and "f1" in m:
            print(
                f"{split}: F1 {m['f1']:.4f}  ROC-AUC {m.get('roc_auc') or float('nan'):.4f}  "
                f"precision {m['precision']:.4f}  recall {m['recall']:.4f}",
                file=sys.stderr,
            )


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


# TrainArgs' fields that train-small names after the command's words (--train, --out, ...), not after the field
RUN_FIELDS = ("train_file", "output_dir", "val_file", "test_file", "unsupervised", "progress")


def _moe_names() -> list[str]:
    """The fields of :class:`TrainArgs` that are train-small options (every one but :data:`RUN_FIELDS`)."""
    return [f.name for f in fields(TrainArgs) if f.name not in RUN_FIELDS]


def _deeplog_names() -> list[str]:
    """The fields of :class:`DeepLogConfig` that are train-small options (all but the fitted vocabulary size),
    and ``threads``."""
    return [*(f.name for f in fields(DeepLogConfig) if f.name != "vocab_size"), "threads"]


def add_train_arguments(t: argparse.ArgumentParser) -> None:
    """train-small's flags: one per field of :class:`TrainArgs` and :class:`DeepLogConfig`, defaults from them.

    A flag that both models have shows both defaults; a flag not given leaves the model's default (or its
    ``--profile``'s budget) in place.
    """
    t.add_argument("--model", choices=MODELS, default="moe-bert")
    t.add_argument("--train", required=True, help="sequence records (JSON/JSONL/CSV)")
    t.add_argument("--val", help="validation records: calibrate the fusion weights and the threshold")
    t.add_argument("--test", help="test records: metrics recorded in metrics.json")
    t.add_argument("--out", help="artifact folder (default artifacts/detector, or artifacts/deeplog)")
    t.add_argument("--unsupervised", action="store_true", help="label-free: ignore labels, train on normal sequences")
    t.add_argument("--no-progress", dest="progress", action="store_false")
    moe, deeplog = _moe_names(), _deeplog_names()
    both = [name for name in moe if name in deeplog]
    moe_defaults, deeplog_defaults = TrainArgs.__dataclass_fields__, DeepLogConfig.__dataclass_fields__
    shared = {}
    for name in both:
        defaults = [f"{model} default {fs[name].default}" for model, fs in (("MoE-BERT", moe_defaults),
                    ("DeepLog", deeplog_defaults)) if name in fs and fs[name].default is not None]  # fmt: skip
        shared[name] = TRAIN_HELP.get(name, name.replace("_", " ")) + (f" ({', '.join(defaults)})" if defaults else "")
    group = t.add_argument_group("options of both models")
    add_dataclass_arguments(group, TrainArgs, shared, skip=[f.name for f in fields(TrainArgs) if f.name not in both],
                            show_default=False)  # fmt: skip
    group = t.add_argument_group("MoE-BERT options (small_model.config.TrainArgs)")
    add_dataclass_arguments(
        group, TrainArgs, TRAIN_HELP, skip=[*RUN_FIELDS, *both], choices={"profile": TRAIN_PROFILES}
    )
    group = t.add_argument_group("DeepLog options (small_model.config.DeepLogConfig)")
    add_dataclass_arguments(group, DeepLogConfig, DEEPLOG_HELP, skip=["vocab_size", *both])


def add_commands(sub: Any) -> None:
    """Register ``train-small`` and ``evaluate-small``."""
    t = sub.add_parser(
        "train-small",
        help="train the detector (MoE-BERT, or the DeepLog baseline)",
        description="Supervised when the training file has labels; --unsupervised trains on the normal or unlabeled "
        "sequences only (label-free scores fused and calibrated). Writes one artifact folder with its metrics.",
    )
    add_train_arguments(t)
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
