"""API keys and request-size limits: clear 401/413 answers, never a stack trace."""

from __future__ import annotations

import hmac
import json
from typing import Any

from fastapi import HTTPException, Security, status
from fastapi.security import APIKeyHeader
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.settings import Settings

API_KEY_HEADER = "X-API-Key"
_API_KEY_FIELD = API_KEY_HEADER.lower().encode("latin-1")


def check_api_key(request: HTTPConnection) -> None:
    """401 unless auth is off or the ``X-API-Key`` header is a configured key.

    The one place the header is read: as the raw bytes of the request (any byte, ASCII or not,
    compares in constant time against the UTF-8 of each configured key; nothing is decoded).
    """
    settings: Settings = request.app.state.settings
    if not settings.api_keys:
        return
    given = next((value for name, value in request.scope.get("headers") or () if name == _API_KEY_FIELD), None)
    if given is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, f"missing {API_KEY_HEADER} header", headers={"WWW-Authenticate": "APIKey"}
        )
    matches = [hmac.compare_digest(given, key.encode("utf-8")) for key in settings.api_keys]
    if not any(matches):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid API key", headers={"WWW-Authenticate": "APIKey"})


async def require_api_key(request: HTTPConnection) -> None:
    """Dependency: :func:`check_api_key` (declares nothing in the OpenAPI document)."""
    check_api_key(request)


class ApiKeyScheme(APIKeyHeader):
    """The ``X-API-Key`` scheme of the OpenAPI document, checked by :func:`check_api_key`."""

    def __init__(self) -> None:
        super().__init__(
            name=API_KEY_HEADER, scheme_name="ApiKey", auto_error=False, description="one of the configured API keys"
        )

    async def __call__(self, request: HTTPConnection) -> str | None:
        check_api_key(request)
        return None


def auth_dependencies(settings: Settings) -> list[Any]:
    """The dependencies of the guarded routes: the key scheme where keys are configured, else none."""
    return [Security(ApiKeyScheme())] if settings.api_keys else []


class BodySizeLimit:
    """ASGI middleware: answer 413 when a request body exceeds ``max_bytes`` (declared or streamed).

    The body is read here, up to the limit, before the app sees it: a chunked body over the
    limit is refused with 413 before any parsing, and the app gets the body it would have read.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send, int(declared))
            return
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                first: Message = message
                break
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                await self._reject(send, seen, streamed=True)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                first = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return first
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Send, size: int, streamed: bool = False) -> None:
        amount = f"{size} bytes or more" if streamed else f"{size} bytes"
        detail = f"request body of {amount} exceeds the limit of {self.max_bytes} bytes (max_body_bytes)"
        data = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": data})
