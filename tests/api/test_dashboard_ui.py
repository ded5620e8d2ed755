"""The dashboard (/ui) in headless Chromium against the real app.

The app runs under uvicorn in a thread, on a SQLite file, with the tiny real models of the service
tests and an API key; detections and explanations are made through the real endpoints and worker.
The browser is the system Chromium (Debian's ``chromium``) driven by Playwright; nothing downloads a
browser. Each step writes a screenshot under the test's temporary folder.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from api.main import create_app
from core.settings import Settings
from tests.api.test_service import pick

CHROMIUM = os.environ.get("LOGTRIAGE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no system Chromium to drive: install Debian's chromium package (apt-get install chromium) "
    "or point LOGTRIAGE_CHROMIUM at a Chromium binary",
)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is missing: pip install -e '.[dev]'"
)
expect = sync_api.expect
expect.set_options(timeout=20_000)

KEY = "dashboard-test-key"
CHINESE = [
    "2024-05-01 10:00:00.101 INFO [支付服务] 收到订单 req=7f3a 用户=张三",
    "2024-05-01 10:00:00.180 INFO [支付服务] 调用银行接口 10.0.5.21:8443",
    "2024-05-01 10:00:30.214 ERROR [支付服务] 银行接口超时 30000ms",
    "2024-05-01 10:00:30.220 WARN [网关] 返回 504 req=7f3a",
]


class LiveServer:
    """The real app served by uvicorn in a thread, on a port of its own."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the app did not start (see the log above)")
            time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


