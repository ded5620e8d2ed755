"""FastAPI dependencies as ``Annotated`` aliases: the session, the models, the settings.

Every dependency is ``async``: FastAPI runs a plain ``def`` dependency in a thread pool, a hop per
dependency per request that cost the served path more than the lookups themselves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.ext.asyncio import AsyncSession

from api.metrics import Metrics
from api.services import DetectorService, ExplainerService
from api.worker import ExplainWorker
from core.settings import Settings


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One database session per request."""
    async with request.app.state.db.session() as session:
        yield session


async def get_settings(request: Request) -> Settings:
    """The app's settings."""
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_detector(request: Request) -> DetectorService:
    """The loaded detector, or 503 while there is none."""
    service: DetectorService | None = request.app.state.detector
    if service is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the detector is not loaded (see GET /ready)")
    return service


async def get_explainer(request: Request) -> ExplainerService | None:
    """The loaded explainer, if this process has one."""
    return request.app.state.explainer  # type: ignore[no-any-return]


async def get_metrics(request: Request) -> Metrics:
    """The app's metrics."""
    return request.app.state.metrics  # type: ignore[no-any-return]


async def get_workers(request: Request) -> list[ExplainWorker]:
    """The in-process explanation workers (possibly none)."""
    return request.app.state.workers  # type: ignore[no-any-return]


SessionDep = Annotated[AsyncSession, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
DetectorDep = Annotated[DetectorService, Depends(get_detector)]
ExplainerDep = Annotated[ExplainerService | None, Depends(get_explainer)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
WorkersDep = Annotated[list[ExplainWorker], Depends(get_workers)]
