"""Real logs, side by side: MoE-BERT, the DeepLog baseline and a counting rule, label-free.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/eval_real.py --out runs/eval-real

(all three models on all three data sets; MoE-BERT's default training takes ~20 minutes per data set
on the 2-core CPU, DeepLog and the rule ~1.5 minutes together: ``--models deeplog,rule``).

Options: ``--datasets hdfs_sessions,hdfs100k,bgl`` and ``--models moebert,deeplog,rule`` choose what
runs (default: all); ``--moe-arg key=value`` (repeatable) overrides a MoE-BERT ``TrainArgs`` field for
smoke runs only: such a row is named "MoE-BERT (smoke: ...)" so it is never read as the real figure.

Every model trains on the normal sessions of the training part only, with its default
hyper-parameters; nothing is set per data set. Where a data set has a validation part its labels
calibrate the threshold (and MoE-BERT's score fusion), as ``train-small --val`` does; every test
part is used only for the figures.

- ``hdfs_sessions``: whole HDFS_v1 block sessions, ``../shared/datasets/hdfs_sessions``:
  train on ``train_normal.jsonl.gz`` (2,900), calibrate on ``val.jsonl.gz`` (600, 400 anomalous),
  test on ``test.jsonl.gz`` (2,784, 2,000 anomalous).
- ``hdfs100k``: loghub ``HDFS_100k`` chronological (its README's protocol): the lines of each block
  id in log order, blocks ordered by first line, blocks whose first line lies in the last 5% of the
  lines dropped; the first 60% of the remaining blocks train (normal ones only), the next 10%
  calibrate, the last 30% test (2,370 sessions, 120 anomalous; checked).
- ``bgl``: loghub ``BGL_2k`` in 10-line windows, the first 60% (normal windows) train, the last 40%
  test, no validation part: each model keeps its label-free threshold (the split of
  :func:`small_model.evaluate.bgl_split`, as ``bench/eval_detector.py --parts bgl`` runs it).

Models: MoE-BERT (``TrainArgs(..., unsupervised=True)`` + ``train_detector``); DeepLog
(:func:`small_model.deeplog_train.train_evaluate_deeplog`: ``top_g`` and threshold calibrated on the
validation labels, the classic rule without them); the rule :class:`UnseenRule`.

Figures: F1, precision and recall at the model's own threshold, ROC-AUC and PR-AUC of its score
on the test part; ``train_s`` is the wall time from the training file to a calibrated detector
(``time.perf_counter``); ``seq_per_s`` is the test part scored in one ``detector.score`` call.
A Markdown table is printed; ``summary.json`` (and a report folder per run) is written under ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import DataError, LogTriageError
from core.io import read_records, write_json, write_records
from core.loghub import hdfs_sessions, iter_loghub, read_hdfs_labels
from core.normalize import Normalizer
from core.schema import SequenceRecord
from small_model.deeplog_train import train_evaluate_deeplog
from small_model.evaluate import bgl_split, compare_table, evaluate_detector
from small_model.metrics import best_f1_threshold

REPO = Path(__file__).resolve().parents[1]
DATASETS_DIR = REPO.parent / "shared" / "datasets"
DEFAULT_HDFS_SESSIONS = Path(os.environ.get("LOGTRIAGE_HDFS_SESSIONS", DATASETS_DIR / "hdfs_sessions"))
DEFAULT_LOGHUB = Path(os.environ.get("LOGTRIAGE_LOGHUB", DATASETS_DIR / "loghub"))
COLUMNS = ["model", "data", "f1", "precision", "recall", "roc_auc", "pr_auc", "train_s", "seq_per_s"]
DATASETS = ("hdfs_sessions", "hdfs100k", "bgl")
MODELS = ("moebert", "deeplog", "rule")
HDFS100K_TEST = (2370, 120)  # sessions, anomalous: the README's protocol


# ----------------------------------------------------------------------------- data sets


@dataclass
class Split:
    """One data set as record files: normal training sessions, an optional calibration part, a test part."""

    name: str
    train: Path
    val: Path | None
    test: Path
    note: str


def _counts(path: Path) -> tuple[int, int]:
    records = read_records(path)
    return len(records), sum(r.label == 1 for r in records)


def _check(split: Split, expected: dict[str, tuple[int, int]]) -> Split:
    """Stop when a part does not hold the sessions its protocol promises."""
    for part, want in expected.items():
        path = getattr(split, part)
        got = _counts(path)
        if got != want:
            raise DataError(f"{split.name} {part}: {got[0]} sessions, {got[1]} anomalous; expected {want}", path)
    return split


def hdfs_sessions_data(folder: Path, source: Path = DEFAULT_HDFS_SESSIONS) -> Split:
    """The whole-session HDFS development set as it ships (gzipped JSONL records)."""
    split = Split(
        "hdfs_sessions",
        source / "train_normal.jsonl.gz",
        source / "val.jsonl.gz",
        source / "test.jsonl.gz",
        "HDFS whole sessions: train 2900 normal, val 600 (400 anomalous), test 2784 (2000 anomalous)",
    )
    return _check(split, {"train": (2900, 0), "val": (600, 400), "test": (2784, 2000)})


def _first_line(record: SequenceRecord) -> int:
    return int(record.extra["line_numbers"][0])


def hdfs100k_data(folder: Path, loghub: Path = DEFAULT_LOGHUB) -> Split:
    """loghub HDFS_100k block sessions split in time order (60/10/30 of the blocks; see the module doc)."""
    log, labels = loghub / "HDFS_100k" / "HDFS_100k.log", loghub / "HDFS_100k" / "anomaly_label.csv"
    sessions = sorted(hdfs_sessions(log, read_hdfs_labels(labels)), key=_first_line)
    if any(r.label is None for r in sessions):
        raise DataError("a block has no label", labels)
    n_lines = sum(1 for _ in iter_loghub(log, "HDFS"))
    kept = [r for r in sessions if _first_line(r) <= 0.95 * n_lines]  # the sample's end cuts later blocks
    a, b = int(0.6 * len(kept)), int(0.7 * len(kept))
    folder.mkdir(parents=True, exist_ok=True)
    split = Split(
        "hdfs100k",
        folder / "train_normal.jsonl.gz",
        folder / "val.jsonl.gz",
        folder / "test.jsonl.gz",
        f"HDFS_100k chronological: {len(kept)} blocks (of {len(sessions)}), 60/10/30, train normal only",
    )
    write_records(split.train, [r for r in kept[:a] if r.label == 0])
    write_records(folder / "val.jsonl.gz", kept[a:b])
    write_records(split.test, kept[b:])
    return _check(split, {"test": HDFS100K_TEST})


def bgl_data(folder: Path, loghub: Path = DEFAULT_LOGHUB) -> Split:
    """loghub BGL_2k in 10-line windows, 60/40 in time order, normal training windows, no validation part."""
    train, test = bgl_split(loghub / "BGL" / "BGL_2k.log", size=10, train_fraction=0.6)
    folder.mkdir(parents=True, exist_ok=True)
    split = Split(
        "bgl", folder / "train_normal.jsonl.gz", None, folder / "test.jsonl.gz", "BGL_2k w10 60/40, no calibration"
    )
    write_records(split.train, train)
    write_records(split.test, test)
    return split


DATA_FUNCTIONS: dict[str, Callable[[Path], Split]] = {
    "hdfs_sessions": hdfs_sessions_data,
    "hdfs100k": hdfs100k_data,
    "bgl": bgl_data,
}


# ----------------------------------------------------------------------------- the counting rule


class UnseenRule:
    """Score: how many normalized lines and line bigrams of a session never occur in the normal training sessions.

    The session's start and end count as lines in the bigrams, so a session that stops early shows
    an unseen (line, end) pair. Threshold: the best F1 on validation labels, else 0.5 (any unseen).
    """

    START, END = "\x00<start>", "\x00<end>"

    def __init__(self) -> None:
        self.normalizer = Normalizer()
        self.lines: set[str] = set()
        self.bigrams: set[tuple[str, str]] = set()
        self.threshold = 0.5

    def _parts(self, session: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
        lines = [self.normalizer(line) for line in session]
        bounded = [self.START, *lines, self.END]
        return lines, list(itertools.pairwise(bounded))

    def fit(self, sessions: Sequence[Sequence[str]]) -> UnseenRule:
        """Remember every normalized line and bigram of the normal sessions."""
        for session in sessions:
            lines, bigrams = self._parts(session)
            self.lines.update(lines)
            self.bigrams.update(bigrams)
        return self

    def score(self, sessions: Sequence[Sequence[str]]) -> np.ndarray:
        """The count of unseen lines plus unseen bigrams, per session."""
        out = np.zeros(len(sessions), dtype=np.float64)
        for i, session in enumerate(sessions):
            lines, bigrams = self._parts(session)
            out[i] = sum(line not in self.lines for line in lines) + sum(b not in self.bigrams for b in bigrams)
        return out

    def calibrate(self, sessions: Sequence[Sequence[str]], labels: Sequence[int]) -> None:
        """The threshold with the best F1 on labelled sessions."""
        self.threshold, _ = best_f1_threshold(labels, self.score(sessions))


# ----------------------------------------------------------------------------- models


def _labelled(path: Path) -> tuple[list[list[str]], list[int]]:
    records = [r for r in read_records(path) if r.label is not None]
    return [list(r.log_entries) for r in records], [int(r.label or 0) for r in records]


def _row(name: str, split: Split, report: dict[str, Any], seconds: float) -> dict[str, Any]:
    m = report["metrics"]
    return {
        "model": name,
        "data": split.name,
        **{k: m[k] for k in ("f1", "precision", "recall", "roc_auc", "pr_auc")},
        "train_s": round(seconds, 1),
        "seq_per_s": report.get("sequences_per_second"),
        "threshold": m["threshold"],
        "best_f1": m["best_f1"],
        "n_test": m["n"],
        "n_test_anomalous": m["n_anomalous"],
        "confusion_matrix": m["confusion_matrix"],
        "calibrated_on": "val" if split.val else "none (label-free threshold)",
    }


def run_rule(split: Split, test: list[SequenceRecord], folder: Path) -> dict[str, Any]:
    """Fit the counting rule on the normal training sessions, threshold on val, evaluate on test."""
    t0 = time.perf_counter()
    rule = UnseenRule().fit([list(r.log_entries) for r in read_records(split.train) if r.label != 1])
    if split.val is not None:
        rule.calibrate(*_labelled(split.val))
    seconds = time.perf_counter() - t0
    report = evaluate_detector(rule, test, folder / "report", title=f"rule on {split.name}")
    row = _row("rule (unseen lines+bigrams)", split, report, seconds)
    row["known"] = {"lines": len(rule.lines), "bigrams": len(rule.bigrams)}
    return row


def run_deeplog(split: Split, test: list[SequenceRecord], folder: Path) -> dict[str, Any]:
    """DeepLog with its defaults on the normal training sessions (calibrated on val where there is one)."""
    report, seconds = train_evaluate_deeplog(split.train, split.val, test, folder, f"DeepLog on {split.name}")
    row = _row("DeepLog", split, report, seconds)
    row["top_g"] = report.get("top_g")
    return row


def run_moebert(split: Split, test: list[SequenceRecord], folder: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """MoE-BERT label-free with the default ``TrainArgs`` (``overrides`` only for smoke runs)."""
    import torch

    from small_model.moe_train import TrainArgs, train_detector
    from small_model.scoring import MoEBertDetector

    kw: dict[str, Any] = {"progress": False, **overrides}
    try:
        args = TrainArgs(
            train_file=split.train, val_file=split.val, output_dir=folder / "model", unsupervised=True, **kw
        )
    except TypeError as exc:
        raise LogTriageError(f"--moe-arg: {exc}") from None
    t0 = time.perf_counter()
    artifact = train_detector(args)
    seconds = time.perf_counter() - t0
    detector = MoEBertDetector.from_pretrained(artifact)
    report = evaluate_detector(detector, test, folder / "report", title=f"MoE-BERT on {split.name}")
    smoke = {k: v for k, v in overrides.items() if k != "progress"}
    name = "MoE-BERT" + (f" (smoke: {', '.join(f'{k}={v}' for k, v in smoke.items())})" if smoke else "")
    row = _row(name, split, report, seconds)
    row["train_phases_s"] = getattr(detector, "metrics", {}).get("seconds", {})
    row["threads"] = torch.get_num_threads()
    row["overrides"] = smoke
    return row


# ----------------------------------------------------------------------------- command


def _choice(value: str, known: Sequence[str], what: str, parser: argparse.ArgumentParser) -> list[str]:
    chosen = [x.strip() for x in value.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in known]
    if unknown:
        parser.error(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return chosen


def _override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        value = json.loads(raw)  # 2, 0.5, true, null; anything else stays a string
    except json.JSONDecodeError:
        value = raw
    return key.strip().replace("-", "_"), value


def main(argv: list[str] | None = None) -> int:
    """Build the selected data sets, run the selected models on each, print the table, write summary.json."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated among {', '.join(DATASETS)}")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated among {', '.join(MODELS)}")
    p.add_argument("--out", type=Path, default=Path("runs/eval-real"))
    p.add_argument("--moe-arg", type=_override, action="append", default=[], metavar="KEY=VALUE",
                   help="override a MoE-BERT TrainArgs field (smoke runs only; the row says so)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = p.parse_args(argv)
    datasets = _choice(args.datasets, DATASETS, "data set", p)
    models = _choice(args.models, MODELS, "model", p)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if torch.get_num_threads() > 1 and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        print("warning: OMP_WAIT_POLICY is not PASSIVE: timings suffer", file=sys.stderr)
    overrides = dict(args.moe_arg)
    out: Path = args.out
    rows: list[dict[str, Any]] = []
    splits: dict[str, dict[str, Any]] = {}
    try:
        for name in datasets:
            split = DATA_FUNCTIONS[name](out / name / "data")
            splits[name] = {"train": str(split.train), "val": str(split.val) if split.val else None,
                            "test": str(split.test), "note": split.note}  # fmt: skip
            test = read_records(split.test)
            print(f"== {name}: {split.note}", flush=True)
            for model in models:
                folder = out / name / model
                if model == "rule":
                    row = run_rule(split, test, folder)
                elif model == "deeplog":
                    row = run_deeplog(split, test, folder)
                else:
                    row = run_moebert(split, test, folder, overrides)
                rows.append(row)
                print(f"[{row['model']} / {name}] F1 {row['f1']:.4f} ROC-AUC {row['roc_auc']:.4f} "
                      f"train {row['train_s']} s, {row['seq_per_s']} seq/s", flush=True)  # fmt: skip
    except LogTriageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    shown = [{**r, "train_s": f"{r['train_s']:.1f}", "seq_per_s": f"{r['seq_per_s']:.0f}"} for r in rows]
    table = compare_table(shown, COLUMNS)
    print()
    print(table)
    write_json(out / "summary.json", {"rows": rows, "datasets": splits, "models": models,
                                      "moe_overrides": overrides, "threads": torch.get_num_threads(),
                                      "table": table})  # fmt: skip
    print(f"\nsummary: {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