@pytest.fixture(scope="module")
def live(models: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The app on a fresh SQLite file, with one explanation worker and an API key."""
    db = tmp_path_factory.mktemp("dashboard") / "logtriage.db"
    settings = Settings(database_url=f"sqlite+aiosqlite:///{db}", workers=1, api_keys=[KEY], explain_wait_seconds=30)
    with LiveServer(create_app(settings, detector=models[0], explainer=models[1])) as server:
        yield server


@pytest.fixture(scope="module")
def api(live: LiveServer) -> Iterator[httpx.Client]:
    """An HTTP client of the live app, with the key."""
    with httpx.Client(base_url=live.url, headers={"X-API-Key": KEY}, timeout=60) as client:
        yield client


def wait_explained(api: httpx.Client, detection_id: str, seconds: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        body: dict[str, Any] = api.get(f"/detections/{detection_id}").json()
        if body["explanation"] is not None:
            return body
        assert body["job_status"] != "failed", body
        time.sleep(0.1)
    raise AssertionError(f"{detection_id} not explained in {seconds} s")


@pytest.fixture(scope="module")
def seeded(api: httpx.Client, test_sequences: list[dict[str, Any]]) -> dict[str, Any]:
    """Anomalies from payments (explained by the worker), normal runs from orders, a Chinese sequence
    left unexplained."""
    anomalies = [s | {"service": "payments"} for s in pick(test_sequences, 1, 3)]
    normals = [s | {"service": "orders"} for s in pick(test_sequences, 0, 3)]
    r = api.post("/detect", json={"sequences": anomalies + normals, "explain": "auto"})
    assert r.status_code == 200, r.text
    detections = r.json()["detections"]
    flagged = [d for d in detections if d["is_anomaly"]]
    assert flagged, "the tiny detector flags the obvious anomalies"
    explained = [wait_explained(api, d["id"]) for d in flagged]
    r = api.post(
        "/detect",
        json={
            "sequences": [{"sequence_id": "中文-支付超时", "log_entries": CHINESE}],
            "explain": "never",
            "service": "支付服务",
        },
    )
    assert r.status_code == 200, r.text
    chinese = r.json()["detections"][0]
    return {"detections": [*detections, chinese], "explained": explained, "chinese": chinese}


def open_dashboard(
    browser: Any, live: LiveServer, width: int, height: int, query: str = "", key: str | None = KEY
) -> tuple[Any, list[str]]:
    """A fresh page on /ui (polling every second) with its console errors collected; the key entered."""
    page = browser.new_page(viewport={"width": width, "height": height})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.goto(f"{live.url}/ui?refresh=1{query}")
    if key is None:
        expect(page.locator("#key-dialog")).to_be_hidden()
        return page, errors
    expect(page.locator("#key-dialog")).to_be_visible()  # auth on, no key yet: asked before any call
    page.fill("#key-input", KEY)
    page.click("#key-save")
    expect(page.locator("#key-dialog")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('logtriage.apiKey')") == KEY
    return page, errors


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless system Chromium."""
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


WIDER_THAN = """width => [...document.querySelectorAll('body *')]
  .filter(e => e.getClientRects().length && e.getBoundingClientRect().right > width + 0.5)
  .map(e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + ' right=' + Math.round(e.getBoundingClientRect().right))"""


def assert_fits(page: Any, width: int) -> None:
    """Nothing on the page is wider than the screen; a failure names what sticks out."""
    sticking_out = page.evaluate(WIDER_THAN, width)
    assert page.evaluate("document.documentElement.scrollWidth") <= width, sticking_out
    assert sticking_out == []


def row_ids(page: Any) -> list[str]:
    return [str(i) for i in page.locator("#list li").evaluate_all("rows => rows.map(r => r.dataset.id)")]


def test_dashboard_walkthrough(
    browser: Any, live: LiveServer, api: httpx.Client, seeded: dict[str, Any], tmp_path: Path
) -> None:
    shots = tmp_path / "screens"
    shots.mkdir()
    page, errors = open_dashboard(browser, live, 1280, 900)

    # 1. the list: every stored detection, newest first, as the API lists them
    listed = api.get("/detections", params={"limit": 20}).json()
    expect(page.locator("#list li")).to_have_count(len(listed["items"]))
    assert row_ids(page) == [d["id"] for d in listed["items"]]
    expect(page.locator("#page-info")).to_have_text(f"1–{len(listed['items'])} of {listed['total']}")
    expect(page.locator("#h-ready")).to_have_text("ready")
    expect(page.locator("#h-queue")).to_contain_text("queue: 0 queued")
    expect(page.locator("#h-rate")).to_have_text(re.compile(r"^[1-9]\d* detections/min$"))
    page.screenshot(path=shots / "01-list.png")

    # 2. one explained anomaly: its lines in order, the top lines shaded, score and threshold, the explanation
    detail = seeded["explained"][0]
    page.click(f'#list li[data-id="{detail["id"]}"]')
    expect(page.locator("#d-sequence")).to_have_text(detail["sequence_id"])
    expect(page.locator("#d-lines li")).to_have_count(len(detail["log_entries"]))
    assert page.locator("#d-lines li").all_inner_texts() == detail["log_entries"]
    shaded = page.locator("#d-lines li.top")
    expect(shaded).to_have_count(len(detail["top_lines"]))
    for top in detail["top_lines"]:
        line = page.locator("#d-lines li").nth(top["index"])
        assert float(line.get_attribute("data-contribution") or "nan") == pytest.approx(top["contribution"])
    expect(page.locator("#d-score-text")).to_contain_text(f"threshold {detail['threshold']:.4f}: anomalous")
    expect(page.locator("#d-status")).to_have_text("done")
    e = detail["explanation"]
    expect(page.locator("#e-category")).to_contain_text(e["category"])
    expect(page.locator("#e-summary")).to_have_text(e["summary"])
    expect(page.locator("#e-response")).to_have_text(e["suggested_response"])
    expect(page.locator("#d-explain-now")).to_be_hidden()
    page.screenshot(path=shots / "02-detail.png")

    # 3. the keyboard: arrows move along the list, Enter opens
    ids = row_ids(page)
    page.locator("#list li").first.focus()
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowUp")
    assert page.evaluate("document.activeElement.dataset.id") == ids[1]
    page.keyboard.press("Enter")
    expect(page.locator("#detail")).to_have_attribute("data-id", ids[1])
    expect(page.locator(f'#list li[data-id="{ids[1]}"]')).to_have_attribute("aria-selected", "true")

    # 4. filters change the list, to what the API answers for them
    page.select_option("#f-service", "payments")
    payments = api.get("/detections", params={"service": "payments"}).json()
    expect(page.locator("#list li")).to_have_count(payments["total"])
    assert set(row_ids(page)) == {d["id"] for d in payments["items"]} and payments["total"] == 3
    page.check("#f-anomalous")
    flagged = api.get("/detections", params={"service": "payments", "anomalous_only": True}).json()
    expect(page.locator("#list li")).to_have_count(flagged["total"])
    page.select_option("#f-service", "")
    page.uncheck("#f-anomalous")
    category = e["category"]
    page.select_option("#f-category", category)
    by_category = api.get("/detections", params={"category": category}).json()
    expect(page.locator("#list li")).to_have_count(by_category["total"])
    assert set(row_ids(page)) == {d["id"] for d in by_category["items"]}
    page.screenshot(path=shots / "03-filtered.png")
    page.select_option("#f-category", "")
    expect(page.locator("#list li")).to_have_count(len(listed["items"]))
    page.select_option("#f-risk", "low")
    low = api.get("/detections", params={"risk": "low"}).json()
    expect(page.locator("#list li")).to_have_count(low["total"])
    assert set(page.locator("#list li").evaluate_all("rs => rs.map(r => r.dataset.risk)")) == {"low"}
    page.select_option("#f-risk", "")
    page.select_option("#f-range", "custom")
    page.fill("#f-since", "2099-01-01T00:00:00")
    expect(page.locator("#list li")).to_have_count(0)
    expect(page.locator("#list-summary")).to_have_text("No detection matches these filters.")
    page.select_option("#f-range", "900")  # the last 15 minutes: everything made in this test
    expect(page.locator("#list li")).to_have_count(len(listed["items"]))

    # 5. "Explain now" on the Chinese detection, in Chinese: queued, then the explanation appears
    chinese = seeded["chinese"]
    page.click(f'#list li[data-id="{chinese["id"]}"]')
    expect(page.locator("#detail")).to_have_attribute("data-id", chinese["id"])
    assert page.locator("#d-lines li").all_inner_texts() == CHINESE  # Chinese lines as sent
    expect(page.locator("#d-service")).to_have_text("支付服务")
    expect(page.locator("#d-status")).to_have_text("not requested")
    page.select_option("#d-lang", "zh")
    page.click("#d-explain")
    expect(page.locator("#e-category")).to_be_visible()
    stored = api.get(f"/detections/{chinese['id']}").json()
    assert stored["explanation"]["lang"] == "zh" and stored["job_status"] == "done"
    expect(page.locator("#d-status")).to_have_text("done")
    expect(page.locator("#d-explanation dl")).to_have_attribute("lang", "zh")
    expect(page.locator("#e-summary")).to_have_text(stored["explanation"]["summary"])
    expect(page.locator("#e-root-cause")).to_have_text(stored["explanation"]["root_cause"])
    page.screenshot(path=shots / "04-explained.png")

    # 6. a detection made elsewhere appears without a reload
    page.evaluate("window.__sameDocument = true")
    live_id = f"live-{uuid.uuid4().hex[:8]}"
    r = api.post("/detect", json={"sequences": [{"sequence_id": live_id, "log_entries": CHINESE[:2]}]})
    assert r.status_code == 200, r.text
    expect(page.locator("#list li .seq", has_text=live_id)).to_have_count(1)
    assert page.evaluate("window.__sameDocument") is True

    # 7. the chart counts what the timeline endpoint counts, by category
    timeline = api.get("/detections/timeline").json()
    total = sum(b["total"] for b in timeline["buckets"])
    assert total >= len(seeded["explained"])
    expect(page.locator("#chart")).to_have_attribute("data-total", str(total))
    counts = page.locator("#chart rect").evaluate_all("rs => rs.map(r => Number(r.dataset.count))")
    assert sum(counts) == total
    expect(page.locator("#legend li")).to_have_count(len(timeline["categories"]))
    page.screenshot(path=shots / "05-chart-and-live.png")

    # 8. paste lines and detect: the answer shows, the new detection is stored and listed
    page.fill("#detect-lines", "\n".join(CHINESE))
    page.fill("#detect-service", "form")
    page.select_option("#detect-mode", "fixed")
    page.fill("#detect-size", "2")
    page.select_option("#detect-explain", "never")
    page.click("#detect-submit")
    expect(page.locator("#detect-summary")).to_contain_text("2 scored")
    made = page.locator("#detect-result li").evaluate_all("rs => rs.map(r => r.dataset.id)")
    assert len(made) == 2
    for detection_id in made:
        assert api.get(f"/detections/{detection_id}").json()["service"] == "form"
        expect(page.locator(f'#list li[data-id="{detection_id}"]')).to_have_count(1)
    page.screenshot(path=shots / "06-detect-form.png", full_page=True)

    assert errors == []
    page.close()


def test_dashboard_on_a_phone(
    browser: Any, live: LiveServer, api: httpx.Client, seeded: dict[str, Any], tmp_path: Path
) -> None:
    page, errors = open_dashboard(browser, live, 390, 844, query="&page_size=5")
    total = api.get("/detections", params={"limit": 1}).json()["total"]
    assert total > 5
    expect(page.locator("#page-info")).to_have_text(f"1–5 of {total}")
    expect(page.locator("#newer")).to_be_disabled()
    page.click("#older")
    second = api.get("/detections", params={"limit": 5, "offset": 5}).json()["items"]
    expect(page.locator("#page-info")).to_have_text(f"6–{5 + len(second)} of {total}")
    assert row_ids(page) == [d["id"] for d in second]
    page.click("#newer")
    expect(page.locator("#page-info")).to_have_text(f"1–5 of {total}")
    # nothing wider than the screen, even a health chip naming a long model path (CI's paths are longer)
    assert_fits(page, 390)
    page.evaluate("document.getElementById('h-explainer').textContent = 'explainer /' + 'very-long-folder/'.repeat(12)")
    assert_fits(page, 390)
    page.screenshot(path=tmp_path / "phone-list.png")
    first = row_ids(page)[0]
    detail = api.get(f"/detections/{first}").json()
    page.locator(f'#list li[data-id="{first}"]').focus()
    page.keyboard.press("Enter")
    expect(page.locator("#d-sequence")).to_have_text(detail["sequence_id"])
    assert page.locator("#d-lines li").all_inner_texts() == detail["log_entries"]
    assert_fits(page, 390)
    page.screenshot(path=tmp_path / "phone-detail.png")
    # a wrong key is refused with the API's words, and the page asks again
    page.evaluate("sessionStorage.setItem('logtriage.apiKey', 'wrong')")
    page.select_option("#f-risk", "high")  # a filter change calls the API
    expect(page.locator("#key-dialog")).to_be_visible()
    expect(page.locator("#key-error")).to_have_text("invalid API key")
    # the refused call is the only console error: the browser logs every 401 response
    assert [e for e in errors if "401" not in e] == [] and len(errors) >= 1
    page.close()


def test_queued_explanation_shows_its_status(
    browser: Any, models: tuple[Any, Any], test_sequences: list[dict[str, Any]], tmp_path: Path
) -> None:
    """No worker in this process (they run elsewhere): "Explain now" queues the job, the view says so.
    Auth is off here: the page asks for no key."""
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'queued.db'}", workers=0)
    with LiveServer(create_app(settings, detector=models[0], explainer=models[1])) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            r = client.post("/detect", json={"sequences": pick(test_sequences, 1, 1), "explain": "never"})
            detection = r.json()["detections"][0]
        page, errors = open_dashboard(browser, server, 1100, 800, key=None)
        expect(page.locator("#key-button")).to_be_hidden()
        page.click(f'#list li[data-id="{detection["id"]}"]')
        expect(page.locator("#d-status")).to_have_text("not requested")
        page.click("#d-explain")
        expect(page.locator("#d-status")).to_have_text("queued")
        expect(page.locator("#d-explanation")).to_contain_text("The explanation is queued")
        expect(page.locator("#d-explain-now")).to_be_hidden()
        expect(page.locator("#h-queue")).to_have_text("queue: 1 queued, 0 running")
        page.screenshot(path=tmp_path / "queued.png")
        assert errors == []
        page.close()
