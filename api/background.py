"""Background tasks of the service: a named task started once and cancelled on stop (:class:`BackgroundTask`),
and the polling loop of the alert dispatcher and the live-session closer (:class:`Poller`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the micro-batcher imports this module on the CLIs' start path: nothing heavy at import
    from api.outage import OutageLog


class BackgroundTask:
    """``run()`` as one named asyncio task: ``start()`` starts it (once), ``stop()`` cancels it and waits."""

    def __init__(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.name = name
        self.run = run
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Started and not stopped."""
        return self._task is not None

    def start(self) -> None:
        """Run the task (inside the running loop); a second start while it runs does nothing."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=self.name)

    async def stop(self) -> None:
        """Cancel the task and wait for it to end."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class Poller(BackgroundTask):
    """Calls ``work()`` (it returns how many items it handled) in a background task: again at once after a full
    batch (``batch`` items or more), else after ``wake()`` or ``poll_seconds``. An outage (an error
    ``is_outage`` recognises, e.g. :func:`db.errors.is_database_outage`) is logged through ``outage`` (once when
    it starts, once when it ends), any other error with its traceback each time (``failure`` says whose); the
    loop lives on."""

    def __init__(
        self,
        name: str,
        work: Callable[[], Awaitable[int]],
        batch: int,
        poll_seconds: float,
        outage: OutageLog,
        is_outage: Callable[[BaseException], bool],
        logger: logging.Logger,
        failure: str,
    ) -> None:
        super().__init__(name, self._loop)
        self.work = work
        self.batch = batch
        self.poll_seconds = poll_seconds
        self.outage = outage
        self.is_outage = is_outage
        self.logger = logger
        self.failure = failure
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Look now instead of at the next poll."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                handled = await self.work()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep the loop alive: a database outage is logged once, a bug each time
                if self.is_outage(exc):
                    self.outage.failed(exc)
                else:
                    self.logger.exception(self.failure)
                handled = 0
            else:
                self.outage.ok()
            if handled >= self.batch:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
