"""The API views of stored rows: a detection and its explanation as the response models show them."""

from __future__ import annotations

from api.schemas import DetectionOut, ExplanationOut, LineContribution
from db.models import Detection


def detection_out(row: Detection, queued: bool = False) -> DetectionOut:
    """The API view of a stored detection."""
    return DetectionOut(
        id=row.id,
        sequence_id=row.sequence_id,
        score=row.score,
        is_anomaly=row.is_anomaly,
        risk_level=row.risk_level,  # type: ignore[arg-type]
        threshold=row.threshold,
        model_version=row.model_version,
        queued_for_explanation=queued,
        top_lines=[LineContribution(**t) for t in row.top_lines] if row.top_lines else None,
        cluster_id=row.cluster_id,
        cluster_description=row.cluster_description,
        service=row.service,
        category=row.explanation.category if row.explanation is not None else None,
        created_at=row.created_at,
    )


def explanation_out(row: Detection) -> ExplanationOut | None:
    """The API view of a detection's stored explanation."""
    e = row.explanation
    if e is None:
        return None
    return ExplanationOut(
        category=e.category,
        severity=e.severity,
        summary=e.summary,
        root_cause=e.root_cause,
        suggested_response=e.suggested_response,
        model=e.model,
        base=e.base,
        lang=e.lang,
        latency_ms=e.latency_ms,
        confidence=e.confidence,
    )
