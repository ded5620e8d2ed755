"""Sessions, and the ``Database`` holder of one engine (:mod:`db.engine`) and its session factory."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from db.engine import make_engine

log = logging.getLogger(__name__)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions whose objects stay readable after commit (``expire_on_commit=False``), as async code needs."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=True)


class Database:
    """One engine and its session factory, created once per process (in the app's lifespan)."""

    def __init__(self, url: str | URL | None = None, *, echo: bool = False, **engine_kwargs: Any) -> None:
        self.engine = make_engine(url, echo=echo, **engine_kwargs)
        self.sessionmaker = make_sessionmaker(self.engine)

    @property
    def url(self) -> URL:
        """The engine's URL (password hidden when rendered with ``render_as_string``)."""
        return self.engine.url

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    def session(self) -> AsyncSession:
        """A new session; use as ``async with db.session() as s: ...``."""
        return self.sessionmaker()

    async def ping(self, timeout: float = 5.0) -> bool:
        """True when a ``SELECT 1`` answers within ``timeout`` seconds."""

        async def _select_one() -> bool:
            async with self.engine.connect() as conn:
                return (await conn.execute(text("SELECT 1"))).scalar_one() == 1

        try:
            return await asyncio.wait_for(_select_one(), timeout)
        except Exception as exc:  # readiness probes answer False, never raise
            log.warning("database ping failed: %s", exc)
            return False

    async def upgrade(self) -> None:
        """Apply the migrations up to head through this engine."""
        from db.migrate import upgrade

        await upgrade(self.engine)

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()
