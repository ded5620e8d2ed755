"""Initial schema: detections, explanations, explanation_jobs.

Revision ID: 0001_initial
Revises:
Create Date: 2025-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the column types of db.base: a migration never imports the live models.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)
ACTIVE = sa.text("status IN ('queued', 'running')")


def upgrade() -> None:
    """Create the three tables and their indexes; long because a migration creates the schema in one place."""
    op.create_table(
        "detections",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("sequence_id", sa.String(), nullable=False),
        sa.Column("log_entries", JSON, nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("is_anomaly", sa.Boolean(), nullable=False),
        sa.Column("risk_level", sa.String(16), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("model_version", sa.String(), nullable=False),
        sa.Column("window_info", JSON, nullable=True),
        sa.Column("top_lines", JSON, nullable=True),
        sa.Column("cluster_id", sa.Integer(), nullable=True),
        sa.Column("cluster_description", sa.Text(), nullable=True),
        sa.Column("request_id", sa.String(), nullable=True),
        sa.Column("source", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_detections"),
    )
    op.create_index("ix_detections_created_at", "detections", ["created_at"])
    op.create_index("ix_detections_is_anomaly_created_at", "detections", ["is_anomaly", "created_at"])
    op.create_index("ix_detections_sequence_id", "detections", ["sequence_id"])
    op.create_index("ix_detections_request_id", "detections", ["request_id"])

    op.create_table(
        "explanations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("detection_id", sa.String(36), nullable=False),
        sa.Column("category", sa.String(100), nullable=False),
        sa.Column("severity", sa.String(32), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("root_cause", sa.Text(), nullable=False),
        sa.Column("suggested_response", sa.Text(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("base", sa.String(), nullable=False),
        sa.Column("lang", sa.String(16), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_explanations"),
        sa.ForeignKeyConstraint(
            ["detection_id"], ["detections.id"], name="fk_explanations_detection_id_detections", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("detection_id", name="uq_explanations_detection_id"),
    )
    op.create_index("ix_explanations_category", "explanations", ["category"])

    op.create_table(
        "explanation_jobs",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("detection_id", sa.String(36), nullable=False),
        sa.Column("lang", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), server_default="queued", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_attempts", sa.Integer(), server_default="3", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("locked_by", sa.String(), nullable=True),
        sa.Column("locked_at", TIMESTAMP, nullable=True),
        sa.Column("available_at", TIMESTAMP, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_explanation_jobs"),
        sa.ForeignKeyConstraint(
            ["detection_id"],
            ["detections.id"],
            name="fk_explanation_jobs_detection_id_detections",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'done', 'failed')", name=op.f("ck_explanation_jobs_status")
        ),
        sa.CheckConstraint("attempts >= 0 AND max_attempts >= 1", name=op.f("ck_explanation_jobs_attempts")),
    )
    op.create_index(
        "ix_explanation_jobs_status_available_at", "explanation_jobs", ["status", "available_at", "created_at"]
    )
    op.create_index("ix_explanation_jobs_status_locked_at", "explanation_jobs", ["status", "locked_at"])
    op.create_index("ix_explanation_jobs_detection_id", "explanation_jobs", ["detection_id"])
    op.create_index(
        "uq_explanation_jobs_active_detection",
        "explanation_jobs",
        ["detection_id"],
        unique=True,
        postgresql_where=ACTIVE,
        sqlite_where=ACTIVE,
    )


def downgrade() -> None:
    op.drop_table("explanation_jobs")
    op.drop_table("explanations")
    op.drop_table("detections")
