"""The two model tiers behind small async facades the routes and the worker share.

Both models load once (in the lifespan); every model call runs in a worker thread so the event
loop keeps serving. Detection is micro-batched across concurrent requests; explanations run as
many at a time as the explainer allows (``max_concurrency``: one for a model in this process, whose
calls would only thrash the CPU, many for an OpenAI-compatible server, which batches them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from api.batching import MicroBatcher
from api.llm_health import LLMHealth
from api.metrics import Metrics
from core.settings import Settings
from small_model.detection import risk_level
from small_model.detector import Detector

log = logging.getLogger(__name__)


class Clusterer(Protocol):
    """What the service needs of a cluster model (``logtriage cluster``): a category per anomaly."""

    def predict(self, sequences: list[list[str]]) -> list[tuple[int, str]]: ...


class Explainer(Protocol):
    """What the service needs of an explainer (in process or an OpenAI-compatible server)."""

    def explain(self, log_entries: list[str], lang: str = "en", context: dict[str, Any] | None = None) -> Any: ...


@dataclass
class Verdict:
    """The detector's answer for one sequence."""

    score: float
    is_anomaly: bool
    risk_level: str
    threshold: float
    model_version: str
    top_lines: list[dict[str, Any]] | None = None
    cluster_id: int | None = None
    cluster_description: str | None = None


class DetectorService:
    """Scores sequences through a micro-batcher; explains anomalies' top lines."""

    def __init__(
        self,
        detector: Detector,
        settings: Settings,
        metrics: Metrics,
        top_k: int = 3,
        clusterer: Clusterer | None = None,
    ) -> None:
        self.detector = detector
        self.clusterer = clusterer
        self.metrics = metrics
        self.top_k = top_k
        # a detector that gives each line's contribution from the passes of its score (MoE-BERT, label-free)
        self._with_lines = callable(getattr(detector, "score_with_lines", None))
        self.batcher: MicroBatcher[list[str], tuple[float, list[float] | None]] = MicroBatcher(
            self._score_batch, settings.batch_window_ms, settings.max_batch_size, settings.batching
        )

    @property
    def version(self) -> str:
        """The loaded detector's version id."""
        return str(self.detector.version)

    @property
    def profile(self) -> str | None:
        """The training budget of the loaded detector (``full`` or ``quick``); None where it records none (DeepLog)."""
        profile = getattr(self.detector, "profile", None)
        return str(profile) if profile is not None else None

    def _score_batch(self, sequences: list[list[str]]) -> list[tuple[float, list[float] | None]]:
        """Scores, with each flagged sequence's line contributions: from the score's own passes where the
        detector's score has them (a fused MoE-BERT), else from one more pass over the batch's flagged
        sequences together (None for the others)."""
        self.metrics.batch_size.observe(len(sequences))
        if self._with_lines:
            scores, lines = self.detector.score_with_lines(sequences)  # type: ignore[attr-defined]
            if lines is not None:
                return [(float(s), c) for s, c in zip(scores, lines, strict=True)]
        else:
            scores = self.detector.score(sequences)
        out: list[tuple[float, list[float] | None]] = [(float(s), None) for s in scores]
        threshold = float(self.detector.threshold)
        flagged = [i for i, (s, _) in enumerate(out) if s >= threshold and len(sequences[i]) > 1]
        if flagged:
            contributions = self.detector.line_contributions_many([sequences[i] for i in flagged])
            for i, c in zip(flagged, contributions, strict=True):
                out[i] = (out[i][0], c)
        return out

    def _top_lines(self, lines: list[str], contributions: list[float]) -> list[dict[str, Any]]:
        order = sorted(range(len(lines)), key=lambda i: contributions[i], reverse=True)[: self.top_k]
        return [{"index": i, "line": lines[i], "contribution": float(contributions[i])} for i in order]

    async def detect(self, sequences: list[list[str]]) -> list[Verdict]:
        """Score each sequence; anomalies also get the lines that raised their score most."""
        start = time.perf_counter()
        scored = await self.batcher.submit(sequences)
        self.metrics.detect_duration.observe(time.perf_counter() - start)
        threshold = float(self.detector.threshold)
        verdicts = [Verdict(s, s >= threshold, risk_level(s, threshold), threshold, self.version) for s, _ in scored]
        for verdict, lines, (_, contributions) in zip(verdicts, sequences, scored, strict=True):
            if verdict.is_anomaly and len(lines) > 1 and contributions is not None:
                verdict.top_lines = self._top_lines(lines, contributions)
        flagged = [i for i, v in enumerate(verdicts) if v.is_anomaly]
        if self.clusterer is not None and flagged:
            clusters = await asyncio.to_thread(self.clusterer.predict, [sequences[i] for i in flagged])
            for i, (cluster_id, description) in zip(flagged, clusters, strict=True):
                verdicts[i].cluster_id, verdicts[i].cluster_description = int(cluster_id), description
        self.metrics.sequences.inc(len(sequences))
        self.metrics.anomalies.inc(sum(v.is_anomaly for v in verdicts))
        return verdicts


T = TypeVar("T")


async def run_in_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a daemon thread: a caller that stops waiting (shutdown) does not keep the process alive.

    ``asyncio.to_thread`` uses the loop's executor, which ``asyncio.run`` and the interpreter join at
    exit: a stopping worker would wait for an LLM call it has already given back.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():  # the caller stopped waiting
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def target() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as exc:
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name=f"explain-{getattr(fn, '__name__', 'call')}", daemon=True).start()
    return await future


class ExplainerService:
    """Runs the explainer off the event loop, ``concurrency`` calls at a time, behind the LLM backend's circuit."""

    def __init__(self, explainer: Explainer, metrics: Metrics, settings: Settings | None = None) -> None:
        self.explainer = explainer
        self.metrics = metrics
        # a model in this process runs one call at a time; an OpenAI-compatible server many (it batches them)
        self.concurrency = max(1, int(getattr(explainer, "max_concurrency", 1) or 1))
        self._slots = asyncio.Semaphore(self.concurrency)
        self.health = LLMHealth(
            settings.job_backoff_seconds if settings is not None else 5.0,
            settings.job_backoff_max_seconds if settings is not None else 600.0,
        )

    @property
    def model_name(self) -> str:
        """The explainer's model name (artifact folder or served model)."""
        return str(getattr(self.explainer, "name", None) or type(self.explainer).__name__)

    def slot(self) -> asyncio.Semaphore:
        """``async with service.slot():`` one of the ``concurrency`` calls; the worker holds it from the lease
        of a job to its end, so a process never leases a job that cannot run yet."""
        return self._slots

    async def explain(
        self, lines: list[str], lang: str, context: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], float]:
        """The validated explanation as a dict, and the seconds it took (the caller holds a ``slot()``)."""
        start = time.perf_counter()
        explanation = await run_in_daemon_thread(self.explainer.explain, lines, lang, context)
        elapsed = time.perf_counter() - start
        self.metrics.explain_seconds.observe(elapsed)
        data = explanation.model_dump() if hasattr(explanation, "model_dump") else dict(explanation)
        return data, elapsed
