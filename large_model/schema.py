"""The validated explanation of one anomalous sequence, and the label sets the explainer knows."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from core.errors import DataError
from core.labels import ANOMALY_TYPES, SEVERITIES

TEXT_FIELDS = ("summary", "root_cause", "suggested_response")


class Explanation(BaseModel):
    """What the explainer says of one sequence (DESIGN.md): labels chosen by scoring, texts generated."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, protected_namespaces=())

    category: str = Field(min_length=1, max_length=64)
    severity: str = Field(min_length=1, max_length=32)
    summary: str = Field(min_length=1, max_length=2000)
    root_cause: str = Field(min_length=1, max_length=4000)
    suggested_response: str = Field(min_length=1, max_length=4000)
    confidence: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="the chosen category's share of the label scores (softmax over the categories); None where "
        "the backend gives no scores",
    )
    model: str = Field(min_length=1, description="the explainer artifact (folder or served model name)")
    base: str = Field(min_length=1, description="the base LLM the explainer was tuned from")


@dataclass(frozen=True)
class LabelSet:
    """The categories and severities an explainer chooses among."""

    categories: tuple[str, ...] = ANOMALY_TYPES
    severities: tuple[str, ...] = SEVERITIES
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name, values in (("categories", self.categories), ("severities", self.severities)):
            if not values or len(set(values)) != len(values) or not all(isinstance(v, str) and v for v in values):
                raise DataError(f"label set {name} must be distinct non-empty strings, got {list(values)!r}")

    @classmethod
    def from_json(cls, path: str | Path) -> LabelSet:
        """Read ``{"categories": [...], "severities": [...]}`` (data_gen's labels.json form)."""
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError("no such file", p) from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"not a JSON label file ({exc})", p) from None
        if not isinstance(data, dict):
            raise DataError("expected an object with categories and severities", p)
        cats = data.get("categories", ANOMALY_TYPES)
        sevs = data.get("severities", SEVERITIES)
        # labels.json may map each label to a description: the keys are the labels
        cats = list(cats) if not isinstance(cats, dict) else list(cats.keys())
        sevs = list(sevs) if not isinstance(sevs, dict) else list(sevs.keys())
        return cls(tuple(cats), tuple(sevs))

    def to_dict(self) -> dict[str, list[str]]:
        """The JSON form saved beside an adapter."""
        return {"categories": list(self.categories), "severities": list(self.severities)}
