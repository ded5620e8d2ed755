"""Why label-free detectors rank BGL_2k's test windows below chance: how new the test windows are.

    .venv/bin/python bench/bgl_novelty.py [--log ../shared/datasets/loghub/BGL/BGL_2k.log]

The protocol of ``bench/eval_real.py``/``bench/eval_detector.py``: 10-line windows, the first 60% in
time order train (normal windows only), the last 40% test. For the normal and the anomalous test
windows: the share holding a normalized line never seen in the training windows, the mean share of
such lines, and the ROC-AUC of two novelty scores (any unseen line; the share of unseen lines),
the signal every label-free model here (MoE-BERT, DeepLog, the counting rule) reads first. Also the
alert categories of the anomalous test windows.
Figures only.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.normalize import Normalizer
from small_model.evaluate import bgl_split

DEFAULT_LOG = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "loghub" / "BGL" / "BGL_2k.log"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--log", type=Path, default=DEFAULT_LOG)
    args = p.parse_args()
    train, test = bgl_split(args.log, size=10, train_fraction=0.6)
    norm = Normalizer()
    seen = {norm.normalize(line) for r in train for line in r.log_entries}
    y = np.array([int(r.label or 0) for r in test])
    unseen = np.array([np.mean([norm.normalize(line) not in seen for line in r.log_entries]) for r in test])
    print(f"BGL_2k 10-line windows: {len(train)} normal training windows ({len(seen)} distinct normalized lines); "
          f"test {len(y)} windows, {int(y.sum())} anomalous")  # fmt: skip
    for name, sel in (("normal", y == 0), ("anomalous", y == 1)):
        print(f"  {name:9s} test windows with an unseen line: {np.mean(unseen[sel] > 0):.3f}; "
              f"mean share of unseen lines {np.mean(unseen[sel]):.3f}")  # fmt: skip
    print(
        f"  ROC-AUC of 'any unseen line': {roc_auc_score(y, unseen > 0):.3f}; "
        f"of the share of unseen lines: {roc_auc_score(y, unseen):.3f}"
    )
    alerts = Counter(a for r in test if r.label for a in (r.anomaly_type or "?").split(","))
    print(f"  alert categories of the anomalous test windows: {dict(alerts.most_common(8))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
