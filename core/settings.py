"""One Settings object for every part; environment variables use the prefix ``LOGTRIAGE_``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Runtime configuration (env ``LOGTRIAGE_*`` or a ``.env`` file)."""

    model_config = SettingsConfigDict(env_prefix="LOGTRIAGE_", env_file=".env", extra="ignore")

    # detector
    detector_path: Path = Path("artifacts/detector")
    device: str = "cpu"  # where the detector runs: cpu, cuda, cuda:N, auto (CUDA where a GPU is there)
    cluster_path: Path | None = None  # a `logtriage cluster` artifact: anomalies get a cluster id and description
    # explainer
    explainer_path: Path = Path("artifacts/explainer")
    llm_base: str = "Qwen/Qwen2.5-0.5B-Instruct"
    llm_backend: str = "inprocess"  # inprocess | openai
    openai_base_url: str | None = None
    openai_model: str | None = None
    # service
    database_url: str = "sqlite+aiosqlite:///./logtriage.db"
    api_keys: list[str] = []  # empty: no auth; else every endpoint but health and docs needs X-API-Key
    migrate_on_start: bool = True
    load_explainer: bool = True
    explain_default: str = "auto"  # auto | never | always
    explain_wait_seconds: float = 20.0
    explain_lang: str = "en"
    workers: int = 1  # in-process explanation workers (0: none; run `logtriage worker` elsewhere)
    # the job queue: a running job's lease is renewed every quarter lease; a dead worker's job is taken again after it
    job_lease_seconds: float = 60.0
    job_max_attempts: int = 3  # tries of a job that fails by itself (bad input); LLM outages and shutdowns don't count
    job_backoff_seconds: float = 5.0  # the first retry's delay; doubles with each try (LLM outage: with each probe)
    job_backoff_max_seconds: float = 600.0  # the longest delay between two tries
    job_retry_window_seconds: float = 86400.0  # an unreachable LLM's jobs wait this long (from queueing), then fail
    shutdown_grace_seconds: float = 10.0  # on SIGTERM a running job may finish this long, then goes back to the queue
    ready_requires_llm: bool = True  # /ready answers 503 while this process's LLM backend is down (circuit open)
    db_retry_after_seconds: int = 5  # Retry-After of the 503 answered while the database is unreachable
    # micro-batching of concurrent /detect requests
    batching: bool = True
    batch_window_ms: float = 5.0
    max_batch_size: int = 64
    # request limits
    max_sequences_per_request: int = 256
    max_lines_per_sequence: int = 1000
    max_line_bytes_request: int = 16 * 1024
    # the work one request may ask for, checked before any of it is done (windows counted with their
    # overlaps); sized so that 64 clients at the limit keep a 2-core machine answering (README: Limits)
    max_lines_per_request: int = 20_000
    max_bytes_per_request: int = 1024 * 1024
    max_body_bytes: int = 8 * 1024 * 1024  # also the limit of a gzip body once decompressed (OTLP)
    # live sessions (OTLP records, `logtriage tail`): how records are grouped into sequences and when they close
    session_key: Literal["trace_id", "regex", "service_window"] = "trace_id"  # records without one: service_window
    session_key_regex: str | None = None  # session_key=regex: its first group (else the whole match) is the key
    session_window_seconds: float = 60.0  # service_window: one session per service per window of this length
    session_idle_seconds: float = 30.0  # a session closes when no record joined it for this long
    session_max_lines: int = 1000  # ... or when it reaches this many lines
    session_end_pattern: str | None = None  # ... or on a line matching this regex (the line is the session's last)
    session_max_open: int = 10_000  # over this many open sessions the least recently active are closed first
    session_regex_timeout_ms: float = 50.0  # a regex match taking longer counts as no match (and in metrics)
    session_sweep_seconds: float = 1.0  # how often idle sessions are looked for
    ingest_max_backlog: int = 2_000  # closed sessions waiting to be scored beyond this: OTLP answers 429
    ingest_retry_after_seconds: int = 5  # the Retry-After of 429 and 503 answers
    otlp_line_template: str = "{time} {severity} [{service}] {body}"  # how a log record becomes a line
    # alerts: flagged detections at or above alert_min_risk go to Alertmanager and/or a JSON webhook
    alertmanager_url: str | None = None  # e.g. http://alertmanager:9093 (POST /api/v2/alerts)
    alert_webhook_url: str | None = None  # a generic JSON webhook (Slack-compatible "text")
    alert_min_risk: Literal["medium", "high"] = "high"
    alert_max_attempts: int = 12  # with backoff from alert_backoff_seconds doubling to 5 minutes: about 40 minutes
    alert_backoff_seconds: float = 2.0
    alert_timeout_seconds: float = 10.0
    alert_wait_explanation_seconds: float = 60.0  # hold an alert this long for its explanation (summary, response)
    alert_duration_seconds: float = 3600.0  # endsAt = startsAt + this (Alertmanager resolves the alert then)
    public_url: str = "http://localhost:8000"  # the links to detections in alerts

    @field_validator("otlp_line_template")
    @classmethod
    def _template_fields(cls, value: str) -> str:
        import string

        names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        unknown = names - {"time", "severity", "service", "body"}
        if unknown or "body" not in names:
            raise ValueError(
                f"otlp_line_template {value!r} must contain {{body}} and only {{time}}, {{severity}}, {{service}}"
            )
        return value


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


def settings_with(**overrides: Any) -> Settings:
    """Settings read from the environment with the overrides that are not ``None`` on top (a command's options).

    A new object: the cached :func:`get_settings` is never changed.
    """
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
