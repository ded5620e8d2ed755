"""Database fixtures: every test runs on a fresh SQLite file and on a fresh PostgreSQL database.

PostgreSQL comes from ``LOGTRIAGE_TEST_PG_URL`` (default: the local server's ``test`` database,
used only to create and drop the per-test databases, named after this run so that parallel runs
never collide). Those tests are marked ``postgres``; they are skipped, with the reason, only when
the server cannot be reached.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from db.session import Database

PG_URL = os.environ.get("LOGTRIAGE_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
RUN_TAG = f"lt_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
_counter = itertools.count()


async def _admin(sql: str) -> None:
    engine = create_async_engine(make_url(PG_URL), isolation_level="AUTOCOMMIT", connect_args={"timeout": 5})
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


async def _list_run_databases() -> list[str]:
    engine = create_async_engine(make_url(PG_URL), connect_args={"timeout": 5})
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT datname FROM pg_database WHERE datname LIKE :p"), {"p": f"{RUN_TAG}%"}
            )
            return [r[0] for r in rows]
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[URL]:
    """The admin URL of a reachable PostgreSQL; at the end, drops any database this run left behind."""
    try:
        asyncio.run(_admin("SELECT 1"))
    except Exception as exc:
        pytest.skip(f"PostgreSQL unreachable at {make_url(PG_URL).render_as_string()}: {type(exc).__name__}: {exc}")
    yield make_url(PG_URL)
    for name in asyncio.run(_list_run_databases()):
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def pg_url(pg_server: URL) -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"{RUN_TAG}_{next(_counter)}"
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        yield pg_server.set(database=name).render_as_string(hide_password=False)
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file in a temporary folder, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'logtriage.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    """A migrated database."""
    database = Database(db_url)
    await database.upgrade()
    try:
        yield database
    finally:
        await database.dispose()
