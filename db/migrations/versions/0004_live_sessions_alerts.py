"""Live sessions (open sessions and their lines) and alert deliveries.

Revision ID: 0004_live_sessions_alerts
Revises: 0003_detection_service
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_live_sessions_alerts"
down_revision: str | None = "0003_detection_service"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
OPEN = sa.text("status = 'open'")


def upgrade() -> None:
    op.create_table(
        "live_sessions",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("key", sa.String(512), nullable=False),
        sa.Column("status", sa.String(16), server_default="open", nullable=False),
        sa.Column("close_reason", sa.String(16), nullable=True),
        sa.Column("source", sa.String(32), nullable=True),
        sa.Column("service", sa.String(256), nullable=True),
        sa.Column("line_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("last_seen_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_live_sessions"),
        sa.CheckConstraint("status IN ('open', 'closing')", name=op.f("ck_live_sessions_status")),
    )
    op.create_index(
        "uq_live_sessions_open_key", "live_sessions", ["key"], unique=True, postgresql_where=OPEN, sqlite_where=OPEN
    )
    op.create_index("ix_live_sessions_status_last_seen_at", "live_sessions", ["status", "last_seen_at"])

    op.create_table(
        "session_lines",
        sa.Column("session_id", sa.String(36), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("session_id", "seq", name="pk_session_lines"),
        sa.ForeignKeyConstraint(
            ["session_id"], ["live_sessions.id"], name="fk_session_lines_session_id_live_sessions", ondelete="CASCADE"
        ),
    )

    op.create_table(
        "alert_deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("detection_id", sa.String(36), nullable=False),
        sa.Column("sink", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("available_at", TIMESTAMP, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("sent_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_alert_deliveries"),
        sa.ForeignKeyConstraint(
            ["detection_id"], ["detections.id"], name="fk_alert_deliveries_detection_id_detections", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("detection_id", "sink", name="uq_alert_deliveries_detection_id_sink"),
        sa.CheckConstraint("status IN ('pending', 'sent', 'failed')", name=op.f("ck_alert_deliveries_status")),
    )
    op.create_index("ix_alert_deliveries_status_available_at", "alert_deliveries", ["status", "available_at"])


def downgrade() -> None:
    op.drop_table("alert_deliveries")
    op.drop_table("session_lines")
    op.drop_table("live_sessions")
