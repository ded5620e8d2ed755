"""What to cluster: the input mode's records and the normal reference, as lists of log lines."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from core.errors import ModelError
from core.schema import SequenceRecord
from small_model.clusters.config import Mode
from small_model.detector import Detector

logger = logging.getLogger(__name__)


def as_lines(items: Sequence[Any]) -> list[list[str]]:
    """The log lines of each item: a record, a record dict or a list of lines."""
    out: list[list[str]] = []
    for item in items:
        if isinstance(item, SequenceRecord):
            out.append(list(item.log_entries))
        elif isinstance(item, Mapping):
            out.append([str(x) for x in item.get("log_entries", [])])
        else:
            out.append([str(x) for x in item])
    return out


def select_inputs(
    records: Sequence[SequenceRecord], mode: Mode, detector: Detector | None = None
) -> tuple[list[SequenceRecord], list[SequenceRecord]]:
    """(records to cluster, records usable as the normal reference) for an input mode.

    ``all``: everything is clustered; ``anomalies-only``: records labeled 0 are left out, the rest
    (label 1 or unlabeled) are clustered; ``flagged-only``: the records the detector flags are
    clustered. The reference is the records labeled 0, else those the detector does not flag.
    """
    normal = [r for r in records if r.label == 0]
    if mode == "anomalies-only":
        return [r for r in records if r.label != 0], normal
    if mode == "all" and (normal or detector is None):
        return list(records), normal
    if detector is None:
        raise ModelError("--flagged-only needs a detector to flag anomalies")
    scores = np.asarray(detector.score(as_lines(records)))
    flagged = scores >= float(detector.threshold)
    logger.info(
        "the detector flags %d of %d sequences (threshold %.3f)", int(flagged.sum()), len(records), detector.threshold
    )
    quiet = [r for r, f in zip(records, flagged, strict=True) if not f]
    if mode == "all":
        return list(records), quiet
    return [r for r, f in zip(records, flagged, strict=True) if f], normal or quiet
