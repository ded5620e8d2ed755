"""schemathesis hooks for the run of ``tests/api/test_schemathesis.py`` (``schemathesis.toml`` names them).

One rule of ``POST /detect`` relates two fields and so cannot be written in JSON Schema: a sliding
window's ``step`` is at most its ``size`` (the API answers 422 otherwise, as its description says).
Drawn bodies that break only that rule get ``step = size``; nothing else is changed or filtered.
Likewise ``GET /detections/timeline`` needs ``since`` before ``until``: a drawn ``until`` that is not
after ``since`` becomes ``since`` plus an hour.
"""

from __future__ import annotations

from typing import Any

import schemathesis


def _bounded_int(value: Any) -> bool:
    """An integer of JSON (2179.0 is one) within the schema's bounds."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and float(value).is_integer()
        and 1 <= value <= 10_000
    )


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    """A sliding window's step larger than its size becomes its size."""
    window = body.get("window") if isinstance(body, dict) else None
    if isinstance(window, dict) and window.get("type") == "sliding":
        size, step = window.get("size", 10), window.get("step")
        if _bounded_int(size) and _bounded_int(step) and step > size:
            window["step"] = size
    return body


@schemathesis.hook
def map_query(context: Any, query: Any) -> Any:
    """A timeline range drawn empty or backwards (until not after since) ends an hour after since."""
    if isinstance(query, dict) and isinstance(query.get("since"), str) and isinstance(query.get("until"), str):
        from datetime import datetime, timedelta

        try:
            since, until = datetime.fromisoformat(query["since"]), datetime.fromisoformat(query["until"])
            backwards = since >= until
        except (ValueError, TypeError):  # not comparable (naive vs aware, or not a date): leave it to the API
            backwards = False
        if backwards:
            query["until"] = (since + timedelta(hours=1)).isoformat()
    return query
