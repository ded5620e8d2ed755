"""The ``other`` threshold of a trained explainer: calibrated on held-out records of known categories."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import DataError
from core.labels import OTHER
from large_model.encoding import Example
from large_model.inference import Explainer
from large_model.train_args import TrainLargeArgs

log = logging.getLogger(__name__)


def calibrate_threshold(
    output: Path, held: Sequence[Example], args: TrainLargeArgs, device: str
) -> dict[str, Any] | None:
    """The category threshold: the ``other_quantile`` quantile of the confidence of held-out records of a
    known category, scored by the saved explainer as inference loads it; with what it does on the held-out
    records (known ones kept confident, real ones answered ``other``). None without held-out records."""
    known = [e for e in held if e.category != OTHER and e.log_entries is not None]
    real = [e for e in held if e.category == OTHER and e.log_entries is not None]
    if args.calibrate_examples <= 0 or not known:
        return None
    rng = random.Random(args.seed)
    known = rng.sample(known, min(args.calibrate_examples, len(known)))
    explainer = Explainer.from_pretrained(output, device=device)
    explainer.category_threshold = None

    def scored(rows: Sequence[Example]) -> tuple[list[Example], list[tuple[str, float]]]:
        kept, out = [], []
        for e in rows:
            try:
                x = explainer.explain_detailed(e.log_entries or [], e.lang, generate=False).explanation
            except DataError as exc:  # a record the inference prompt cannot hold
                log.warning("calibration: %s skipped (%s)", e.sequence_id, exc)
                continue
            kept.append(e)
            out.append((x.category, float(x.confidence or 0.0)))
        return kept, out

    known, known_scores = scored(known)
    real, real_scores = scored(real)
    if not known:
        return None
    confidences = sorted(c for _, c in known_scores)
    threshold = confidences[min(len(confidences) - 1, int(args.other_quantile * len(confidences)))]
    result = {
        "category_threshold": threshold,
        "examples": len(known),
        "quantile": args.other_quantile,
        "known_accuracy": sum(c == e.category for (c, _), e in zip(known_scores, known, strict=True)) / len(known),
        # what inference answers: the category where confident, else other
        "known_accuracy_thresholded": sum(
            c == e.category and conf >= threshold for (c, conf), e in zip(known_scores, known, strict=True)
        )
        / len(known),
        "known_confident": sum(c >= threshold for _, c in known_scores) / len(known),
        "real_examples": len(real),
        "real_other": (sum(c == OTHER or conf < threshold for c, conf in real_scores) / len(real) if real else None),
    }
    log.info("category threshold %.4f calibrated on %d held-out records: %s", threshold, len(known), result)
    return result
