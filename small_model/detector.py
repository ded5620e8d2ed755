"""The one interface every detector implements: MoE-BERT (:mod:`small_model.scoring`) and the DeepLog
baseline (:mod:`small_model.deeplog`). :func:`small_model.registry.load_detector` returns a
:class:`Detector`; the service and the clustering of anomalies ask for it, evaluation for its
:class:`Scorer` part only. Code that needs more of one model asks :attr:`Detector.kind`, never the class."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np

from core.normalize import Normalizer

DetectorKind = Literal["moe-bert", "deeplog"]
DETECTOR_KINDS: tuple[DetectorKind, ...] = ("deeplog", "moe-bert")


class Scorer(Protocol):
    """The part of a detector that flags: a score per sequence and the threshold it is compared with
    (all evaluation needs; a hand-written rule in a benchmark is one too)."""

    @property
    def threshold(self) -> float:
        """Scores at or above this are anomalies."""
        ...

    def score(self, sequences: Sequence[Sequence[str]]) -> np.ndarray:
        """Anomaly score of each sequence (N,)."""
        ...


class Detector(Scorer, Protocol):
    """A trained anomaly detector, loaded from its artifact folder."""

    @property
    def kind(self) -> DetectorKind:
        """Which model it is: ``moe-bert`` or ``deeplog`` (what its embedding and features mean)."""
        ...

    @property
    def version(self) -> str:
        """The version id stamped when the artifact was saved."""
        ...

    @property
    def normalizer(self) -> Normalizer:
        """The masking rules its lines go through."""
        ...

    def embed(self, sequences: Sequence[Sequence[str]]) -> np.ndarray:
        """A fixed-width embedding of each sequence (N, H)."""
        ...

    def line_contributions_many(self, sequences: Sequence[Sequence[str]]) -> list[list[float]]:
        """Per sequence, how much each of its lines adds to its score."""
        ...
