"""Storage for detections, explanations and the explanation job queue (async SQLAlchemy 2).

``db`` imports no ML code. Entry points:

- :mod:`db.engine`: ``make_engine`` (SQLite or PostgreSQL) and ``normalize_url``;
- :mod:`db.session`: ``make_sessionmaker`` and the ``Database`` holder (``Database.upgrade`` migrates);
- :mod:`db.migrate`: ``upgrade`` / ``upgrade_to_head`` (also ``python -m db.migrate upgrade``);
- :mod:`db.crud`: detections and explanations;
- :mod:`db.queue`: the job queue (``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL).
"""

from db.engine import make_engine, normalize_url
from db.models import Detection, Explanation, ExplanationJob, JobStatus
from db.session import Database, make_sessionmaker

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
