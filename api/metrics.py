"""Prometheus metrics of one app instance (its own registry, so tests can build many apps)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Metrics:
    """Counters and histograms that the routes and the worker update."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "logtriage_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "logtriage_http_request_seconds",
            "HTTP request latency",
            ["route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.sequences = Counter("logtriage_sequences_scored_total", "sequences scored", registry=self.registry)
        self.anomalies = Counter("logtriage_anomalies_total", "sequences flagged anomalous", registry=self.registry)
        # the category is known once the explainer has named it: flagged sequences counted then, by category
        self.explained_anomalies = Counter(
            "logtriage_explained_anomalies_total",
            "flagged sequences explained, by the explanation's category",
            ["category"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "logtriage_detect_batch_size",
            "sequences per model call",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.explanations = Counter(
            "logtriage_explanations_total", "explanation jobs finished", ["status"], registry=self.registry
        )
        self.explain_seconds = Histogram(
            "logtriage_explain_seconds",
            "time to explain one detection",
            registry=self.registry,
            buckets=(0.1, 0.5, 1, 2, 5, 10, 20, 60),
        )
        self.queue_depth = Gauge(
            "logtriage_explain_queue", "explanation jobs by status", ["status"], registry=self.registry
        )
        self.detect_duration = Histogram(
            "logtriage_detect_duration_seconds",
            "time to score one batch of sequences (queueing for the batch included)",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.otlp_records = Counter(
            "logtriage_otlp_log_records_total",
            "OTLP log records received, by outcome (accepted, rejected, truncated: a body cut to the line limit)",
            ["outcome"],
            registry=self.registry,
        )
        self.otlp_throttled = Counter(
            "logtriage_otlp_throttled_total",
            "OTLP requests answered 429 or 503 (with Retry-After)",
            ["status"],
            registry=self.registry,
        )
        self.sessions_open = Gauge("logtriage_sessions_open", "live sessions open", registry=self.registry)
        self.sessions_closed = Counter(
            "logtriage_sessions_closed_total",
            "live sessions closed and scored, by reason (idle, length, end, evicted: over the cap, oldest first)",
            ["reason"],
            registry=self.registry,
        )
        self.regex_timeouts = Counter(
            "logtriage_session_regex_timeouts_total",
            "session key or end-pattern matches abandoned after the regex timeout",
            registry=self.registry,
        )
        self.alerts = Counter(
            "logtriage_alerts_total",
            "alert deliveries by sink and outcome (sent, retry, failed: out of attempts)",
            ["sink", "outcome"],
            registry=self.registry,
        )
        self.alert_queue = Gauge(
            "logtriage_alert_deliveries", "alert deliveries by status", ["status"], registry=self.registry
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware counting requests by method, route and status, and timing them by route.

    Plain ASGI rather than ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware`` runs each
    request through an extra task and a streamed response, a measurable share of a small request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # an app that raises before answering counts as a server error

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)
