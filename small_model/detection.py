"""What a detector says of one sequence: its score, the decision, and the risk level (the one risk rule).

Every detector (MoE-BERT, DeepLog), the API and the CLIs grade a score the same way: ``high`` above
:data:`HIGH_RISK` when flagged, ``medium`` when flagged, else ``low``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

HIGH_RISK = 0.85
RiskLevel = Literal["low", "medium", "high"]


def flagged_risk(score: float, flagged: bool) -> RiskLevel:
    """The risk of a score whose decision is made (``flagged``): by the threshold or a rule of its own."""
    if flagged:
        return "high" if score > HIGH_RISK else "medium"
    return "low"


def risk_level(score: float, threshold: float) -> RiskLevel:
    """``high`` above 0.85 when flagged (``score >= threshold``), ``medium`` when flagged, else ``low``."""
    return flagged_risk(score, score >= threshold)


@dataclass
class Detection:
    """One scored sequence."""

    score: float
    is_anomaly: bool
    risk: RiskLevel

    @classmethod
    def of(cls, score: float, flagged: bool) -> Detection:
        """The detection of a score and its decision, graded by the risk rule."""
        return cls(float(score), bool(flagged), flagged_risk(float(score), bool(flagged)))
