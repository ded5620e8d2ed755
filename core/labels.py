"""The anomaly categories and severities every part names: data_gen writes them, the explainer chooses among them."""

from __future__ import annotations

ANOMALY_TYPES: tuple[str, ...] = (
    "timeout",
    "connection_failure",
    "database_error",
    "service_call_failure",
    "resource_exhaustion",
    "permission_error",
    "missing_step",
    "out_of_order",
    "retry_storm",
    "latency_spike",
)
SEVERITIES: tuple[str, ...] = ("low", "medium", "high", "critical")
# the category of an anomaly unlike the known ones: taught by real-log rows, or chosen when the
# category's confidence is below the threshold calibrated on held-out data (explainer.json)
OTHER = "other"
