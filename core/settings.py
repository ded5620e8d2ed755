"""One Settings object for every part; environment variables use the prefix ``LOGTRIAGE_``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Runtime configuration (env ``LOGTRIAGE_*`` or a ``.env`` file)."""

    model_config = SettingsConfigDict(env_prefix="LOGTRIAGE_", env_file=".env", extra="ignore")

    data_dir: Path = Path("data")
    artifacts_dir: Path = Path("artifacts")
    # detector
    detector_path: Path = Path("artifacts/detector")
    device: str = "cpu"  # where the detector runs: cpu, cuda, cuda:N, auto (CUDA where a GPU is there)
    encoder: str = "bundled:all-MiniLM-L6-v2"
    max_line_bytes: int = 10 * 1024 * 1024
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
    max_body_bytes: int = 8 * 1024 * 1024
    seed: int = 42


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
