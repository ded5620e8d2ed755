"""OTLP/HTTP logs: decode an ``ExportLogsServiceRequest`` (protobuf or JSON, gzip) into log records, encode answers.

The messages are the ``opentelemetry-proto`` package's. OTLP/JSON differs from protobuf's canonical
JSON mapping in one place: trace and span ids are hex, not base64; they are converted before parsing.
Errors raise :class:`OtlpError` with the HTTP status and a message naming what was wrong.
"""

from __future__ import annotations

import base64
import json
import re
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from core.sessions import LogRecord

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
# google.rpc.Code values of the Status message in error answers
CODE_INVALID_ARGUMENT = 3
CODE_RESOURCE_EXHAUSTED = 8
CODE_UNAVAILABLE = 14
_SEVERITY = ((1, "TRACE"), (5, "DEBUG"), (9, "INFO"), (13, "WARN"), (17, "ERROR"), (21, "FATAL"))
_ID_KEYS = {"traceId": 16, "trace_id": 16, "spanId": 8, "span_id": 8}
_SPACES = re.compile(r" {2,}")


class OtlpError(Exception):
    """A request the receiver refuses: the HTTP status and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Decoded:
    """The records of one request, and the ones refused with the first reason."""

    records: list[LogRecord]
    rejected: int
    error: str | None
    truncated: int = 0


def media_type(content_type: str | None) -> str:
    """``application/x-protobuf`` or ``application/json`` from a Content-Type header, else 415."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind in (PROTOBUF, JSON):
        return kind
    raise OtlpError(
        415, f"unsupported content type {content_type or '(none)'!r}: send {PROTOBUF} or {JSON} (OTLP/HTTP)"
    )


def decompress(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """The body, gunzipped when ``Content-Encoding: gzip``; at most ``max_bytes`` once decompressed (else 413)."""
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        return body
    if enc != "gzip":
        raise OtlpError(415, f"unsupported content encoding {encoding!r}: send gzip or none")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise OtlpError(400, f"the gzip body cannot be decompressed: {exc}") from None
    if len(out) > max_bytes:
        raise OtlpError(413, f"the decompressed body exceeds the limit of {max_bytes} bytes (max_body_bytes)")
    if not inflater.eof:
        raise OtlpError(400, "the gzip body is truncated")
    return out


def _hex_ids_to_base64(node: Any, path: str = "") -> Any:
    """OTLP/JSON's hex trace and span ids as the base64 that protobuf's JSON parser expects."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k in _ID_KEYS and isinstance(v, str) and v:
                try:
                    raw = bytes.fromhex(v)
                except ValueError:
                    raise OtlpError(400, f"{path}{k}: {v!r} is not hex (OTLP/JSON ids are hex strings)") from None
                if len(raw) != _ID_KEYS[k]:
                    raise OtlpError(400, f"{path}{k}: {v!r} is not {_ID_KEYS[k]} bytes of hex")
                out[k] = base64.b64encode(raw).decode("ascii")
            else:
                out[k] = _hex_ids_to_base64(v, f"{path}{k}.")
        return out
    if isinstance(node, list):
        return [_hex_ids_to_base64(v, f"{path.rstrip('.')}[{i}].") for i, v in enumerate(node)]
    return node


def parse_request(body: bytes, kind: str) -> ExportLogsServiceRequest:
    """The request message from its protobuf or OTLP/JSON encoding (400 with the parser's reason)."""
    request = ExportLogsServiceRequest()
    if kind == PROTOBUF:
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            raise OtlpError(400, f"malformed protobuf ExportLogsServiceRequest: {exc}") from None
        return request
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OtlpError(400, f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise OtlpError(400, 'the JSON body must be an ExportLogsServiceRequest object ({"resourceLogs": [...]})')
    try:
        json_format.ParseDict(_hex_ids_to_base64(data), request, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise OtlpError(400, f"invalid OTLP/JSON ExportLogsServiceRequest: {exc}") from None
    return request


def _any_text(value: AnyValue) -> str | None:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "string_value":
        return value.string_value
    if kind == "bytes_value":
        return value.bytes_value.hex()
    if kind in ("bool_value", "int_value", "double_value"):
        return str(getattr(value, kind))
    return json.dumps(json_format.MessageToDict(value), ensure_ascii=False, separators=(",", ":"))


def _severity(number: int, text: str) -> str:
    if text:
        return text
    name = ""
    for low, label in _SEVERITY:
        if number >= low:
            name = label
    return name


def _clip(text: str, max_bytes: int) -> tuple[str, bool]:
    raw = text.encode("utf-8", errors="surrogatepass")
    if len(raw) <= max_bytes:
        return text, False
    kept = raw[:max_bytes].decode("utf-8", errors="ignore")
    return f"{kept} …[{len(raw) - max_bytes} bytes cut]", True


def to_records(request: ExportLogsServiceRequest, template: str, max_line_bytes: int, now: float) -> Decoded:
    """Log records as lines (``template`` over time, severity, service and body) with their trace id and service.

    A record with no body (or a blank one) is refused and counted; a body over ``max_line_bytes`` is cut
    with a marker saying how much.
    """
    prefix_t, _, suffix_t = template.partition("{body}")
    records: list[LogRecord] = []
    rejected = truncated = 0
    error: str | None = None
    for r, resource_logs in enumerate(request.resource_logs):
        service = next(
            (
                _any_text(a.value)
                for a in resource_logs.resource.attributes
                if a.key == "service.name" and _any_text(a.value)
            ),
            None,
        )
        for s, scope_logs in enumerate(resource_logs.scope_logs):
            for i, rec in enumerate(scope_logs.log_records):
                body = _any_text(rec.body) if rec.HasField("body") else None
                if body is None or not body.strip():
                    rejected += 1
                    error = error or (
                        f"resourceLogs[{r}].scopeLogs[{s}].logRecords[{i}] has no body "
                        "(a log record needs a non-empty body to be scored)"
                    )
                    continue
                nanos = rec.time_unix_nano or rec.observed_time_unix_nano
                t = nanos / 1e9 if nanos else now
                fields = {
                    "time": datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
                    "severity": _severity(rec.severity_number, rec.severity_text),
                    "service": service or "unknown_service",
                }
                body, cut = _clip(body.rstrip("\n"), max_line_bytes)
                truncated += cut
                prefix = _SPACES.sub(" ", prefix_t.format(**fields)).lstrip()
                suffix = _SPACES.sub(" ", suffix_t.format(**fields)).rstrip()
                trace = rec.trace_id.hex() if rec.trace_id and any(rec.trace_id) else None
                records.append(LogRecord(line=f"{prefix}{body}{suffix}", trace_id=trace, service=service, time=t))
    return Decoded(records, rejected, error, truncated)


def encode_response(kind: str, rejected: int = 0, message: str | None = None) -> bytes:
    """An ``ExportLogsServiceResponse`` (with ``partial_success`` when records were refused) in ``kind``."""
    response = ExportLogsServiceResponse()
    if rejected or message:
        response.partial_success.rejected_log_records = rejected
        response.partial_success.error_message = message or ""
    if kind == PROTOBUF:
        return response.SerializeToString()
    return json_format.MessageToJson(response, indent=None).encode()


def encode_status(kind: str, code: int, message: str) -> bytes:
    """An error answer: a ``google.rpc.Status`` in the request's encoding (JSON also carries ``detail``)."""
    if kind == PROTOBUF:
        return status_pb2.Status(code=code, message=message).SerializeToString()
    return json.dumps({"code": code, "message": message, "detail": message}).encode()
