"""``POST /v1/logs``: the OTLP/HTTP logs receiver (protobuf or JSON, gzip); records join live sessions.

Answers follow the OTLP/HTTP specification: 200 with an ``ExportLogsServiceResponse`` (its
``partial_success`` counts the records refused, with the first reason), 400 when nothing in the
request can be used, 413 over the size limit, 415 for another content type or encoding, 429 when
the sessions waiting to be scored exceed ``ingest_max_backlog`` and 503 when the detector or the
database is away, both with ``Retry-After``. Error bodies are a ``google.rpc.Status`` in the
request's encoding.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import APIRouter, Request, Response
from sqlalchemy.exc import SQLAlchemyError

from api.deps import LiveDep, MetricsDep, SettingsDep
from api.otlp import (
    CODE_INVALID_ARGUMENT,
    CODE_RESOURCE_EXHAUSTED,
    CODE_UNAVAILABLE,
    JSON,
    PROTOBUF,
    Decoded,
    OtlpError,
    decompress,
    encode_response,
    encode_status,
    media_type,
    parse_request,
    to_records,
)
from core.settings import Settings

router = APIRouter(tags=["ingestion"])
log = logging.getLogger(__name__)
_BODY = {
    "content": {PROTOBUF: {"schema": {"type": "string", "format": "binary"}}, JSON: {"schema": {"type": "object"}}}
}


def _decode(body: bytes, kind: str, encoding: str | None, settings: Settings) -> Decoded:
    raw = decompress(body, encoding, settings.max_body_bytes)
    request = parse_request(raw, kind)
    return to_records(request, settings.otlp_line_template, settings.max_line_bytes_request, time.time())


@router.post(
    "/v1/logs",
    response_class=Response,
    summary="OTLP/HTTP logs receiver (ExportLogsServiceRequest as protobuf or JSON)",
    openapi_extra={"requestBody": {"required": True, **_BODY}},
    responses={
        200: {"description": "ExportLogsServiceResponse (partial_success when records were refused)", **_BODY},
        400: {"description": "malformed request, or no usable record"},
        413: {"description": "body over max_body_bytes (compressed or not)"},
        415: {"description": "content type or encoding not supported"},
        429: {"description": "too many sessions waiting to be scored; retry after Retry-After seconds"},
        503: {"description": "detector or database unavailable; retry after Retry-After seconds"},
    },
)
async def export_logs(request: Request, settings: SettingsDep, metrics: MetricsDep, live: LiveDep) -> Response:
    """Take the log records of an OTLP export; each joins its live session (by trace id, regex or service window)."""
    kind = JSON
    try:
        kind = media_type(request.headers.get("content-type"))
        if live is None:
            raise OtlpError(503, "the detector is not loaded yet (see GET /ready)")
        if live.backlog > settings.ingest_max_backlog:
            raise OtlpError(
                429,
                f"{live.backlog} closed sessions are waiting to be scored (over ingest_max_backlog "
                f"{settings.ingest_max_backlog}); retry later",
            )
        body = await request.body()
        decoded = await asyncio.to_thread(_decode, body, kind, request.headers.get("content-encoding"), settings)
        if decoded.rejected and not decoded.records:
            metrics.otlp_records.labels("rejected").inc(decoded.rejected)
            raise OtlpError(400, f"no record accepted: {decoded.error}")
        try:
            await live.ingest(decoded.records, "otlp")
        except (SQLAlchemyError, OSError) as exc:
            log.warning("OTLP records not stored: %s", exc)
            raise OtlpError(503, "the database is unavailable; the records were not stored, retry later") from None
    except OtlpError as exc:
        if exc.status in (429, 503):
            metrics.otlp_throttled.labels(str(exc.status)).inc()
            headers = {"Retry-After": str(settings.ingest_retry_after_seconds)}
            code = CODE_RESOURCE_EXHAUSTED if exc.status == 429 else CODE_UNAVAILABLE
        else:
            headers, code = {}, CODE_INVALID_ARGUMENT
        return Response(encode_status(kind, code, exc.message), exc.status, headers=headers, media_type=kind)
    metrics.otlp_records.labels("accepted").inc(len(decoded.records))
    if decoded.rejected:
        metrics.otlp_records.labels("rejected").inc(decoded.rejected)
    if decoded.truncated:
        metrics.otlp_records.labels("truncated").inc(decoded.truncated)
    return Response(encode_response(kind, decoded.rejected, decoded.error), media_type=kind)
