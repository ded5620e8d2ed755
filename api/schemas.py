"""Request and response bodies of the HTTP API (with the examples the docs UI shows)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ExplainMode = Literal["auto", "never", "always"]
RiskLevel = Literal["low", "medium", "high"]
EXAMPLE_LINES: list[Any] = [
    "2024-05-01 10:00:00.101 INFO [gateway] POST /api/orders req=7f3a user=alice from 10.0.3.14",
    "2024-05-01 10:00:00.130 INFO [auth] token verified for user=alice latency=12ms",
    "2024-05-01 10:00:00.180 INFO [orders] creating order for user=alice items=3",
    "2024-05-01 10:00:00.210 INFO [orders] calling payments at 10.0.5.21:8443",
    "2024-05-01 10:00:30.214 ERROR [orders] call to payments timed out after 30000ms",
    "2024-05-01 10:00:30.220 WARN [gateway] 504 returned for req=7f3a",
]


class SequenceIn(BaseModel):
    """One log sequence to score."""

    sequence_id: str | None = Field(default=None, max_length=200, description="your id; generated when absent")
    log_entries: list[str] = Field(min_length=1, description="the log lines of the sequence, in order")
    service: str | None = Field(
        default=None, max_length=200, description="the service the lines came from (the request's when absent)"
    )


class WindowSpec(BaseModel):
    """How raw lines are cut into sequences."""

    type: Literal["fixed", "sliding", "session"] = "fixed"
    size: int = Field(default=10, ge=1, le=10_000)
    step: int | None = Field(default=None, ge=1)
    session_key: str | None = Field(
        default=None,
        max_length=500,
        description="session: a regex, its first group is the key (default: the LOGTRIAGE_SESSION_* rules)",
    )
    end_pattern: str | None = Field(
        default=None, max_length=500, description="session: a regex; the line matching it closes its session"
    )


class DetectRequest(BaseModel):
    """Sequences, or raw lines with a window spec; exactly one of the two."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"sequences": [{"sequence_id": "req-7f3a", "log_entries": EXAMPLE_LINES}], "explain": "auto"},
                {"lines": EXAMPLE_LINES * 3, "window": {"type": "sliding", "size": 6, "step": 3}, "explain": "never"},
            ]
        }
    )

    sequences: list[SequenceIn] | None = None
    lines: list[str] | None = None
    window: WindowSpec = WindowSpec()
    explain: ExplainMode | None = Field(default=None, description="auto: queue the flagged ones (default)")
    lang: Literal["en", "zh"] | None = None
    service: str | None = Field(default=None, max_length=200, description="the service the lines came from")

    @model_validator(mode="after")
    def _one_input(self) -> DetectRequest:
        if (self.sequences is None) == (self.lines is None):
            raise ValueError("give either 'sequences' or 'lines' (with 'window'), not both and not neither")
        if self.lines is not None and not self.lines:
            raise ValueError("'lines' is empty")
        if self.sequences is not None and not self.sequences:
            raise ValueError("'sequences' is empty")
        return self


class LineContribution(BaseModel):
    """How much one line raised the score."""

    index: int
    line: str
    contribution: float


class DetectionOut(BaseModel):
    """The detector's verdict on one sequence."""

    id: str
    sequence_id: str
    score: float
    is_anomaly: bool
    risk_level: RiskLevel
    threshold: float
    model_version: str
    queued_for_explanation: bool = False
    top_lines: list[LineContribution] | None = None
    cluster_id: int | None = None
    cluster_description: str | None = None
    service: str | None = None
    category: str | None = Field(default=None, description="the explanation's category, once explained")
    created_at: datetime | None = None


class DetectResponse(BaseModel):
    """All verdicts of one request, and which were queued for explanation."""

    detections: list[DetectionOut]
    queued: list[str] = Field(description="ids of the detections queued for explanation")


class ExplainRequest(BaseModel):
    """A stored detection by id, or a sequence to detect and explain."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"sequence": {"log_entries": EXAMPLE_LINES}, "lang": "en"},
                {"detection_id": "5f0c...", "wait_seconds": 5},
            ]
        }
    )

    detection_id: str | None = None
    sequence: SequenceIn | None = None
    lang: Literal["en", "zh"] | None = None
    wait_seconds: float | None = Field(default=None, ge=0, le=300)

    @model_validator(mode="after")
    def _one_input(self) -> ExplainRequest:
        if (self.detection_id is None) == (self.sequence is None):
            raise ValueError("give either 'detection_id' or 'sequence'")
        return self


class ExplanationOut(BaseModel):
    """What the explainer said about a detection."""

    category: str
    severity: str
    summary: str
    root_cause: str
    suggested_response: str
    model: str
    base: str
    lang: str = "en"
    latency_ms: float | None = None
    confidence: float | None = Field(
        default=None,
        description="the category's confidence (0-1); category 'other' when below the calibrated threshold",
    )


class ExplainResponse(BaseModel):
    """The explanation, or where to poll for it."""

    detection_id: str
    status: Literal["done", "queued", "running", "failed"]
    explanation: ExplanationOut | None = None
    error: str | None = None
    poll_url: str | None = None


class DetectionDetail(DetectionOut):
    """A stored detection with its lines and its explanation (if any)."""

    log_entries: list[str]
    explanation: ExplanationOut | None = None
    job_status: str | None = None


class DetectionPage(BaseModel):
    """One page of stored detections."""

    items: list[DetectionOut]
    total: int
    limit: int
    offset: int


class TimelineBucket(BaseModel):
    """Anomalies in one time bucket, by explanation category."""

    start: datetime
    total: int
    counts: dict[str, int] = Field(description="category -> anomalies; 'unexplained' for those without one")


class Timeline(BaseModel):
    """Anomalous detections over time by category: every bucket of the range, empty ones included."""

    since: datetime
    until: datetime
    bucket_seconds: int
    categories: list[str] = Field(description="the categories present, most anomalies first")
    buckets: list[TimelineBucket]


class Facets(BaseModel):
    """The values the history filters can take: stored explanation categories and services."""

    categories: list[str]
    services: list[str]


class Health(BaseModel):
    """Liveness."""

    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    """Readiness: models loaded and the database reachable."""

    ready: bool
    detector: bool
    explainer: bool
    database: bool
    detector_version: str | None = None
    explainer_model: str | None = None
    llm: Literal["ok", "down", "unknown"] | None = Field(
        None, description="the LLM backend as this process's workers last found it (None: no explainer here)"
    )
    llm_error: str | None = Field(None, description="why the LLM backend is down")
    llm_retry_in_seconds: float | None = Field(None, description="until the next try of the LLM backend")


class ErrorOut(BaseModel):
    """Every error answer: what went wrong, in one sentence."""

    detail: str
