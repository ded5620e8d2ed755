"""What each part of a detector's score catches: ROC-AUC of every raw component and reconstruction part
(``lines`` masked line modeling, ``next`` forward line modeling with the end, ``recon`` the worse of the two), and the share of each
anomaly type above the part's 97th percentile of normal scores (a 3% false-positive rate).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/detector_parts.py runs/detector-eval3/moe-supervised/model \\
        --data data/splits/test.json

Figures only, no assertions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.io import read_records
from small_model.scoring import MoEBertDetector

TYPES = ("missing_step", "out_of_order", "retry_storm", "latency_spike")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="a MoE-BERT detector folder")
    p.add_argument("--data", type=Path, default=Path("data/splits/test.json"), help="labeled sequence records")
    p.add_argument("--fpr", type=float, default=0.03, help="false-positive rate of each part's threshold")
    args = p.parse_args()
    records = [r.model_dump() for r in read_records(args.data)]
    detector = MoEBertDetector.from_pretrained(args.model)
    raw = detector.raw_from_lines(detector.normalize([r["log_entries"] for r in records]), ["head", "knn", "recon"])
    y = np.array([int(r["label"] or 0) for r in records])
    types = np.array([r.get("anomaly_type") or "normal" for r in records])
    keyword = sorted({t for t in types[y == 1] if t not in TYPES})
    print(f"{args.model} on {args.data} ({len(y)} sequences, {int(y.sum())} anomalous); flagged at {args.fpr:.0%} FPR")
    print(f"{'part':<14}{'ROC-AUC':>8}" + "".join(f"{t[:12]:>14}" for t in (*TYPES, "keyword types")))
    for name in ("head", "knn", "lines", "next", "recon"):
        if name not in raw:
            continue
        v = raw[name]
        thr = np.quantile(v[y == 0], 1.0 - args.fpr)
        shares = [float(np.mean(v[types == t] > thr)) for t in TYPES]
        shares.append(float(np.mean(v[np.isin(types, keyword)] > thr)))
        print(f"{name:<14}{roc_auc_score(y, v):>8.3f}" + "".join(f"{s:>14.2f}" for s in shares))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
