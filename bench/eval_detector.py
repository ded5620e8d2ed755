"""Figures of the detector issue: MoE-BERT beside the DeepLog baseline, supervised and label-free.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/eval_detector.py --splits data/splits --out runs/detector-eval

Synthetic (``data/splits`` from the generator defaults, hard difficulty):
- supervised: MoE-BERT with the default ``TrainArgs`` on ``train.json`` (6400 sequences), fusion and
  threshold calibrated on ``val.json``; DeepLog (it learns from normal sequences only) on ``train.json``
  with its ``top_g`` and threshold calibrated on ``val.json``.
- label-free: both trained on ``train_normal.json`` only; ``val.json`` calibrates the fusion weights and
  the threshold (the issue's "calibrated on validation data"); with ``--no-labels`` also the variant
  with no labels at all (contamination quantile).
Every model is tested on ``test.json``. The wall time of training the default detector and the
scoring throughput (sequences per second, batch scoring through ``detector.score``) are printed.

Real logs, label-free: loghub BGL_2k in 10-line windows, chronological split (first 60% for training,
normal windows only), a window anomalous when any line carries an alert; no labels tune anything.

Each run writes a report folder (JSON, plots, top-N text) under ``--out``; a Markdown table is
printed and ``summary.json`` keeps everything.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from core.io import read_records, write_records
from core.schema import SequenceRecord
from small_model.deeplog_train import deeplog_trainer, train_evaluate_deeplog
from small_model.detector import Detector
from small_model.evaluate import compare_table, evaluate_bgl, evaluate_detector
from small_model.moe_train import TrainArgs, train_detector
from small_model.scoring import MoEBertDetector

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BGL = (
    Path(os.environ.get("LOGTRIAGE_LOGHUB", REPO.parent / "shared" / "datasets" / "loghub")) / "BGL" / "BGL_2k.log"
)
COLUMNS = ["model", "data", "f1", "precision", "recall", "roc_auc", "pr_auc", "train_s", "seq_per_s"]


def _row(name: str, data: str, report: dict[str, Any], train_seconds: float) -> dict[str, Any]:
    return {
        "model": name,
        "data": data,
        **report["metrics"],
        "train_s": round(train_seconds, 1),
        "seq_per_s": report.get("sequences_per_second"),
        "per_type": {k: round(v["rate"], 3) for k, v in report.get("per_type", {}).items()},
    }


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def moe(
    train: Path, val: Path | None, test: list[SequenceRecord], out: Path, unsupervised: bool, name: str, **kw: Any
) -> dict[str, Any]:
    """Train MoE-BERT with the default arguments (``kw`` overrides) and evaluate it on ``test``."""
    args = TrainArgs(train_file=train, val_file=val, output_dir=out / "model", unsupervised=unsupervised, **kw)
    artifact, seconds = _timed(lambda: train_detector(args))
    detector = MoEBertDetector.from_pretrained(artifact)
    report = evaluate_detector(detector, test, out / "report", title=name)
    row = _row(name, "synthetic hard test", report, seconds)
    row["train_phases_s"] = detector.metrics.get("seconds", {})
    row["threads"] = torch.get_num_threads()
    return row


def deeplog(train: Path, val: Path | None, test: list[SequenceRecord], out: Path, name: str) -> dict[str, Any]:
    """Train the DeepLog baseline on the normal sequences of ``train`` and evaluate it on ``test``."""
    report, seconds = train_evaluate_deeplog(train, val, test, out, name)
    return _row(name, "synthetic hard test", report, seconds)


def moe_bgl_trainer(**kw: Any) -> Callable[[list[SequenceRecord], Path], Detector]:
    """A trainer for :func:`evaluate_bgl`: label-free MoE-BERT on the normal training windows."""

    def train(records: list[SequenceRecord], folder: Path) -> Detector:
        data = folder.parent / "train_windows.json"
        write_records(data, records)
        args = TrainArgs(train_file=data, output_dir=folder, unsupervised=True, progress=False, **kw)
        return MoEBertDetector.from_pretrained(train_detector(args))

    return train


def main(argv: list[str] | None = None) -> int:
    """Run the selected parts and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--splits", type=Path, default=Path("data/splits"))
    p.add_argument("--bgl", type=Path, default=DEFAULT_BGL)
    p.add_argument("--out", type=Path, default=Path("runs/detector-eval"))
    p.add_argument(
        "--parts",
        default="supervised,label-free,bgl",
        help="comma-separated: supervised, label-free, no-labels, bgl (default: supervised,label-free,bgl)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if torch.get_num_threads() > 1 and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        print("warning: OMP_WAIT_POLICY is not PASSIVE: timings suffer", file=sys.stderr)
    parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    unknown = parts - {"supervised", "label-free", "no-labels", "bgl"}
    if unknown:
        p.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    s, out = args.splits, args.out
    test = read_records(s / "test.json") if parts - {"bgl"} else []
    rows: list[dict[str, Any]] = []

    def add(row: dict[str, Any]) -> None:
        rows.append(row)
        print(f"[{row['model']}] F1 {row['f1']:.4f} ROC-AUC {row['roc_auc']:.4f} train {row['train_s']} s", flush=True)

    if "supervised" in parts:
        add(moe(s / "train.json", s / "val.json", test, out / "moe-supervised", False, "MoE-BERT supervised"))
        add(deeplog(s / "train.json", s / "val.json", test, out / "deeplog-supervised", "DeepLog (val-calibrated)"))
    if "label-free" in parts:
        add(moe(s / "train_normal.json", s / "val.json", test, out / "moe-label-free", True, "MoE-BERT label-free"))
        add(deeplog(s / "train_normal.json", s / "val.json", test, out / "deeplog-label-free", "DeepLog label-free"))
    if "no-labels" in parts:
        add(moe(s / "train_normal.json", None, test, out / "moe-no-labels", True, "MoE-BERT no labels at all"))
        add(deeplog(s / "train_normal.json", None, test, out / "deeplog-no-labels", "DeepLog no labels at all"))
    if "bgl" in parts:
        for name, trainer in (("MoE-BERT label-free", moe_bgl_trainer()), ("DeepLog label-free", deeplog_trainer())):
            folder = out / ("bgl-moe" if name.startswith("MoE") else "bgl-deeplog")
            r = evaluate_bgl(trainer, args.bgl, folder, name=name)
            add({"model": name, "data": r["data"], **r["metrics"], "train_s": r["train_seconds"],
                 "seq_per_s": r.get("sequences_per_second")})  # fmt: skip

    print()
    print(compare_table(rows, COLUMNS))
    print()
    for r in rows:
        extra = f", phases {r['train_phases_s']}, {r['threads']} threads" if "train_phases_s" in r else ""
        print(f"{r['model']} / {r['data']}: threshold {r['threshold']:.4f}, best-F1 {r['best_f1']:.4f}{extra}")
        if r.get("per_type"):
            print("  flagged per type:", json.dumps(r["per_type"]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=2, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
