"""Figures of the DeepLog baseline: loghub BGL_2k (label-free protocol) and the synthetic hard split.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/eval_deeplog.py --splits data/splits --out runs/deeplog

BGL_2k: 10-line windows, a window anomalous when any line carries an alert; the first 60% of
windows (time order) train, normal windows only; no labels tune anything (classic any-miss rule).
Synthetic: trained on ``train_normal.json``; (a) ``top_g`` and threshold calibrated on the labels
of ``val.json`` (what both training modes of ``train_deeplog`` do when validation labels exist),
(b) no labels at all: the classic rule with the default ``top_g``. Both tested on ``test.json``.
Each run writes a report folder (JSON, plots, top-N text) under ``--out``; a Markdown table and
the timings are printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.io import read_records
from small_model.deeplog import DeepLogDetector
from small_model.deeplog_train import deeplog_trainer, train_evaluate_deeplog
from small_model.evaluate import compare_table, evaluate_bgl

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BGL = (
    Path(os.environ.get("LOGTRIAGE_LOGHUB", REPO.parent / "shared" / "datasets" / "loghub")) / "BGL" / "BGL_2k.log"
)


def run_bgl(path: Path, out: Path) -> dict[str, Any]:
    """The label-free loghub protocol with DeepLog (defaults, classic rule)."""
    result = evaluate_bgl(deeplog_trainer(), path, out / "bgl", name="deeplog (label-free)")
    detector = DeepLogDetector.from_pretrained(out / "bgl" / "model")
    from small_model.evaluate import bgl_split

    _, test = bgl_split(path)
    raw = detector.raw_scores([r.log_entries for r in test])
    result["test_windows_with_unknown_template"] = float(np.mean(raw["unknown"] > 0))
    result["num_templates"] = detector.num_templates
    return result


def run_synthetic(splits: Path, out: Path, calibrated: bool) -> dict[str, Any]:
    """Train on train_normal, calibrate on val (or not), evaluate on test with a report folder."""
    name = "val-calibrated" if calibrated else "no labels (classic rule)"
    folder = out / ("synthetic-calibrated" if calibrated else "synthetic-classic")
    test = read_records(splits / "test.json")
    val = splits / "val.json" if calibrated else None
    report, seconds = train_evaluate_deeplog(splits / "train_normal.json", val, test, folder, f"deeplog {name}")
    return {
        "model": f"deeplog ({name})",
        "data": f"synthetic {test[0].extra.get('difficulty', '?')} test",
        "train_seconds": round(seconds, 1),
        **report,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bgl", type=Path, default=DEFAULT_BGL)
    p.add_argument("--splits", type=Path, default=Path("data/splits"))
    p.add_argument("--out", type=Path, default=Path("runs/deeplog"))
    p.add_argument("--skip-bgl", action="store_true")
    p.add_argument("--skip-synthetic", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        print("warning: OMP_WAIT_POLICY is not PASSIVE", file=sys.stderr)
    rows = []
    if not args.skip_bgl:
        rows.append(run_bgl(args.bgl, args.out))
    if not args.skip_synthetic:
        rows.append(run_synthetic(args.splits, args.out, calibrated=True))
        rows.append(run_synthetic(args.splits, args.out, calibrated=False))
    table = [{"model": r["model"], "data": r["data"], **r["metrics"]} for r in rows]
    print(compare_table(table))
    print()
    for r in rows:
        extra = {k: r[k] for k in ("top_g", "num_templates", "test_windows_with_unknown_template") if k in r}
        print(
            f"{r['model']} on {r['data']}: threshold {r['metrics']['threshold']:.4f}, best-F1 (oracle) "
            f"{r['metrics']['best_f1']:.3f}, train {r['train_seconds']} s, scoring {r['sequences_per_second']} seq/s, {extra}"
        )
        if "per_type" in r and "bgl" not in r["model"]:
            print("  flagged per type:", json.dumps({k: round(v["rate"], 2) for k, v in r["per_type"].items()}))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
