"""Live session rules: keys, closing by idle time, length and end pattern, the cap, user regex timeouts."""

from __future__ import annotations

import time

import pytest

from core.errors import DataError
from core.sessions import LogRecord, Sessionizer, SessionKeys, SessionRules


def test_keys_trace_regex_and_service_window() -> None:
    keys = SessionKeys(SessionRules(window_seconds=60))
    assert keys.key_of(LogRecord("x", trace_id="ab" * 16)) == f"trace:{'ab' * 16}"
    assert keys.key_of(LogRecord("GET / trace_id=3189CF161793E5AE ok")) == "trace:3189cf161793e5ae"
    # no trace id: the service's window of the record's time
    assert keys.key_of(LogRecord("x", service="db", time=125.0)) == "svc:db@1970-01-01T00:02:00Z"
    hdfs = SessionKeys(SessionRules(key="regex", key_regex=r"(blk_-?\d+)"))
    assert hdfs.key_of(LogRecord("Receiving block blk_-1608999687919862906 src")) == "re:blk_-1608999687919862906"
    assert hdfs.key_of(LogRecord("no block", time=0)) == "svc:unknown_service@1970-01-01T00:00:00Z"
    with pytest.raises(DataError, match="needs a regex"):
        SessionKeys(SessionRules(key="regex"))
    with pytest.raises(DataError, match="invalid session key regex"):
        SessionKeys(SessionRules(key="regex", key_regex="(unclosed"))


def test_a_catastrophic_user_regex_times_out_instead_of_hanging() -> None:
    keys = SessionKeys(SessionRules(key="regex", key_regex=r"^(a|aa)+$", end_pattern=r"(x+x+)+y",
                                    regex_timeout_seconds=0.05))  # fmt: skip
    start = time.monotonic()
    assert keys.key_of(LogRecord("a" * 5000 + "b", service="s", time=0)).startswith("svc:s@")
    assert keys.ends("x" * 3000) is False
    assert time.monotonic() - start < 5 and keys.timeouts == 2


def test_sessionizer_closes_on_end_length_idle_and_cap() -> None:
    s = Sessionizer(SessionRules(key="regex", key_regex=r"req=(\w+)", idle_seconds=10, max_lines=3,
                                 end_pattern="DONE", max_open=2))  # fmt: skip
    assert s.add(LogRecord("req=a start"), now=0) == []
    closed = s.add(LogRecord("req=a DONE"), now=1)
    assert [(c.key, c.reason, c.lines) for c in closed] == [("re:a", "end", ["req=a start", "req=a DONE"])]
    for i in range(3):
        closed = s.add(LogRecord(f"req=b {i}"), now=2)
    assert [(c.key, c.reason, len(c.lines)) for c in closed] == [("re:b", "length", 3)]
    s.add(LogRecord("req=c 1"), now=3)
    s.add(LogRecord("req=d 1"), now=4)
    s.add(LogRecord("req=c 2"), now=5)  # c is now the most recently active
    closed = s.add(LogRecord("req=e 1"), now=6)  # over the cap of 2: the least recently active (d) closes
    assert [(c.key, c.reason) for c in closed] == [("re:d", "evicted")]
    assert s.expire(now=14) == []
    assert [(c.key, c.reason) for c in s.expire(now=15.5)] == [("re:c", "idle")]
    assert [(c.key, c.reason) for c in s.flush()] == [("re:e", "flush")]
    assert s.closed_by_reason == {"end": 1, "length": 1, "evicted": 1, "idle": 1, "flush": 1}
