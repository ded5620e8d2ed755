"""Migrations: apply on an empty database, idempotent, reversible, and in step with the models."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, make_url, text

from db import migrate
from db.base import Base
from db.engine import make_engine, normalize_url
from db.session import Database

REPO = Path(__file__).resolve().parents[2]
TABLES = {
    "detections",
    "explanations",
    "explanation_jobs",
    "live_sessions",
    "session_lines",
    "alert_deliveries",
    "alembic_version",
}


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def _diff(conn: Connection) -> list[object]:
    ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": False})
    return list(compare_metadata(ctx, Base.metadata))


async def test_upgrade_empty_database_is_idempotent_and_matches_models(db_url: str) -> None:
    assert await migrate.current_revision(db_url) is None
    await migrate.upgrade(db_url)
    await migrate.upgrade(db_url)  # a second start finds head and does nothing
    assert await migrate.current_revision(db_url) == migrate.head_revision() == "0004_live_sessions_alerts"
    engine = make_engine(db_url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) == TABLES
            assert (await conn.execute(text("SELECT count(*) FROM alembic_version"))).scalar_one() == 1
            # the hand-written revision creates exactly what the models declare
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()


async def test_downgrade_to_base_then_upgrade_again(db_url: str) -> None:
    await migrate.upgrade(db_url)
    await migrate.downgrade(db_url, "base")
    engine = make_engine(db_url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) <= {"alembic_version"}
    finally:
        await engine.dispose()
    assert await migrate.current_revision(db_url) is None
    await migrate.upgrade(db_url)
    assert await migrate.current_revision(db_url) == migrate.head_revision()


async def test_an_explanation_stored_before_confidence_keeps_its_data(db_url: str) -> None:
    """A database at 0001 with an explanation: 0002 adds the confidence column (NULL for old rows), its
    downgrade drops it again, the row intact both ways."""
    await migrate.upgrade(db_url, "0001_initial")
    engine = make_engine(db_url)
    insert = (
        "INSERT INTO detections (id, sequence_id, log_entries, score, is_anomaly, risk_level, threshold, "
        "model_version, created_at) VALUES ('d1', 's1', '[\"a\"]', 0.9, true, 'high', 0.5, 'm', '2026-01-01'); "
    )
    explanation = (
        "INSERT INTO explanations (detection_id, category, severity, summary, root_cause, suggested_response, "
        "model, base, lang, created_at) VALUES ('d1', 'timeout', 'high', 's', 'r', 'x', 'm', 'b', 'en', '2026-01-01')"
    )
    try:
        async with engine.begin() as conn:
            await conn.execute(text(insert.strip().rstrip(";")))
            await conn.execute(text(explanation))
        await migrate.upgrade(db_url)
        async with engine.connect() as conn:
            row = (await conn.execute(text("SELECT category, confidence FROM explanations"))).one()
            assert tuple(row) == ("timeout", None)
        await migrate.downgrade(db_url, "0001_initial")
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT category FROM explanations"))).scalar_one() == "timeout"
    finally:
        await engine.dispose()


async def test_service_column_keeps_detections_and_their_explanations(db_url: str) -> None:
    """0003 adds detections.service (NULL for old rows) and its downgrade drops it, without copying the
    table: on SQLite a copy would cascade-delete the explanations."""
    await migrate.upgrade(db_url, "0002_explanation_confidence")
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO detections (id, sequence_id, log_entries, score, is_anomaly, risk_level, threshold, "
                    "model_version, created_at) VALUES ('d1', 's1', '[\"a\"]', 0.9, true, 'high', 0.5, 'm', "
                    "'2026-01-01')"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO explanations (detection_id, category, severity, summary, root_cause, "
                    "suggested_response, model, base, lang, created_at) VALUES ('d1', 'timeout', 'high', 's', 'r', "
                    "'x', 'm', 'b', 'en', '2026-01-01')"
                )
            )
        await migrate.upgrade(db_url)
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT service FROM detections"))).one() == (None,)
            assert (await conn.execute(text("SELECT category FROM explanations"))).scalar_one() == "timeout"
        await migrate.downgrade(db_url, "0002_explanation_confidence")
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM detections"))).scalar_one() == 1
            assert (await conn.execute(text("SELECT category FROM explanations"))).scalar_one() == "timeout"
    finally:
        await engine.dispose()


async def test_command_line_upgrade_and_current(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    # called from a running event loop: the command runs its own loop in a helper thread
    assert migrate.main(["--url", db_url, "upgrade"]) == 0
    assert migrate.main(["--url", db_url, "current"]) == 0
    assert "0004_live_sessions_alerts (head: 0004_live_sessions_alerts)" in capsys.readouterr().out
    assert migrate.main(["--url", "mysql://nowhere/x", "upgrade"]) == 1
    assert "unsupported database" in capsys.readouterr().err


def test_upgrade_to_head_from_sync_code_and_alembic_cli(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'cli.db'}"  # plain sqlite:// URL, missing folder
    migrate.upgrade_to_head(url)
    assert asyncio.run(migrate.current_revision(url)) == migrate.head_revision()
    other = tmp_path / "alembic.db"
    env = {**os.environ, "LOGTRIAGE_DATABASE_URL": f"sqlite+aiosqlite:///{other}"}
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(REPO / "db" / "alembic.ini"), "upgrade", "head"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert asyncio.run(migrate.current_revision(f"sqlite:///{other}")) == migrate.head_revision()


@pytest.mark.postgres
async def test_replicas_starting_together_migrate_once(pg_url: str) -> None:
    # three replicas run their start-up migration at the same moment: the advisory lock serializes them
    await asyncio.gather(*(migrate.upgrade(pg_url) for _ in range(3)))
    assert await migrate.current_revision(pg_url) == migrate.head_revision()


async def test_sqlite_connections_use_wal_and_foreign_keys(tmp_path: Path) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'w.db'}")
    try:
        async with database.engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar_one() == "wal"
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar_one() == 1
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar_one() > 0
    finally:
        await database.dispose()


def test_normalize_url() -> None:
    assert normalize_url("sqlite:///x.db").drivername == "sqlite+aiosqlite"
    assert normalize_url("postgresql://u@h/d").drivername == "postgresql+asyncpg"
    assert normalize_url("postgresql+asyncpg://u@h/d") == make_url("postgresql+asyncpg://u@h/d")
    with pytest.raises(ValueError, match="unsupported database"):
        normalize_url("mysql://u@h/d")


async def test_ping(db: Database) -> None:
    assert await db.ping() is True
    unreachable = Database("postgresql+asyncpg://postgres@127.0.0.1:1/nothing")
    try:
        assert await unreachable.ping(timeout=5) is False
    finally:
        await unreachable.dispose()
