"""API keys and request-size limits: clear 401/413/422 answers, never a stack trace."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.settings import Settings

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="required when keys are configured")


async def require_api_key(request: Request, key: Annotated[str | None, Depends(api_key_header)]) -> None:
    """Reject the request unless auth is off or the header carries a configured key."""
    settings: Settings = request.app.state.settings
    if not settings.api_keys:
        return
    if key is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing X-API-Key header", headers={"WWW-Authenticate": "APIKey"}
        )
    if not any(hmac.compare_digest(key, allowed) for allowed in settings.api_keys):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid API key", headers={"WWW-Authenticate": "APIKey"})


class BodySizeLimit:
    """ASGI middleware: answer 413 when a request body exceeds ``max_bytes`` (declared or streamed)."""

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
        seen = 0
        too_big = False

        async def limited_receive() -> Message:
            nonlocal seen, too_big
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    too_big = True
                    raise _BodyTooLarge
            return message

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._reject(send, seen)
        _ = too_big

    async def _reject(self, send: Send, size: int) -> None:
        body = (
            f'{{"detail":"request body of {size} bytes exceeds the limit of {self.max_bytes} bytes (max_body_bytes)"}}'
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass
