"""Telling a database outage (unreachable, restarting, locked, dropped connection) from a bug or bad data."""

from __future__ import annotations

import errno
import socket

import sqlalchemy.exc

try:  # only the PostgreSQL driver's connection errors; the driver is optional for SQLite deployments
    from asyncpg.exceptions import InterfaceError as _PgInterfaceError
    from asyncpg.exceptions import PostgresConnectionError as _PgConnectionError

    _DRIVER_ERRORS: tuple[type[BaseException], ...] = (_PgConnectionError, _PgInterfaceError)
except ImportError:  # pragma: no cover
    _DRIVER_ERRORS = ()

# the PostgreSQL server is shutting down, restarting, or refuses connections: "class 57" and "class 08"
_PG_OUTAGE_STATES = ("08", "57P")
OUTAGE_TYPES: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.TimeoutError,  # the pool had no connection to give in time
    sqlalchemy.exc.DisconnectionError,
    ConnectionError,  # refused, reset, aborted, broken pipe: what asyncpg raises unwrapped at connect
    TimeoutError,  # asyncpg's connect timeout
    socket.gaierror,  # the host name does not resolve
    *_DRIVER_ERRORS,
)
_NETWORK_ERRNOS = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN})


def is_database_outage(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) says the database cannot be reached now, not that a query is wrong.

    Connection refused or reset, a connect timeout, a dropped connection, a server shutting down,
    a pool with no connection to give, SQLite's "database is locked" or "unable to open database file".
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlalchemy.exc.DBAPIError):
            if current.connection_invalidated or isinstance(
                current, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError
            ):
                return True
            code = str(getattr(current.orig, "sqlstate", "") or getattr(current.orig, "pgcode", "") or "")
            if code.startswith(_PG_OUTAGE_STATES):
                return True
        elif isinstance(current, OUTAGE_TYPES) or (isinstance(current, OSError) and current.errno in _NETWORK_ERRNOS):
            return True
        current = current.__cause__ or current.__context__
    return False
