"""Every error answer is ``{"detail": "<one sentence>"}``: its handlers, and the OpenAPI responses that say so."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.schemas import ErrorOut
from core.errors import LimitError, LogTriageError

log = logging.getLogger(__name__)

DESCRIPTIONS = {
    400: "the body could not be read (not UTF-8)",
    401: "missing or invalid X-API-Key",
    404: "no such detection",
    413: "a request limit was exceeded: the answer names the limit and the value",
    422: "invalid request: each field at fault and what is wrong with it, in one sentence",
    500: "unexpected error: an incident id to find in the server log",
    503: "not ready: the detector is not loaded, or the database cannot be reached",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of these error statuses, each with the :class:`ErrorOut` body."""
    return {code: {"model": ErrorOut, "description": DESCRIPTIONS[code]} for code in codes}


async def invalid_request(_: Request, exc: Exception) -> JSONResponse:
    """422 naming the fields at fault (the first five)."""
    assert isinstance(exc, RequestValidationError)
    problems = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        problems.append(f"{where}: {err.get('msg', 'invalid')}")
    return JSONResponse({"detail": "; ".join(problems)}, status_code=422)


async def user_error(_: Request, exc: Exception) -> JSONResponse:
    """422 with the message of a :class:`LogTriageError` (bad input found past the schema)."""
    return JSONResponse({"detail": str(exc)}, status_code=422)


async def too_large(_: Request, exc: Exception) -> JSONResponse:
    """413 with the message of a :class:`LimitError` (the limit and the value)."""
    return JSONResponse({"detail": str(exc)}, status_code=413)


async def http_error(_: Request, exc: Exception) -> JSONResponse:
    """The status and detail of an ``HTTPException``, in the one error shape."""
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


async def unexpected(_: Request, exc: Exception) -> JSONResponse:
    """500 with an incident id; the traceback goes to the log once, under that id."""
    incident = uuid.uuid4().hex[:12]
    log.error("incident %s: %s", incident, exc, exc_info=exc)
    return JSONResponse({"detail": f"internal error (incident {incident}; see the server log)"}, status_code=500)


class AnswerErrors:
    """ASGI middleware: an exception the routes let through is answered by the app's handler for
    ``Exception`` and stops here (Starlette's outermost layer would log it a second time)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:  # too late to answer: the server closes the connection
                raise
            handler = scope["app"].exception_handlers.get(Exception, unexpected)
            response = await handler(Request(scope), exc)
            await response(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """The handlers above, and :class:`AnswerErrors` inside the app's own middleware."""
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(LogTriageError, user_error)
    app.add_exception_handler(LimitError, too_large)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
    app.add_middleware(AnswerErrors)
