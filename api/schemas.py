"""Request and response bodies of the HTTP API (with the examples the docs UI shows)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from core.user_regex import pattern_problem
from small_model.detection import RiskLevel

ExplainMode = Literal["auto", "never", "always"]

# What JSON and URLs can carry but neither PostgreSQL (NUL) nor UTF-8 (lone surrogates) can store.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"


# A character that str.strip() keeps (the complement of str.isspace()): a line with one is not blank.
NON_BLANK = "[^\t-\r\x1c- \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
_DATE_TIME = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d")


def clean_text(value: str) -> str:
    """``value`` with every NUL and lone surrogate replaced by U+FFFD (nothing else changes)."""
    return _UNSTORABLE.sub(REPLACEMENT, value)


def to_utc(value: datetime) -> datetime:
    """``value`` in UTC (naive: taken as UTC); past the calendar's ends once in UTC: clamped to them."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-23:59 is in the year 10000 in UTC
        return (datetime.max if value.year > 1 else datetime.min).replace(tzinfo=UTC)


def exactly_one_of(*names: str, examples: list[dict[str, Any]]) -> ConfigDict:
    """Model config whose JSON Schema says: exactly one of the fields ``names``, each never null.

    The fields are optional in Python (``None``: absent); the model refuses an explicit null and
    both-or-neither (see the validators of the models below), as the schema's ``oneOf`` does.
    """

    def schema_extra(schema: dict[str, Any]) -> None:
        for name in names:
            field = schema["properties"][name]
            given = [part for part in field.pop("anyOf", [field]) if part.get("type") != "null"]
            field.update(given[0])
            field.pop("default", None)
        schema["oneOf"] = [{"required": [name]} for name in names]
        schema["examples"] = examples

    return ConfigDict(json_schema_extra=schema_extra)


def _not_null(value: Any) -> Any:
    if value is None:
        raise ValueError("null is not allowed: leave the field out instead")
    return value


def _date_time_text(value: Any) -> Any:
    if isinstance(value, str) and not _DATE_TIME.match(value):  # not a number of seconds, as pydantic allows
        raise ValueError("expected an ISO 8601 date and time, such as 2024-05-01T10:00:00Z")
    return value


def _number_not_text(value: Any) -> Any:
    if isinstance(value, bool | str):  # JSON true or "5" is not a number (pydantic's lax mode takes both)
        raise ValueError("Input should be a number")
    return value


def _not_blank(lines: list[str]) -> list[str]:
    if not any(line.strip() for line in lines):
        raise ValueError("has only empty lines")
    return lines


# Every text of a request (body fields, path and query values) is this type: sanitised once, here.
Text = Annotated[str, AfterValidator(clean_text)]
# Every time of a request: ISO 8601, aware, in UTC, within the calendar.
UtcDatetime = Annotated[datetime, BeforeValidator(_date_time_text), AfterValidator(to_utc)]
# The numbers of a body: JSON numbers (5.0 is the integer 5, as in JSON Schema), never a string or a boolean;
# their bounds come before the validator, or they vanish from the JSON Schema.
WindowLength = Annotated[int, Field(ge=1, le=10_000), BeforeValidator(_number_not_text)]
WaitSeconds = Annotated[float, Field(ge=0, le=300), BeforeValidator(_number_not_text)]
# Log lines: at least one, and at least one that is not blank (in the schema too, as `contains`).
Lines = Annotated[
    list[Text],
    Field(min_length=1, json_schema_extra={"contains": {"type": "string", "pattern": NON_BLANK}}),
    AfterValidator(_not_blank),
]
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

    sequence_id: Text | None = Field(default=None, max_length=200, description="your id; generated when absent")
    log_entries: Lines = Field(description="the log lines of the sequence, in order; not all blank")
    service: Text | None = Field(
        default=None, max_length=200, description="the service the lines came from (the request's when absent)"
    )


