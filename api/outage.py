"""Outages of what the service depends on: one log line per outage, and 503 with Retry-After while the database is away.

A database that cannot be reached (refused, dropped, restarting, locked) is not a bug of the
request: every route answers ``503 {"detail": ...}`` with ``Retry-After`` (``LOGTRIAGE_DB_RETRY_AFTER_SECONDS``)
instead of a 500, and the log says so once when the outage starts (then a reminder a minute at
most), not a traceback per request.
"""

from __future__ import annotations

import logging
import time
from typing import cast

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from db.errors import OUTAGE_TYPES, is_database_outage


class OutageLog:
    """Logs an outage once when it starts (a warning), a reminder every ``remind_seconds``, and once when it ends."""

    def __init__(self, logger: logging.Logger, what: str, remind_seconds: float = 60.0) -> None:
        self.logger = logger
        self.what = what
        self.remind_seconds = remind_seconds
        self.since: float | None = None  # monotonic time of the first failure of the current outage
        self.failures = 0
        self._last_logged = 0.0

    @property
    def down(self) -> bool:
        """True between the first failure of an outage and the next success."""
        return self.since is not None

    def failed(self, exc: BaseException, doing: str = "") -> None:
        """Count a failure; log it only when it starts an outage or a reminder is due."""
        now = time.monotonic()
        self.failures += 1
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        if self.since is None:
            self.since, self._last_logged = now, now
            self.logger.warning("%s unreachable%s: %s (logged once until it is back)", self.what, doing, reason)
        elif now - self._last_logged >= self.remind_seconds:
            self._last_logged = now
            self.logger.warning(
                "%s still unreachable after %.0f s (%d failures): %s",
                self.what,
                now - self.since,
                self.failures,
                reason,
            )

    def ok(self) -> None:
        """A call succeeded: log the end of the outage, if there was one."""
        if self.since is not None:
            self.logger.warning(
                "%s back after %.0f s (%d failures)", self.what, time.monotonic() - self.since, self.failures
            )
            self.since, self.failures = None, 0


def install_database_outage_handler(app: FastAPI, retry_after_seconds: int, logger: logging.Logger) -> OutageLog:
    """Answer 503 with Retry-After for a database outage on every route; other database errors stay 500."""
    outage = OutageLog(logger, "database", remind_seconds=60.0)

    async def unavailable(_: Request, exc: Exception) -> JSONResponse:
        if not is_database_outage(exc):
            raise exc  # not an outage: the app's generic error handler answers it
        outage.failed(exc, " (answering 503)")
        return JSONResponse(
            {"detail": f"the database is unavailable; retry in {retry_after_seconds} s"},
            status_code=503,
            headers={"Retry-After": str(retry_after_seconds)},
        )

    for exc_type in (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, *OUTAGE_TYPES):
        app.add_exception_handler(cast(type[Exception], exc_type), unavailable)
    return outage
