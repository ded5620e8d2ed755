"""What the dashboard reads, through the real app: the service of a detection, the risk and service
filters, the anomaly timeline, the facets, and the page itself."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from tests.api.test_service import pick, wait_explained


async def test_service_filters_timeline_and_facets(make_client: Any, test_sequences: list) -> None:
    anomalies, normals = pick(test_sequences, 1, 3), pick(test_sequences, 0, 2)
    async with make_client() as client:
        r = await client.post(
            "/detect",
            json={
                "sequences": [a | {"service": "payments"} for a in anomalies] + normals,
                "service": "orders",  # the request's service: for the sequences that name none
                "explain": "auto",
            },
        )
        assert r.status_code == 200, r.text
        dets = r.json()["detections"]
        assert [d["service"] for d in dets] == ["payments"] * 3 + ["orders"] * 2
        flagged = [d for d in dets if d["is_anomaly"]]
        assert flagged and all(d["service"] == "payments" for d in flagged)
        explained = await wait_explained(client, flagged[0]["id"])
        category = explained["explanation"]["category"]
        r = await client.post(
            "/detect",
            json={"lines": normals[0]["log_entries"], "window": {"size": 4}, "service": "网关", "explain": "never"},
        )
        windows = r.json()["detections"]
        assert windows and {d["service"] for d in windows} == {"网关"}
        anomalous = [d for d in dets + windows if d["is_anomaly"]]  # a cut of a normal run may be flagged too

        async def ids(**params: Any) -> set[str]:
            r = await client.get("/detections", params={"limit": 100, **params})
            assert r.status_code == 200, r.text
            return {d["id"] for d in r.json()["items"]}

        assert await ids(service="payments") == {d["id"] for d in dets[:3]}
        assert await ids(service="网关") == {d["id"] for d in windows}
        levels = {d["id"]: d["risk_level"] for d in dets + windows}
        assert await ids(risk=["low"]) == {i for i, level in levels.items() if level == "low"}
        assert await ids(risk=["high", "medium"]) == {i for i, level in levels.items() if level != "low"}
        listed = (await client.get("/detections", params={"category": category})).json()["items"]
        assert flagged[0]["id"] in {d["id"] for d in listed}
        assert all(d["category"] == category for d in listed)  # the list carries the category
        r = await client.get("/detections", params={"risk": "severe"})
        assert r.status_code == 422 and "risk" in r.json()["detail"]

        # the timeline: every anomaly of the range once, by category, in 1-minute buckets
        now = datetime.now(UTC).replace(microsecond=0)
        since = (now - timedelta(minutes=30)).isoformat()
        until = (now + timedelta(minutes=1)).isoformat()
        r = await client.get("/detections/timeline", params={"since": since, "until": until, "bucket_seconds": 60})
        assert r.status_code == 200, r.text
        t = r.json()
        assert t["bucket_seconds"] == 60 and len(t["buckets"]) == 31
        assert sum(b["total"] for b in t["buckets"]) == len(anomalous)
        assert all(b["total"] == sum(b["counts"].values()) for b in t["buckets"])
        assert category in t["categories"]
        # the tiny explainer's labels, or "other" below its calibrated confidence (as in test_service)
        known = {"timeout", "database_error", "permission_error", "other"}
        assert set(t["categories"]) <= {category, "unexplained"} | known
        starts = [datetime.fromisoformat(b["start"]) for b in t["buckets"]]
        assert all(b - a == timedelta(seconds=60) for a, b in pairwise(starts))
        # filtered by service: the normal service has no anomaly; default range: 24 h in about 60 buckets
        assert (
            sum(
                b["total"]
                for b in (await client.get("/detections/timeline", params={"service": "orders"})).json()["buckets"]
            )
            == 0
        )
        default = (await client.get("/detections/timeline")).json()
        assert default["bucket_seconds"] == 1800 and len(default["buckets"]) == 48
        assert sum(b["total"] for b in default["buckets"]) == len(anomalous)

        # bad ranges say what is wrong
        r = await client.get("/detections/timeline", params={"since": until, "until": since})
        assert r.status_code == 200 and r.json()["buckets"] == []  # an empty or backwards range: no buckets
        r = await client.get("/detections/timeline", params={"bucket_seconds": 54364105992137109672034304})
        assert r.status_code == 422 and "bucket_seconds" in r.json()["detail"]  # not a database overflow (500)
        # buckets finer than the limit of 500 allows are widened to the narrowest width that fits
        r = await client.get("/detections/timeline", params={"since": since, "until": until, "bucket_seconds": 1})
        assert r.status_code == 200 and len(r.json()["buckets"]) <= 500
        assert r.json()["bucket_seconds"] == -(-31 * 60 // 500)  # 31 minutes in 500 buckets: 4 s each
        assert sum(b["total"] for b in r.json()["buckets"]) == len(anomalous)

        facets = (await client.get("/detections/facets")).json()
        assert category in facets["categories"]
        assert set(facets["services"]) == {"payments", "orders", "网关"}


async def test_the_page_is_served_open_and_whole(make_client: Any) -> None:
    async with make_client(api_keys=["k"]) as client:
        r = await client.get("/ui")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert 'content="true"' in r.text  # the page knows the API asks for a key
        for asset in ("/ui/static/app.js", "/ui/static/app.css"):
            a = await client.get(asset)
            assert a.status_code == 200 and len(a.content) > 1000, asset
            assert asset.rsplit("/", 1)[-1] in r.text
        assert "http://" not in r.text and "https://" not in r.text  # nothing from elsewhere: works offline
        assert (await client.get("/detections/timeline")).status_code == 401  # the data needs the key
        assert (await client.get("/ui/static/nothing.js")).status_code == 404
    async with make_client() as client:
        assert 'content="false"' in (await client.get("/ui")).text
