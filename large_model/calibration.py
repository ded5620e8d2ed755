"""What a trained explainer calibrates on held-out records of known categories: the weight of its category
classifier in the fused category choice, then the ``other`` threshold on the fused confidence.

The two use disjoint records (a seeded shuffle of the held-out records of known categories: the first
``fusion_examples`` choose the weight, the next ``calibrate_examples`` set the threshold and give the
accuracies reported), so the accuracies come from records that chose nothing.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import DataError
from core.labels import OTHER
from large_model.answer import choose_category, choose_fusion_weight
from large_model.encoding import Example
from large_model.inference import Explainer
from large_model.train_args import TrainLargeArgs

log = logging.getLogger(__name__)

Scores = tuple[list[float], list[float] | None]  # the LLM's label scores, the classifier's log-probabilities


def _score(explainer: Explainer, rows: Sequence[Example]) -> tuple[list[Example], list[Scores]]:
    """The category scores of each record the inference prompt can hold (the others skipped, with a warning)."""
    kept, out = [], []
    for e in rows:
        try:
            out.append(explainer.score_categories(e.log_entries or [], e.lang))
        except DataError as exc:  # a record the inference prompt cannot hold
            log.warning("calibration: %s skipped (%s)", e.sequence_id, exc)
            continue
        kept.append(e)
    return kept, out


def _accuracy(rows: Sequence[Example], choices: Sequence[str]) -> float:
    return sum(c == e.category for c, e in zip(choices, rows, strict=True)) / len(rows)


def split_known(
    known: Sequence[Example], fusion_examples: int, calibrate_examples: int, seed: int
) -> tuple[list[Example], list[Example]]:
    """The held-out records of known categories that choose the fusion weight, and the disjoint ones that
    calibrate the threshold and give the accuracies: a seeded shuffle's first ``fusion_examples`` (at most
    half of them), then the next ``calibrate_examples``."""
    order = random.Random(seed).sample(list(known), len(known))
    n_fusion = max(0, min(fusion_examples, len(order) // 2))
    return order[:n_fusion], order[n_fusion : n_fusion + max(0, calibrate_examples)]


def calibrate_threshold(
    output: Path, held: Sequence[Example], args: TrainLargeArgs, device: str
) -> dict[str, Any] | None:
    """The fusion weight and the category threshold of the saved explainer (scored as inference loads it, in the
    run's compute dtype).

    With a category classifier in ``output``: up to ``fusion_examples`` held-out records of a known
    category choose its weight (:func:`answer.choose_fusion_weight`: the best accuracy, the smallest
    weight of equal bests). Then up to ``calibrate_examples`` other ones give the threshold, the
    ``other_quantile`` quantile of their fused confidence, and what inference does on them: the accuracy
    of the LLM alone, the classifier alone and the two fused (``known_accuracy``), known records kept
    confident, held-out real records answered ``other``. None without held-out records.
    """
    known = [e for e in held if e.category != OTHER and e.log_entries is not None]
    real = [e for e in held if e.category == OTHER and e.log_entries is not None]
    if args.calibrate_examples <= 0 or not known:
        return None
    explainer = Explainer.from_pretrained(output, device=device, dtype=args.dtype)  # as the run computed
    explainer.category_threshold = None
    cats = explainer.labels.categories
    n_fusion = args.fusion_examples if explainer.classifier is not None else 0
    picking, known = split_known(known, n_fusion, args.calibrate_examples, args.seed)
    fusion: dict[str, Any] = {}
    weight = 0.0
    if picking:
        picking, picking_scores = _score(explainer, picking)
        if picking:
            weight, by_weight = choose_fusion_weight(
                cats, [e.category for e in picking], [s for s, _ in picking_scores],
                [c or [] for _, c in picking_scores],
            )  # fmt: skip
            fusion = {"fusion_weight": weight, "fusion_examples": len(picking), "fusion_accuracy_by_weight": by_weight}
            log.info("fusion weight %g chosen on %d held-out records: accuracy by weight %s", weight, len(picking),
                     by_weight)  # fmt: skip
    explainer.fusion_weight = weight

    known, known_scores = _score(explainer, known)
    real, real_scores = _score(explainer, real)
    if not known:
        return None
    fused = [choose_category(cats, s, None, c, weight) for s, c in known_scores]
    confidences = sorted(conf for _, conf in fused)
    threshold = confidences[min(len(confidences) - 1, int(args.other_quantile * len(confidences)))]
    result: dict[str, Any] = {
        "category_threshold": threshold,
        "examples": len(known),
        "quantile": args.other_quantile,
        # what inference chooses (fused where the explainer has a classifier), before the threshold
        "known_accuracy": _accuracy(known, [c for c, _ in fused]),
        # what inference answers: the category where confident, else other
        "known_accuracy_thresholded": sum(
            c == e.category and conf >= threshold for (c, conf), e in zip(fused, known, strict=True)
        )
        / len(known),
        "known_confident": sum(conf >= threshold for _, conf in fused) / len(known),
        "llm_accuracy": _accuracy(known, [choose_category(cats, s)[0] for s, _ in known_scores]),
        "classifier_accuracy": (
            _accuracy(known, [choose_category(cats, s, None, c, 1.0)[0] for s, c in known_scores])
            if explainer.classifier is not None
            else None
        ),
        **fusion,
        "real_examples": len(real),
        "real_other": (
            sum(
                c == OTHER or conf < threshold
                for c, conf in (choose_category(cats, s, None, c, weight) for s, c in real_scores)
            )
            / len(real)
            if real
            else None
        ),
    }
    log.info("category threshold %.4f calibrated on %d held-out records: %s", threshold, len(known), result)
    return result
