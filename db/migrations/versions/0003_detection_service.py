"""The service a detection's logs came from (the dashboard filters by it).

Revision ID: 0003_detection_service
Revises: 0002_explanation_confidence
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_detection_service"
down_revision: str | None = "0002_explanation_confidence"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ALTER TABLE on SQLite too (3.35+ drops columns): a batch copy of detections would drop the
# old table, and with it, through ON DELETE CASCADE, every explanation and job.


def upgrade() -> None:
    op.add_column("detections", sa.Column("service", sa.String(200), nullable=True))
    op.create_index("ix_detections_service_created_at", "detections", ["service", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_detections_service_created_at", table_name="detections")
    op.drop_column("detections", "service")
