"""Engines: SQLite (aiosqlite, WAL) by default, PostgreSQL (asyncpg) by URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 10.0


def normalize_url(url: str | URL) -> URL:
    """The async-driver form of a database URL (``sqlite://`` -> aiosqlite, ``postgresql://`` -> asyncpg)."""
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite" and u.get_driver_name() != "aiosqlite":
        u = u.set(drivername="sqlite+aiosqlite")
    elif backend == "postgresql" and u.get_driver_name() != "asyncpg":
        u = u.set(drivername="postgresql+asyncpg")
    elif backend not in ("sqlite", "postgresql"):
        raise ValueError(f"unsupported database {backend!r}: use sqlite+aiosqlite:// or postgresql+asyncpg://")
    return u


def _is_memory_sqlite(u: URL) -> bool:
    return u.get_backend_name() == "sqlite" and u.database in (None, "", ":memory:")


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets readers run while one writer writes; NORMAL is durable at each checkpoint in WAL.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def make_engine(url: str | URL | None = None, *, echo: bool = False, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url`` (default: the settings' ``database_url``).

    SQLite: WAL, foreign keys on and a 30 s busy timeout on every connection; the folder of the
    file is created. PostgreSQL: asyncpg with a connect timeout and pre-ping. ``kwargs`` go to
    :func:`create_async_engine`.
    """
    if url is None:
        from core.settings import get_settings

        url = get_settings().database_url
    u = normalize_url(url)
    if u.get_backend_name() == "sqlite":
        if _is_memory_sqlite(u):
            # one shared connection, otherwise every connection would see its own empty database
            kwargs.setdefault("poolclass", StaticPool)
        elif u.database:
            Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        engine = create_async_engine(u, echo=echo, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault(
        "connect_args", {"timeout": PG_CONNECT_TIMEOUT_S, "server_settings": {"application_name": "logtriage"}}
    )
    return create_async_engine(u, echo=echo, **kwargs)
