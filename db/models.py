"""Tables: detections, their explanations, the explanation job queue, live sessions and alert deliveries."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import CheckConstraint, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from db.base import Base, utcnow


def new_id() -> str:
    """A random UUID4 as text: not guessable, unique across replicas."""
    return str(uuid.uuid4())


class JobStatus(StrEnum):
    """Life of an explanation job: queued -> running -> done, or back to queued on retry, or failed."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


ACTIVE_STATUSES = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
_ACTIVE_WHERE = text("status IN ('queued', 'running')")
_OPEN_WHERE = text("status = 'open'")


class Detection(Base):
    """The detector's verdict on one log sequence."""

    __tablename__ = "detections"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sequence_id: Mapped[str] = mapped_column(String)
    log_entries: Mapped[list[Any]]
    score: Mapped[float] = mapped_column(Float)
    is_anomaly: Mapped[bool]
    risk_level: Mapped[str] = mapped_column(String(16))
    threshold: Mapped[float] = mapped_column(Float)
    model_version: Mapped[str] = mapped_column(String)
    window_info: Mapped[dict[str, Any] | None]  # how the sequence was cut from raw lines, if it was
    top_lines: Mapped[list[Any] | None]  # [{"index", "line", "contribution"}]
    cluster_id: Mapped[int | None] = mapped_column(Integer)
    cluster_description: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String)
    source: Mapped[str | None] = mapped_column(String)
    service: Mapped[str | None] = mapped_column(String(200))  # the service the logs came from, when named

    explanation: Mapped[Explanation | None] = relationship(
        back_populates="detection", uselist=False, cascade="all, delete-orphan", passive_deletes=True
    )
    jobs: Mapped[list[ExplanationJob]] = relationship(
        back_populates="detection", cascade="all, delete-orphan", passive_deletes=True
    )

    __table_args__ = (
        Index("ix_detections_created_at", "created_at"),
        Index("ix_detections_is_anomaly_created_at", "is_anomaly", "created_at"),
        Index("ix_detections_sequence_id", "sequence_id"),
        Index("ix_detections_request_id", "request_id"),
        Index("ix_detections_service_created_at", "service", "created_at"),
    )

    def __repr__(self) -> str:
        return f"Detection(id={self.id!r}, sequence_id={self.sequence_id!r}, score={self.score!r})"


class Explanation(Base):
    """What the explainer said about one detection (at most one per detection)."""

    __tablename__ = "explanations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    detection_id: Mapped[str] = mapped_column(String(36), ForeignKey("detections.id", ondelete="CASCADE"), unique=True)
    category: Mapped[str] = mapped_column(String(100))
    severity: Mapped[str] = mapped_column(String(32))
    summary: Mapped[str] = mapped_column(Text)
    root_cause: Mapped[str] = mapped_column(Text)
    suggested_response: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String)
    base: Mapped[str] = mapped_column(String)
    lang: Mapped[str] = mapped_column(String(16), default="en")
    latency_ms: Mapped[float | None] = mapped_column(Float)
    confidence: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    detection: Mapped[Detection] = relationship(back_populates="explanation")

    __table_args__ = (Index("ix_explanations_category", "category"),)

    def __repr__(self) -> str:
        return f"Explanation(detection_id={self.detection_id!r}, category={self.category!r})"


class ExplanationJob(Base):
    """One queued request to explain a detection; the queue lives in this table."""

    __tablename__ = "explanation_jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    detection_id: Mapped[str] = mapped_column(String(36), ForeignKey("detections.id", ondelete="CASCADE"))
    lang: Mapped[str] = mapped_column(String(16), default="en")
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value, server_default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    max_attempts: Mapped[int] = mapped_column(Integer, default=3, server_default="3")
    last_error: Mapped[str | None] = mapped_column(Text)
    locked_by: Mapped[str | None] = mapped_column(String)
    locked_at: Mapped[datetime | None]
    available_at: Mapped[datetime] = mapped_column(default=utcnow)  # not before: retry backoff
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    detection: Mapped[Detection] = relationship(back_populates="jobs")

    __table_args__ = (
        CheckConstraint("status IN ('queued', 'running', 'done', 'failed')", name="status"),
        CheckConstraint("attempts >= 0 AND max_attempts >= 1", name="attempts"),
        # dequeue: WHERE status='queued' AND available_at <= now ORDER BY available_at, created_at
        Index("ix_explanation_jobs_status_available_at", "status", "available_at", "created_at"),
        # crash recovery: WHERE status='running' AND locked_at <= now - lease
        Index("ix_explanation_jobs_status_locked_at", "status", "locked_at"),
        Index("ix_explanation_jobs_detection_id", "detection_id"),
        # at most one active (queued or running) job per detection; enqueue relies on it
        Index(
            "uq_explanation_jobs_active_detection",
            "detection_id",
            unique=True,
            postgresql_where=_ACTIVE_WHERE,
            sqlite_where=_ACTIVE_WHERE,
        ),
    )

    def __repr__(self) -> str:
        return f"ExplanationJob(id={self.id!r}, status={self.status!r}, attempts={self.attempts})"


class LiveSession(Base):
    """A session being assembled from live records (OTLP, tail): open, then closing, then scored and deleted.

    At most one open session per key; a closing one waits for the closer, which scores it, stores the
    detection and deletes the session with its lines in the same transaction.
    """

    __tablename__ = "live_sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    key: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16), default="open", server_default="open")
    close_reason: Mapped[str | None] = mapped_column(String(16))
    source: Mapped[str | None] = mapped_column(String(32))
    service: Mapped[str | None] = mapped_column(String(256))
    line_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)

    lines: Mapped[list[SessionLine]] = relationship(
        back_populates="session", cascade="all, delete-orphan", passive_deletes=True, order_by="SessionLine.seq"
    )

    __table_args__ = (
        CheckConstraint("status IN ('open', 'closing')", name="status"),
        Index("uq_live_sessions_open_key", "key", unique=True, postgresql_where=_OPEN_WHERE, sqlite_where=_OPEN_WHERE),
        Index("ix_live_sessions_status_last_seen_at", "status", "last_seen_at"),
    )


class SessionLine(Base):
    """One line of a live session, in arrival order (``seq``)."""

    __tablename__ = "session_lines"

    session_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("live_sessions.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    line: Mapped[str] = mapped_column(Text)

    session: Mapped[LiveSession] = relationship(back_populates="lines")


class AlertDelivery(Base):
    """One alert of one detection to one sink (alertmanager, webhook): pending until sent or out of attempts.

    The unique (detection_id, sink) pair is what keeps a detection from being alerted twice.
    """

    __tablename__ = "alert_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    detection_id: Mapped[str] = mapped_column(String(36), ForeignKey("detections.id", ondelete="CASCADE"))
    sink: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    available_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("detection_id", "sink", name="uq_alert_deliveries_detection_id_sink"),
        CheckConstraint("status IN ('pending', 'sent', 'failed')", name="status"),
        Index("ix_alert_deliveries_status_available_at", "status", "available_at"),
    )
