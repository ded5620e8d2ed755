"""Training the DeepLog baseline from sequence files: ``logtriage train-small --model deeplog``, and
the helpers the benchmarks use to train and evaluate it (:func:`deeplog_trainer`, :func:`train_evaluate_deeplog`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import DataError
from core.io import read_records
from core.schema import SequenceRecord
from small_model.config import DeepLogConfig
from small_model.deeplog import DeepLogDetector
from small_model.metrics import evaluate_scores

logger = logging.getLogger(__name__)


def _labeled(records: Sequence[SequenceRecord]) -> tuple[list[list[str]], np.ndarray]:
    keep = [r for r in records if r.label is not None]
    return [list(r.log_entries) for r in keep], np.array([r.label for r in keep], dtype=np.int64)


def train_deeplog(
    train_path: str | Path,
    val_path: str | Path | None = None,
    output_dir: str | Path = "artifacts/deeplog",
    unsupervised: bool = False,
    *,
    test_path: str | Path | None = None,
    progress: bool = True,
    threads: int | None = None,
    top_g_candidates: Sequence[int] | None = tuple(range(1, 11)),
    **config: Any,
) -> Path:
    """Train DeepLog on the normal/unlabeled sequences of ``train_path``, calibrate on ``val_path``, save.

    Both modes train the same way (DeepLog is label-free); ``unsupervised`` only records the mode.
    Labels in the validation file pick ``top_g`` among ``top_g_candidates`` and the best-F1
    threshold; without them the classic rule (threshold 0.5) holds.
    """
    t0 = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    cfg = DeepLogConfig(**config)
    train = read_records(train_path)
    normal = [r for r in train if r.label != 1]
    if not normal:
        raise DataError("no normal or unlabeled sequences to train DeepLog on (all are labeled anomalous)", train_path)
    dropped = len(train) - len(normal)
    if dropped:
        logger.info("deeplog: leaving out %d sequences labeled anomalous", dropped)
    val = read_records(val_path) if val_path else None
    test = read_records(test_path) if test_path else None

    detector = DeepLogDetector(cfg).fit(normal, progress=progress)
    t_train = time.perf_counter()
    metrics: dict[str, Any] = {
        "model": "deeplog",
        "mode": "unsupervised" if unsupervised else "supervised",
        "train_file": str(train_path),
        "n_train_sequences": len(normal),
        "n_dropped_anomalous": dropped,
        "num_templates": detector.num_templates,
        "loss_history": [round(x, 5) for x in detector.history],
    }
    if val is not None:
        val_seqs, val_y = _labeled(val)
        if len(np.unique(val_y)) == 2:
            metrics["calibration"] = detector.calibrate(val_seqs, val_y, top_g_candidates)
        else:
            logger.warning("deeplog: %s has no labels of both classes; keeping the classic rule", val_path)
    t_cal = time.perf_counter()
    for name, records in (("val", val), ("test", test)):
        if records:
            seqs, y = _labeled(records)
            if len(y):
                scores = detector.score(seqs)
                metrics[name] = evaluate_scores(y, scores, detector.threshold)
    metrics["top_g"] = detector.config.top_g
    metrics["threshold"] = detector.threshold
    metrics["threshold_source"] = detector.calibration.threshold_source
    metrics["val_used_for_calibration"] = detector.calibration.threshold_source == "validation"
    metrics["threads"] = torch.get_num_threads()
    metrics["seconds"] = {
        "train": round(t_train - t0, 2),
        "calibration": round(t_cal - t_train, 2),
        "total": round(time.perf_counter() - t0, 2),
    }
    detector.metrics = metrics
    out = detector.save_pretrained(output_dir)
    logger.info("deeplog: saved %s (version %s) in %.1f s", out, detector.version, metrics["seconds"]["total"])
    return out


def deeplog_trainer(**config: Any) -> Callable[[list[SequenceRecord], Path], DeepLogDetector]:
    """A trainer for :func:`small_model.evaluate.evaluate_bgl`: fits DeepLog (classic rule, no labels), saves it."""

    def train(records: list[SequenceRecord], folder: Path) -> DeepLogDetector:
        detector = DeepLogDetector(DeepLogConfig(**config)).fit(records, progress=False)
        detector.metrics = {"protocol": "loghub label-free", "loss_history": detector.history}
        detector.save_pretrained(folder)
        return detector

    return train


def train_evaluate_deeplog(
    train: Path, val: Path | None, test: Sequence[SequenceRecord], folder: Path, title: str
) -> tuple[dict[str, Any], float]:
    """Train DeepLog on the normal sequences of ``train`` (``top_g`` and threshold calibrated on the
    labels of ``val``; no ``val``: the classic rule), save it under ``folder/model``, evaluate it on
    ``test`` with a report under ``folder/report``; returns ``(report, training seconds)``."""
    from small_model.evaluate import evaluate_detector

    t0 = time.perf_counter()
    artifact = train_deeplog(train, val, folder / "model", unsupervised=val is None, progress=False)
    seconds = time.perf_counter() - t0
    detector = DeepLogDetector.from_pretrained(artifact)
    report = evaluate_detector(detector, list(test), folder / "report", title=title)
    report["top_g"] = detector.config.top_g
    return report, seconds
