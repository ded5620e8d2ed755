"""The LLM backend's state as one process sees it: a circuit breaker in front of the explainer.

Closed (``ok``): workers take jobs as they come. A call that fails because the backend cannot answer
(:class:`core.errors.BackendUnavailable`: refused, timed out, 5xx, 429) opens it (``down``): no worker
of the process takes a job until the delay passes (``LOGTRIAGE_JOB_BACKOFF_SECONDS``, doubled with
each failed probe up to ``LOGTRIAGE_JOB_BACKOFF_MAX_SECONDS``), so queued jobs wait in the queue
instead of spending their tries. Then one worker probes the backend with one job: success closes
the circuit, another outage error opens it for the next delay. ``/ready`` reports the state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from db.base import utcnow

log = logging.getLogger(__name__)


class LLMHealth:
    """Circuit breaker over the LLM backend: ``acquire`` before a call, then ``succeeded`` or ``failed``."""

    def __init__(
        self, base_seconds: float = 5.0, max_seconds: float = 600.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.base_seconds = base_seconds
        self.max_seconds = max_seconds
        self.clock = clock
        self.failures = 0  # consecutive calls that found the backend unavailable
        self.last_error: str | None = None
        self.last_ok: datetime | None = None
        self.down_since: datetime | None = None
        self._open_until = 0.0
        self._probing = False

    @property
    def state(self) -> str:
        """``unknown`` (no call yet), ``ok``, or ``down`` (the circuit is open or a probe is out)."""
        if self.failures:
            return "down"
        return "ok" if self.last_ok is not None else "unknown"

    def retry_in(self) -> float:
        """Seconds until the next probe may go (0 when calls may go now)."""
        return max(0.0, self._open_until - self.clock()) if self.failures else 0.0

    def acquire(self) -> tuple[float, bool]:
        """``(0, probe)`` when the caller may call the backend now (``probe``: it is the one probe of an
        outage, and must end with ``succeeded``, ``failed`` or ``release_probe``); else ``(seconds to wait, False)``."""
        if not self.failures:
            return 0.0, False
        wait = self.retry_in()
        if wait > 0:
            return wait, False
        if self._probing:  # another worker is probing: look again shortly
            return min(1.0, self.base_seconds), False
        self._probing = True
        return 0.0, True

    def release_probe(self) -> None:
        """The probe ended without a verdict (no job to probe with, or cancelled)."""
        self._probing = False

    def succeeded(self) -> None:
        """The backend answered."""
        if self.failures:
            log.warning("LLM backend back after %d failed calls; explanation jobs resume", self.failures)
        self.failures, self._probing, self.down_since = 0, False, None
        self.last_ok = utcnow()

    def failed(self, exc: BaseException) -> float:
        """The backend could not answer: open the circuit; the seconds until the next probe."""
        self.failures += 1
        self._probing = False
        delay = min(self.max_seconds, self.base_seconds * 2 ** (self.failures - 1))
        self._open_until = self.clock() + delay
        self.last_error = str(exc)[:500]
        if self.failures == 1:
            self.down_since = utcnow()
            log.warning(
                "LLM backend unavailable: %s; explanation jobs wait in the queue, probing again in %.0f s "
                "(then up to every %.0f s; logged once until it is back)",
                self.last_error,
                delay,
                self.max_seconds,
            )
        else:
            log.debug("LLM backend still unavailable (%d failed calls), next probe in %.0f s", self.failures, delay)
        return delay

    def report(self) -> dict[str, Any]:
        """The state for ``/ready``."""
        return {
            "state": self.state,
            "failures": self.failures,
            "last_error": self.last_error if self.failures else None,
            "down_since": self.down_since,
            "retry_in_seconds": round(self.retry_in(), 1) if self.failures else None,
        }
