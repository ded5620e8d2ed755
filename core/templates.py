"""Template mining with Drain3: a stable integer template id per (normalized) log line.

State persists to a file (Drain3's own snapshot format) and reloads, so a model trained on
template ids sees the same ids at scoring time. Lines whose template was never seen map to
:data:`UNKNOWN_TEMPLATE` when mining is frozen (``learn=False``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from drain3 import TemplateMiner as _DrainMiner
from drain3.file_persistence import FilePersistence
from drain3.template_miner_config import TemplateMinerConfig

from core.normalize import Normalizer

UNKNOWN_TEMPLATE = 0
logging.getLogger("drain3").setLevel(logging.WARNING)


class TemplateMiner:
    """Drain3 behind a small interface: ``template_id(line)`` and ``templates``."""

    def __init__(
        self,
        state_path: str | Path | None = None,
        normalizer: Normalizer | None = None,
        sim_threshold: float = 0.4,
        depth: int = 4,
        max_clusters: int | None = None,
    ) -> None:
        config = TemplateMinerConfig()
        config.drain_sim_th = sim_threshold
        config.drain_depth = depth
        config.drain_max_clusters = max_clusters
        config.snapshot_interval_minutes = 10**6  # save only when asked
        config.snapshot_compress_state = False
        self.state_path = Path(state_path) if state_path else None
        persistence = None
        if self.state_path is not None:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            persistence = FilePersistence(str(self.state_path))
        self.normalizer = normalizer or Normalizer()
        self._miner = _DrainMiner(persistence, config)  # loads the state file if it exists

    def template_id(self, line: str, learn: bool = True) -> int:
        """The template id of a raw line (ids start at 1); unseen lines give 0 when not learning."""
        text = self.normalizer.normalize(line) or "<empty>"
        if learn:
            return int(self._miner.add_log_message(text)["cluster_id"])
        cluster = self._miner.match(text, full_search_strategy="fallback")
        return int(cluster.cluster_id) if cluster is not None else UNKNOWN_TEMPLATE

    def template_ids(self, lines: Iterable[str], learn: bool = True) -> list[int]:
        """Template ids of many lines."""
        return [self.template_id(line, learn) for line in lines]

    @property
    def templates(self) -> dict[int, str]:
        """Every mined template by id."""
        return {c.cluster_id: c.get_template() for c in self._miner.drain.clusters}

    @property
    def num_templates(self) -> int:
        """How many templates have been mined."""
        return len(self._miner.drain.clusters)

    def save(self, path: str | Path | None = None) -> Path:
        """Persist the mined state (to ``path`` or the state file given at construction)."""
        target = Path(path) if path else self.state_path
        if target is None:
            raise ValueError("no state path to save to")
        if target != self.state_path:
            self._miner.persistence_handler = FilePersistence(str(target))
            self.state_path = target
        target.parent.mkdir(parents=True, exist_ok=True)
        self._miner.save_state("manual")
        return target

    @classmethod
    def load(cls, path: str | Path, normalizer: Normalizer | None = None) -> TemplateMiner:
        """Reload a miner saved with :meth:`save`."""
        if not Path(path).exists():
            raise FileNotFoundError(path)
        return cls(state_path=path, normalizer=normalizer)
