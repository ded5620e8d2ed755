"""FastAPI dependencies as ``Annotated`` aliases: what a route needs of the app, and the one way it gets it.

The app keeps its parts on ``app.state`` (set by :func:`api.main.create_app` and its lifespan); routes
take them through these aliases and never read ``app.state`` themselves. Every dependency is ``async``:
FastAPI runs a plain ``def`` dependency in a thread pool, a hop per dependency per request that cost the
served path more than the lookups themselves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.ext.asyncio import AsyncSession

from api.detecting import wake_consumers
from api.live import LiveSessions
from api.metrics import Metrics
from api.outage import OutageLog
from api.services import DetectorService, ExplainerService
from core.settings import Settings
from db.session import Database


async def get_database(request: Request) -> Database:
    """The app's database (sessions of its own, for a route that outlives one transaction)."""
    return request.app.state.db  # type: ignore[no-any-return]


async def get_session(database: Annotated[Database, Depends(get_database)]) -> AsyncIterator[AsyncSession]:
    """One database session per request."""
    async with database.session() as session:
        yield session


async def get_settings(request: Request) -> Settings:
    """The app's settings."""
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_metrics(request: Request) -> Metrics:
    """The app's metrics."""
    return request.app.state.metrics  # type: ignore[no-any-return]


async def get_loaded_detector(request: Request) -> DetectorService | None:
    """The detector, or None while it loads."""
    return request.app.state.detector  # type: ignore[no-any-return]


async def get_detector(
    service: Annotated[DetectorService | None, Depends(get_loaded_detector)],
) -> DetectorService:
    """The loaded detector, or 503 while there is none."""
    if service is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the detector is not loaded (see GET /ready)")
    return service


async def get_explainer(request: Request) -> ExplainerService | None:
    """The loaded explainer, if this process has one."""
    return request.app.state.explainer  # type: ignore[no-any-return]


async def get_live(request: Request) -> LiveSessions | None:
    """The live sessions, or None while the detector loads."""
    return request.app.state.live  # type: ignore[no-any-return]


async def get_database_outage(request: Request) -> OutageLog | None:
    """The log of the database outages the routes answered 503 for."""
    return getattr(request.app.state, "db_outage", None)


async def get_wake(request: Request) -> Callable[[], None]:
    """``wake()``: work was queued, the in-process explanation workers and the alert dispatcher look now."""
    state = request.app.state
    return partial(wake_consumers, state.workers, state.alerts)


DatabaseDep = Annotated[Database, Depends(get_database)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
LoadedDetectorDep = Annotated[DetectorService | None, Depends(get_loaded_detector)]
DetectorDep = Annotated[DetectorService, Depends(get_detector)]
ExplainerDep = Annotated[ExplainerService | None, Depends(get_explainer)]
LiveDep = Annotated[LiveSessions | None, Depends(get_live)]
DatabaseOutageDep = Annotated[OutageLog | None, Depends(get_database_outage)]
WakeDep = Annotated[Callable[[], None], Depends(get_wake)]