class WindowSpec(BaseModel):
    """How raw lines are cut into sequences (sliding: ``step`` <= ``size``; ``session``: the live-session rules,
    with ``session_key`` and ``end_pattern`` when given)."""

    type: Literal["fixed", "sliding", "session"] = "fixed"
    size: WindowLength = 10
    step: WindowLength | None = Field(
        default=None, description="sliding windows: every `step` lines (default size // 2)"
    )
    session_key: Annotated[Text, Field(max_length=500, json_schema_extra={"format": "regex"})] | None = Field(
        default=None,
        description="session windows: a regex; its first group (else its match) is the key "
        "(default: the LOGTRIAGE_SESSION_* rules)",
    )
    end_pattern: Annotated[Text, Field(max_length=500, json_schema_extra={"format": "regex"})] | None = Field(
        default=None, description="session windows: a regex; the line matching it closes its session"
    )

    @model_validator(mode="after")
    def _regexes_compile(self) -> WindowSpec:
        for name, label in (("session_key", "session key"), ("end_pattern", "end pattern")):
            pattern = getattr(self, name)
            if pattern is None:
                continue
            problem = pattern_problem(pattern)  # the engine the pattern runs on (core.user_regex)
            if problem is not None:
                raise ValueError(f"{label} {pattern!r} is not a regular expression: {problem}")
        return self


class DetectRequest(BaseModel):
    """Sequences, or raw lines with a window spec; exactly one of the two."""

    model_config = exactly_one_of(
        "sequences",
        "lines",
        examples=[
            {"sequences": [{"sequence_id": "req-7f3a", "log_entries": EXAMPLE_LINES}], "explain": "auto"},
            {"lines": EXAMPLE_LINES * 3, "window": {"type": "sliding", "size": 6, "step": 3}, "explain": "never"},
        ],
    )

    sequences: list[SequenceIn] | None = Field(
        default=None, min_length=1, description="the sequences to score (exactly one of sequences, lines)"
    )
    lines: Lines | None = Field(
        default=None,
        description="raw lines, cut into sequences by `window`; windows of blank lines only are skipped "
        "(exactly one of sequences, lines)",
    )
    window: WindowSpec = WindowSpec()
    explain: ExplainMode | None = Field(default=None, description="auto: queue the flagged ones (default)")
    lang: Literal["en", "zh"] | None = None
    service: Text | None = Field(default=None, max_length=200, description="the service the lines came from")

    _given = field_validator("sequences", "lines", mode="before")(_not_null)

    @model_validator(mode="after")
    def _one_input(self) -> DetectRequest:
        if (self.sequences is None) == (self.lines is None):
            raise ValueError("give either 'sequences' or 'lines' (with 'window'), not both and not neither")
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

    model_config = exactly_one_of(
        "detection_id",
        "sequence",
        examples=[
            {"sequence": {"log_entries": EXAMPLE_LINES}, "lang": "en"},
            {"detection_id": "5f0c...", "wait_seconds": 5},
        ],
    )

    detection_id: Text | None = Field(
        default=None, max_length=200, description="a stored detection (exactly one of detection_id, sequence)"
    )
    sequence: SequenceIn | None = Field(
        default=None, description="a sequence to score, store and explain (exactly one of detection_id, sequence)"
    )
    lang: Literal["en", "zh"] | None = None
    wait_seconds: WaitSeconds | None = None

    _given = field_validator("detection_id", "sequence", mode="before")(_not_null)

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
    detector_profile: str | None = Field(
        None, description="the training budget of the detector: full, or quick (make demo's minutes-long run)"
    )
    explainer_profile: str | None = Field(
        None, description="the training budget of the explainer: full, or quick (make demo's minutes-long run)"
    )
    llm: Literal["ok", "down", "unknown"] | None = Field(
        None, description="the LLM backend as this process's workers last found it (None: no explainer here)"
    )
    llm_error: str | None = Field(None, description="why the LLM backend is down")
    llm_retry_in_seconds: float | None = Field(None, description="until the next try of the LLM backend")


class ErrorOut(BaseModel):
    """Every error answer: what went wrong, in one sentence."""

    detail: str
