"""Dialect helpers shared by crud and queue (upserts, the dialect of a session)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession


def dialect_name(session: AsyncSession) -> str:
    """``sqlite`` or ``postgresql``: the backend the session talks to."""
    return session.get_bind().dialect.name


def insert_for(session: AsyncSession, table: Any) -> Any:
    """A dialect ``INSERT`` with ``ON CONFLICT`` support (PostgreSQL and SQLite share the syntax)."""
    name = dialect_name(session)
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"no upsert for dialect {name!r}")
