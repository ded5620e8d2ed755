"""The API surface under hostile input (issue 17): no 500 from any input, 413 for a chunked body over
the limit, an OpenAPI document that matches the answers, the docs UI offline. The real app on a SQLite
file and on PostgreSQL, through httpx (in process, or against a real uvicorn server)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from api.main import create_app
from api.routes.detections import MAX_OFFSET
from core.settings import Settings
from tests.api.conftest import serve
from tests.api.test_service import pick

NUL, SURROGATE, REPLACED = "\u0000", "\ud800", "\ufffd"


def raw_json(payload: Any) -> dict[str, Any]:
    """A JSON body written with escapes, so that it can carry a lone surrogate (``\\ud800``)."""
    return {"content": json.dumps(payload).encode("ascii"), "headers": {"content-type": "application/json"}}


async def test_nul_and_lone_surrogates_are_replaced_everywhere(make_client: Any, test_sequences: list) -> None:
    seq = pick(test_sequences, 0, 1)[0]
    lines = [f"{seq['log_entries'][0]} {NUL}", f"step {SURROGATE} done", *seq["log_entries"][1:]]
    expected = [line.replace(NUL, REPLACED).replace(SURROGATE, REPLACED) for line in lines]
    async with make_client() as client:
        body = {
            "sequences": [{"sequence_id": f"id{NUL}{SURROGATE}", "log_entries": lines}],
            "service": f"svc{NUL}",  # the request's service too (schemathesis: PostgreSQL refused the NUL, 500)
            "explain": "never",
        }
        r = await client.post("/detect", **raw_json(body))
        assert r.status_code == 200, r.text
        detection = r.json()["detections"][0]
        assert detection["sequence_id"] == f"id{REPLACED}{REPLACED}" and detection["service"] == f"svc{REPLACED}"
        stored = (await client.get(f"/detections/{detection['id']}")).json()
        assert stored["log_entries"] == expected

        windowed = {"lines": lines, "window": {"type": "session", "session_key": f"(step){NUL}"}, "explain": "never"}
        r = await client.post("/detect", **raw_json(windowed))
        assert r.status_code == 200, r.text

        r = await client.get("/detections/%00")
        assert r.status_code == 404 and r.json()["detail"] == f"no detection {REPLACED}"
        r = await client.get("/detections", params={"category": f"timeout{NUL}"})
        assert r.status_code == 200 and r.json()["total"] == 0
        r = await client.post("/explain", **raw_json({"detection_id": f"{NUL}{SURROGATE}"}))
        assert r.status_code == 404 and r.json()["detail"] == f"no detection {REPLACED}{REPLACED}"


async def test_query_parameters_are_bounded(make_client: Any, test_sequences: list) -> None:
    async with make_client() as client:
        await client.post("/detect", json={"sequences": pick(test_sequences, 0, 1), "explain": "never"})
        r = await client.get("/detections", params={"offset": "10000000000000000000"})
        assert r.status_code == 422 and r.json()["detail"].startswith("query.offset: ")
        r = await client.get("/detections", params={"offset": MAX_OFFSET})
        assert r.status_code == 200 and r.json()["items"] == [] and r.json()["total"] == 1
        r = await client.get("/detections", params={"limit": 1001})
        assert r.status_code == 422 and "query.limit" in r.json()["detail"]
        # times past the calendar's end once in UTC are clamped to it, not an overflow
        for name, value, total in [
            ("since", "9999-12-31T23:59:59-23:59", 0),
            ("until", "9999-12-31T23:59:59-23:59", 1),
            ("since", "0001-01-01T00:00:00+23:59", 1),
            ("until", "0001-01-01T00:00:00+23:59", 0),
        ]:
            r = await client.get("/detections", params={name: value})
            assert r.status_code == 200 and r.json()["total"] == total, (name, value, r.text)
        r = await client.get("/detections/" + "x" * 201)
        assert r.status_code == 422 and "path.detection_id" in r.json()["detail"]
        body = {"lines": ["a", "b"], "window": {"type": "sliding", "size": 2, "step": 10**6}}
        r = await client.post("/detect", json=body)
        assert r.status_code == 422 and "window.step" in r.json()["detail"]


async def test_api_key_header_is_compared_as_bytes(make_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    async with make_client(api_keys=["s3cret", "clé"]) as client:
        with caplog.at_level(logging.INFO):
            for raw in (b"\xc3\xa9", b"\xff\xfe", "clé".encode("latin-1"), b"s3cret\x00"):
                r = await client.get("/detections", headers={"X-API-Key": raw})
                assert r.status_code == 401 and r.json() == {"detail": "invalid API key"}, raw
            assert (await client.get("/detections", headers={"X-API-Key": "clé".encode()})).status_code == 200
            assert (await client.get("/detections", headers={"X-API-Key": "s3cret"})).status_code == 200
        assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING or rec.exc_info]


async def test_an_unexpected_error_is_answered_and_logged_once(
    models: tuple[Any, Any], db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(Settings(database_url=db_url, workers=0), detector=models[0], explainer=None)

    async def fails() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/fails", fails)
    with serve(app) as url, caplog.at_level(logging.INFO):
        async with httpx.AsyncClient(base_url=url) as client:
            r = await client.get("/fails")
    assert r.status_code == 500 and re.fullmatch(
        r"internal error \(incident \w+; see the server log\)", r.json()["detail"]
    )
    tracebacks = [rec for rec in caplog.records if rec.exc_info]
    assert len(tracebacks) == 1 and "a bug" in tracebacks[0].getMessage()


async def test_a_chunked_body_over_the_limit_is_413(make_server: Any, test_sequences: list) -> None:
    seq = pick(test_sequences, 0, 1)[0]

    async def chunked(payload: dict[str, Any]) -> AsyncIterator[bytes]:  # no content-length: chunked encoding
        body = json.dumps(payload).encode()
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    with make_server(max_body_bytes=2000) as url:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            big = {"sequences": [{"log_entries": ["z" * 5000]}], "explain": "never"}
            r = await client.post("/detect", content=chunked(big), headers={"content-type": "application/json"})
            assert r.request.headers["transfer-encoding"] == "chunked"
            assert r.status_code == 413, r.text
            assert r.json()["detail"].endswith("exceeds the limit of 2000 bytes (max_body_bytes)")
            small = {"sequences": [seq], "explain": "never"}
            assert len(json.dumps(small)) < 2000
            r = await client.post("/detect", content=chunked(small), headers={"content-type": "application/json"})
            assert r.status_code == 200, r.text
            assert r.json()["detections"][0]["sequence_id"] == seq["sequence_id"]


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, ops in spec["paths"].items() for method, op in ops.items()]


async def test_openapi_documents_every_answer(make_client: Any) -> None:
    error_ref = {"$ref": "#/components/schemas/ErrorOut"}
    async with make_client() as client:
        spec = (await client.get("/openapi.json")).json()
        schemas = spec["components"]["schemas"]
        assert "securitySchemes" not in spec["components"]
        assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
        for path, method, op in _operations(spec):
            codes = op["responses"]
            assert "500" in codes and "401" not in codes and "security" not in op, (path, method)
            if op.get("parameters") or op.get("requestBody"):
                assert codes["422"]["content"]["application/json"]["schema"] == error_ref, (path, method)
            if op.get("requestBody"):
                assert {"400", "413", "422", "503"} <= set(codes), (path, method)
        assert "404" in spec["paths"]["/detections/{detection_id}"]["get"]["responses"]
        assert "404" in spec["paths"]["/explain"]["post"]["responses"]
        assert schemas["DetectRequest"]["oneOf"] == [{"required": ["sequences"]}, {"required": ["lines"]}]
        assert schemas["ExplainRequest"]["oneOf"] == [{"required": ["detection_id"]}, {"required": ["sequence"]}]
        assert schemas["DetectRequest"]["properties"]["sequences"]["type"] == "array"  # never null
        # the answers have the documented shape
        for r in (
            await client.post("/detect", json={}),
            await client.post("/detect", json={"sequences": [{"log_entries": ["a"]}], "lines": ["a"]}),
            await client.post("/detect", json={"sequences": None, "lines": ["a"]}),
            await client.get("/detections", params={"limit": 0}),
            await client.get("/detections/nope"),
        ):
            assert r.status_code in (404, 422) and list(r.json()) == ["detail"] and isinstance(r.json()["detail"], str)
    async with make_client(api_keys=["k"]) as client:
        spec = (await client.get("/openapi.json")).json()
        assert spec["components"]["securitySchemes"] == {
            "ApiKey": {
                "type": "apiKey",
                "in": "header",
                "name": "X-API-Key",
                "description": "one of the configured API keys",
            }
        }
        for path, _method, op in _operations(spec):
            guarded = path not in ("/health", "/ready", "/metrics", "/ui")  # the open ones, like the docs
            assert ("401" in op["responses"]) == guarded and (op.get("security") == [{"ApiKey": []}]) == guarded
        r = await client.get("/detections")
        assert r.status_code == 401 and r.json() == {"detail": "missing X-API-Key header"}


async def test_docs_ui_is_served_from_local_assets(make_client: Any) -> None:
    async with make_client(api_keys=["k"]) as client:
        for page in ("/docs", "/redoc"):
            r = await client.get(page)
            assert r.status_code == 200
            urls = re.findall(r'(?:src|href|spec-url)="([^"]+)"', r.text) + re.findall(r"url: '([^']+)'", r.text)
            assert len(urls) >= 2, r.text
            for url in urls:
                assert not re.match(r"(https?:)?//", url), f"{page} loads {url} from outside"
                asset = await client.get(url)
                assert asset.status_code == 200 and len(asset.content) > 1000, url
        assert "SwaggerUIBundle" in (await client.get("/docs")).text


@pytest.mark.parametrize(
    "path,payload,needle",
    [
        ("/detect", {"lines": ["a"], "window": {"session_key": "("}}, "session key '(' is not a regular expression"),
        ("/detect", {"lines": ["a"], "window": {"size": True}}, "window.size: Value error, Input should be a number"),
        ("/detect", {"lines": ["a"], "window": {"size": "5"}}, "window.size: Value error, Input should be a number"),
        ("/detect", {"lines": [" ", "\u3000\x1c"]}, "lines: Value error, has only empty lines"),
        ("/detect", {"sequences": None, "lines": ["a"]}, "sequences: Value error, null is not allowed"),
        (
            "/explain",
            {"detection_id": "x", "wait_seconds": False},
            "wait_seconds: Value error, Input should be a number",
        ),
    ],
)
async def test_what_the_schema_says_is_what_the_app_checks(
    make_client: Any, path: str, payload: dict, needle: str
) -> None:
    """Rules schemathesis found the app applying beyond its schema, now in both (JSON true is not 1)."""
    async with make_client() as client:
        r = await client.post(path, json=payload)
        assert r.status_code == 422 and needle in r.json()["detail"], r.text
        if path == "/detect":
            spec = (await client.get("/openapi.json")).json()["components"]["schemas"]
            assert "then" not in spec["WindowSpec"]  # a session needs no key: the live-session rules apply
            assert spec["WindowSpec"]["properties"]["session_key"]["anyOf"][0]["format"] == "regex"
            assert spec["DetectRequest"]["properties"]["lines"]["contains"]["type"] == "string"


async def test_times_are_iso_and_blank_windows_are_skipped(make_client: Any) -> None:
    async with make_client() as client:
        r = await client.get("/detections", params={"until": "0.5"})  # pydantic alone reads it as 1970-01-01
        assert r.status_code == 422 and "query.until: Value error, expected an ISO 8601 date and time" in r.text
        assert (await client.get("/detections", params={"until": "2024-05-01 10:00:00+02:00"})).status_code == 200
        body = {
            "lines": ["ERROR [db] connection refused", "", " "],
            "window": {"type": "fixed", "size": 1},
            "explain": "never",
        }
        r = await client.post("/detect", json=body)
        assert r.status_code == 200, r.text
        assert [d["sequence_id"] for d in r.json()["detections"]] == ["w1-1"]
