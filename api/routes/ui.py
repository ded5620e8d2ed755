"""``GET /ui``: the operators' dashboard, a static page (HTML, JS, CSS in ``api/ui``) over the API.

The page itself is open, like the docs; every API call it makes carries the key the operator
entered (kept in the browser's session storage). Nothing is fetched from outside the service.
"""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from api.deps import SettingsDep

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
# the page runs only its own files: no inline script, nothing from another origin
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)

router = APIRouter(tags=["dashboard"])
static = StaticFiles(directory=UI_DIR)


@cache
def _template() -> str:
    return (UI_DIR / "index.html").read_text(encoding="utf-8")


@router.get("/ui", response_class=HTMLResponse, include_in_schema=False)  # a page, like /docs: not an API operation
async def dashboard(request: Request, settings: SettingsDep) -> HTMLResponse:
    """The dashboard page; it tells the script whether the API asks for a key."""
    page = _template().replace("{{AUTH_REQUIRED}}", "true" if settings.api_keys else "false")
    page = page.replace("{{VERSION}}", html.escape(request.app.version))
    return HTMLResponse(
        page,
        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/ui/", include_in_schema=False)
async def dashboard_slash() -> RedirectResponse:
    """``/ui/`` is ``/ui``."""
    return RedirectResponse("/ui")
