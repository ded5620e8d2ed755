"""The sequence record shared by the generators, the trainers and the API (DESIGN.md)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class SequenceRecord(BaseModel):
    """One log sequence: its lines, and its label when known (``None`` means unlabeled)."""

    model_config = ConfigDict(extra="allow")

    sequence_id: str
    label: int | None = None
    length: int = 0
    log_entries: list[str] = Field(min_length=1)
    anomaly_type: str | None = None

    @field_validator("label")
    @classmethod
    def _label_is_binary(cls, value: int | None) -> int | None:
        if value is not None and value not in (0, 1):
            raise ValueError(f"label must be 0, 1 or null, got {value!r}")
        return value

    @model_validator(mode="after")
    def _length_matches(self) -> SequenceRecord:
        if self.length in (0, None):
            self.length = len(self.log_entries)
        elif self.length != len(self.log_entries):
            raise ValueError(f"length is {self.length} but log_entries has {len(self.log_entries)} lines")
        return self

    @property
    def extra(self) -> dict[str, Any]:
        """Fields beyond the contract (severity, root-cause service, ...)."""
        return dict(self.model_extra or {})

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain JSON-ready dict, extra fields included."""
        return self.model_dump(mode="json")
