"""Storage for detections, explanations and the explanation job queue (async SQLAlchemy 2).

``db`` imports no ML code. Entry points:

- :mod:`db.session`: ``make_engine``, ``make_sessionmaker`` and the ``Database`` holder;
- :mod:`db.migrate`: ``upgrade`` / ``upgrade_to_head`` (also ``python -m db.migrate upgrade``);
- :mod:`db.crud`: detections and explanations;
- :mod:`db.queue`: the job queue (``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL).
"""

from db.models import Detection, Explanation, ExplanationJob, JobStatus
from db.session import Database, make_engine, make_sessionmaker, normalize_url

__all__ = [
    "Database",
    "Detection",
    "Explanation",
    "ExplanationJob",
    "JobStatus",
    "make_engine",
    "make_sessionmaker",
    "normalize_url",
]
