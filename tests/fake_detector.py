"""An in-memory detector that implements :class:`small_model.detector.Detector`: tests give it a scoring rule."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.normalize import Normalizer
from small_model.detector import DetectorKind


class FakeDetector:
    """Scores each sequence with :meth:`rule` (0 by default); embeds a sequence as its length and score."""

    kind: DetectorKind = "moe-bert"
    threshold = 0.5
    version = "fake"

    def __init__(self) -> None:
        self.normalizer = Normalizer()

    def rule(self, sequences: Sequence[Sequence[str]]) -> list[float]:
        """The score of each sequence; subclasses say how."""
        return [0.0] * len(sequences)

    def score(self, sequences: Sequence[Sequence[str]]) -> np.ndarray:
        """:meth:`rule` as an array."""
        return np.asarray(self.rule(sequences), dtype=np.float64)

    def embed(self, sequences: Sequence[Sequence[str]]) -> np.ndarray:
        """(N, 2): the length and the score of each sequence."""
        return np.stack([np.array([len(s) for s in sequences], dtype=np.float64), self.score(sequences)], axis=1)

    def line_contributions_many(self, sequences: Sequence[Sequence[str]]) -> list[list[float]]:
        """Every line contributes its sequence's score."""
        return [[float(v)] * len(s) for v, s in zip(self.score(sequences), sequences, strict=True)]
