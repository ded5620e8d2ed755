"""Apply the Alembic migrations: at start-up (``Database.upgrade``/``upgrade``) or by a command.

Commands (the URL defaults to the settings' ``database_url``)::

    python -m db.migrate upgrade [REVISION] [--url URL]
    python -m db.migrate downgrade REVISION [--url URL]
    python -m db.migrate current [--url URL]

The Alembic CLI works as well: ``alembic -c db/alembic.ini upgrade head``.
On PostgreSQL, :func:`upgrade` holds a transaction-level advisory lock while it migrates, so
replicas that start together migrate one after the other (the later ones find head and do nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from core.cli_args import run_cli
from db.engine import make_engine, normalize_url

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
PG_MIGRATION_LOCK_KEY = 0x4C54_4D47  # "LTMG": serializes concurrent upgrades on one PostgreSQL database

Target = str | URL | AsyncEngine | None


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic config built in code (no ini file needed), pointing at ``db/migrations``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        rendered = normalize_url(url).render_as_string(hide_password=False)
        cfg.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The newest revision of the migration scripts."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migration scripts found"
    return head


async def _on_connection(target: Target, fn: Callable[[Connection], Any], *, lock: bool = False) -> Any:
    engine = target if isinstance(target, AsyncEngine) else make_engine(target)
    try:
        async with engine.begin() as conn:
            if lock and conn.dialect.name == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK_KEY})
            return await conn.run_sync(fn)
    finally:
        if engine is not target:
            await engine.dispose()


def _alembic(fn: Callable[[Config], None]) -> Callable[[Connection], None]:
    def run(connection: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = connection  # env.py migrates on this connection
        fn(cfg)

    return run


async def upgrade(target: Target = None, revision: str = "head") -> None:
    """Migrate the database at ``target`` (a URL or an engine; default: settings) up to ``revision``."""
    await _on_connection(target, _alembic(lambda cfg: command.upgrade(cfg, revision)), lock=True)
    log.info("database migrated to %s", revision)


async def downgrade(target: Target, revision: str) -> None:
    """Migrate the database at ``target`` down to ``revision`` (``base`` drops every table)."""
    await _on_connection(target, _alembic(lambda cfg: command.downgrade(cfg, revision)), lock=True)


async def current_revision(target: Target = None) -> str | None:
    """The revision the database is at, or None for an empty (never migrated) database."""
    return await _on_connection(target, lambda conn: MigrationContext.configure(conn).get_current_revision())


def _run_sync(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # called from async code: run on a fresh loop in a helper thread rather than fail
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def upgrade_to_head(url: str | URL | None = None) -> None:
    """Blocking form of :func:`upgrade` for scripts and the CLI."""
    _run_sync(upgrade(url))


def main(argv: list[str] | None = None) -> int:
    """``python -m db.migrate {upgrade,downgrade,current}``."""
    parser = argparse.ArgumentParser(prog="python -m db.migrate", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="database URL (default: LOGTRIAGE_DATABASE_URL or settings)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("upgrade", help="migrate up (default: to head)")
    up.add_argument("revision", nargs="?", default="head")
    down = sub.add_parser("downgrade", help="migrate down to REVISION (base: drop everything)")
    down.add_argument("revision")
    sub.add_parser("current", help="print the revision the database is at")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    url = args.url

    def run() -> int:
        if args.cmd == "upgrade":
            _run_sync(upgrade(url, args.revision))
        elif args.cmd == "downgrade":
            _run_sync(downgrade(url, args.revision))
        else:
            rev = _run_sync(current_revision(url))
            sys.stdout.write(f"{rev or '(empty database)'} (head: {head_revision()})\n")
        return 0

    return run_cli(run)  # one line for the operator, no stack trace


if __name__ == "__main__":
    sys.exit(main())
