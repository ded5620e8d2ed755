"""DeepLog-style baseline (Du et al., CCS 2017): an LSTM predicts the next Drain3 template id.

    OMP_WAIT_POLICY=PASSIVE logtriage train-small --model deeplog --train data/splits/train_normal.json \
        --val data/splits/val.json --out artifacts/deeplog

Each line of a sequence becomes a template id (``core.templates``, Drain3 over normalized lines).
For every position the model sees the ``window`` previous ids (the start padded) and predicts the
next one; with ``predict_end`` it also predicts an end-of-sequence marker after the last line, so a
sequence that stops early is caught too. A position is a *miss* when the true next id is not among
the ``top_g`` most probable ones; a template never seen in training is always a miss.

Decision (the classic DeepLog rule): a sequence is anomalous when any position is a miss.
Score in [0, 1] (continuous, for ROC-AUC), lexicographic in (miss, surprise)::

    score = 0.5 * [any miss] + 0.5 * (1 - exp(-mean_nll / nll_scale))

where ``mean_nll`` is the mean negative log-likelihood of the true next ids of the sequence (an
unknown template counts ``nll_cap``). Every sequence with a miss scores at or above 0.5 and every
sequence without one below, so the threshold 0.5 *is* the classic rule; inside each group the
sequences are ranked by their mean surprise. (On the synthetic hard validation split the mean
NLL ranked better than the max NLL or the miss fraction: ROC-AUC 0.99 against 0.96-0.97.)

DeepLog learns without labels: both training modes fit the LSTM on the normal (label 0) and
unlabeled sequences of the training file and drop those labeled anomalous. Labels are used only
on the validation file: to pick ``top_g`` and the best-F1 threshold. Without validation labels
the threshold stays at 0.5 (the classic rule) with the configured ``top_g``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from core.errors import DataError, ModelError
from core.io import write_json
from core.normalize import Normalizer
from core.schema import SequenceRecord
from core.templates import UNKNOWN_TEMPLATE, TemplateMiner
from small_model.common import weights_digest
from small_model.config import DeepLogConfig
from small_model.detection import Detection
from small_model.detector import DetectorKind
from small_model.metrics import best_f1_threshold, roc_auc

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DRAIN_NAME = "drain3_state.json"
NORMALIZER_NAME = "normalizer.json"
METRICS_NAME = "metrics.json"
# model vocabulary: template id t >= 1 is index t + 2; the unknown template (0) lands on UNK = 2
PAD, END, UNK = 0, 1, 2
OFFSET = 2
SequencesLike = Sequence[SequenceRecord] | Sequence[Sequence[str]] | Sequence[Mapping[str, Any]]


# ----------------------------------------------------------------------------- model


@dataclass
class DeepLogOutput:
    """Next-id logits, the (weighted) cross-entropy when targets were given, the top LSTM state."""

    logits: torch.Tensor  # (B, V)
    hidden: torch.Tensor  # (B, H)
    loss: torch.Tensor | None = None


class DeepLogLSTM(nn.Module):
    """Embedding -> stacked LSTM -> linear over the template vocabulary."""

    def __init__(self, config: DeepLogConfig) -> None:
        super().__init__()
        if config.vocab_size <= OFFSET:
            raise ValueError("vocab_size must count the templates plus pad, end and unknown")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embedding_dim, padding_idx=PAD)
        self.lstm = nn.LSTM(
            config.embedding_dim,
            config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(
        self, history: torch.Tensor, targets: torch.Tensor | None = None, weights: torch.Tensor | None = None
    ) -> DeepLogOutput:
        """Predict the id after each history window; ``loss`` is the (count-weighted) mean cross-entropy."""
        x = self.embed(history)  # (B, h, E)
        out, _ = self.lstm(x)  # (B, h, H)
        hidden = out[:, -1]  # (B, H)
        logits = self.head(hidden)  # (B, V)
        loss = None
        if targets is not None:
            ce = F.cross_entropy(logits.float(), targets, reduction="none")  # (B,)
            loss = ce.mean() if weights is None else (ce * weights).sum() / weights.sum().clamp_min(1e-12)
        return DeepLogOutput(logits=logits, hidden=hidden, loss=loss)


# ----------------------------------------------------------------------------- data helpers


def as_sequences(data: SequencesLike, normal_only: bool = False) -> list[list[str]]:
    """Lines of each record (or raw line lists); ``normal_only`` drops records labeled anomalous."""
    out: list[list[str]] = []
    for item in data:
        if isinstance(item, SequenceRecord):
            if normal_only and item.label == 1:
                continue
            out.append(list(item.log_entries))
        elif isinstance(item, Mapping):
            if normal_only and item.get("label") == 1:
                continue
            out.append([str(x) for x in item.get("log_entries", [])])
        else:
            out.append([str(x) for x in item])
    return out


def windows(ids: Sequence[int], window: int, predict_end: bool) -> tuple[np.ndarray, np.ndarray]:
    """History windows (P, window) and next ids (P,) of one id sequence (model indices), start padded."""
    padded = [PAD] * window + list(ids)
    targets = [*ids, END] if predict_end else list(ids)
    hist = np.array([padded[t : t + window] for t in range(len(targets))], dtype=np.int64).reshape(-1, window)
    return hist, np.asarray(targets, dtype=np.int64)


@dataclass
class PositionStats:
    """Per predicted position of many sequences: which sequence, the true id's rank and NLL."""

    seq: np.ndarray  # (N,) sequence index
    line: np.ndarray  # (N,) 0-based line index of the target (the end marker: len(lines))
    rank: np.ndarray  # (N,) how many ids the model found more probable than the true one
    nll: np.ndarray  # (N,) -log p(true id); nll_cap for an unknown template
    unknown: np.ndarray  # (N,) bool: the true line's template was never seen
    hidden: np.ndarray  # (N, H) top LSTM state of each position's window
    num_sequences: int = 0


# ----------------------------------------------------------------------------- detector


@dataclass
class Calibration:
    """The decision: threshold on the score, where it came from, and the validation search."""

    threshold: float = 0.5
    threshold_source: str = "classic"  # classic (any miss) | validation (best F1)
    search: list[dict[str, float]] = field(default_factory=list)


class DeepLogDetector:
    """Template mining + next-template LSTM + decision rule, saved and loaded as one folder."""

    kind: DetectorKind = "deeplog"

    def __init__(
        self,
        config: DeepLogConfig | None = None,
        normalizer: Normalizer | None = None,
        miner: TemplateMiner | None = None,
        model: DeepLogLSTM | None = None,
        calibration: Calibration | None = None,
        metrics: dict[str, Any] | None = None,
        version: str | None = None,
        batch_size: int = 1024,
    ) -> None:
        self.config = config or DeepLogConfig()
        self.normalizer = normalizer or Normalizer()
        self.miner = miner
        self.model = model.eval() if model is not None else None
        self.calibration = calibration or Calibration()
        self.metrics = metrics or {}
        self._version = version
        self.batch_size = batch_size
        self._cache: dict[str, int] = {}
        self.history: list[float] = []

    # ------------------------------------------------------------------------- properties

    @property
    def threshold(self) -> float:
        """Scores at or above this are anomalies (0.5 is the classic any-miss rule)."""
        return float(self.calibration.threshold)

    @property
    def version(self) -> str:
        """The version id stamped when the artifact was saved."""
        return self._version or "unsaved"

    @property
    def num_templates(self) -> int:
        """How many templates the model knows."""
        return max(0, self.config.vocab_size - OFFSET - 1)

    def _require(self) -> tuple[DeepLogLSTM, TemplateMiner]:
        if self.model is None or self.miner is None:
            raise ModelError("DeepLog detector is not trained: call fit() or from_pretrained()")
        return self.model, self.miner

    # ------------------------------------------------------------------------- templates

    def template_ids(self, sequences: Sequence[Sequence[str]]) -> list[list[int]]:
        """Model indices of every line with the mining frozen (unknown templates give ``UNK``)."""
        _, miner = self._require()
        if len(self._cache) > 200_000:
            self._cache.clear()
        out = []
        for lines in sequences:
            ids = []
            for line in lines:
                tid = self._cache.get(line)
                if tid is None:
                    tid = self._cache[line] = miner.template_id(line, learn=False)
                ids.append(tid + OFFSET if tid != UNKNOWN_TEMPLATE and tid + OFFSET < self.config.vocab_size else UNK)
            out.append(ids)
        return out

    # ------------------------------------------------------------------------- training

    def fit(self, data: SequencesLike, progress: bool = True) -> DeepLogDetector:
        """Mine templates and train the LSTM on the normal/unlabeled sequences of ``data``."""
        cfg = self.config
        sequences = [s for s in as_sequences(data, normal_only=True) if s]
        if not sequences:
            raise DataError("no normal or unlabeled sequences to train DeepLog on")
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        miner = TemplateMiner(normalizer=self.normalizer, sim_threshold=cfg.drain_sim_threshold, depth=cfg.drain_depth)
        for lines in tqdm(sequences, desc="deeplog: mining templates", disable=not progress, leave=False):
            miner.template_ids(lines, learn=True)
        max_id = max(miner.templates) if miner.templates else 0
        cfg.vocab_size = max_id + OFFSET + 1
        self.miner, self._cache, self._version = miner, {}, None
        model = DeepLogLSTM(cfg)
        self.model = model
        ids = self.template_ids(sequences)  # frozen pass: training sees exactly what scoring will see

        hists, targets = zip(*(windows(x, cfg.window, cfg.predict_end) for x in ids), strict=True)
        hist = np.concatenate(hists)
        tgt = np.concatenate(targets)
        rows = np.concatenate([hist, tgt[:, None]], axis=1)  # (N, h + 1)
        if cfg.dedupe:
            rows, counts = np.unique(rows, axis=0, return_counts=True)
        else:
            counts = np.ones(len(rows), dtype=np.int64)
        x_all = torch.from_numpy(rows[:, :-1].copy())
        y_all = torch.from_numpy(rows[:, -1].copy())
        w_all = torch.from_numpy(counts.astype(np.float32))
        logger.info(
            "deeplog: %d sequences, %d templates, %d windows (%d unique)", len(ids), len(miner.templates), len(tgt),
            len(rows),
        )  # fmt: skip

        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        model.train()
        self.history = []
        bar = tqdm(range(cfg.epochs), desc="deeplog: training", disable=not progress)
        for _ in bar:
            order = torch.randperm(len(y_all), generator=gen)
            total, weight = 0.0, 0.0
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                out = model(x_all[idx], y_all[idx], w_all[idx])
                assert out.loss is not None
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                opt.step()
                batch_w = float(w_all[idx].sum())
                total += float(out.loss.detach()) * batch_w
                weight += batch_w
            epoch_loss = total / max(weight, 1e-12)
            self.history.append(epoch_loss)
            bar.set_postfix(loss=f"{epoch_loss:.4f}")
        model.eval()
        self.calibration = Calibration()
        return self

    # ------------------------------------------------------------------------- raw statistics

    @torch.inference_mode()
    def position_stats(self, sequences: Sequence[Sequence[str]]) -> PositionStats:
        """Rank and NLL of the true next id at every position of every sequence (one model pass per unique window)."""
        model, _ = self._require()
        cfg = self.config
        ids = self.template_ids(sequences)
        empty = np.zeros(0, dtype=np.int64)
        if not ids:
            return PositionStats(
                empty, empty, empty, np.zeros(0), np.zeros(0, dtype=bool), np.zeros((0, cfg.hidden_size))
            )
        parts = [windows(x, cfg.window, cfg.predict_end) for x in ids]
        hist = np.concatenate([p[0] for p in parts])  # (N, h)
        tgt = np.concatenate([p[1] for p in parts])  # (N,)
        seq = np.concatenate([np.full(len(p[1]), i, dtype=np.int64) for i, p in enumerate(parts)])
        line = np.concatenate([np.arange(len(p[1]), dtype=np.int64) for p in parts])
        uniq, inverse = np.unique(hist, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        rank = np.zeros(len(tgt), dtype=np.int64)
        nll = np.zeros(len(tgt), dtype=np.float64)
        hidden_u = np.zeros((len(uniq), cfg.hidden_size), dtype=np.float32)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(0, len(uniq) + self.batch_size, self.batch_size))
        for b, start in enumerate(range(0, len(uniq), self.batch_size)):
            out = model(torch.from_numpy(uniq[start : start + self.batch_size]))
            logp = torch.log_softmax(out.logits.float(), dim=-1)  # (b, V)
            hidden_u[start : start + len(logp)] = out.hidden.float().numpy()
            pos = order[bounds[b] : bounds[b + 1]]  # positions whose window is in this batch
            rows = torch.from_numpy(inverse[pos] - start)
            true = torch.from_numpy(tgt[pos])
            lp_true = logp[rows, true]  # (n,)
            rank[pos] = (logp[rows] > lp_true[:, None]).sum(dim=1).numpy()
            nll[pos] = (-lp_true).double().numpy()
        unknown = tgt == UNK
        nll = np.where(unknown, cfg.nll_cap, np.minimum(nll, cfg.nll_cap))
        return PositionStats(seq, line, rank, nll, unknown, hidden_u[inverse], num_sequences=len(ids))

    def _scores_from(self, stats: PositionStats, top_g: int) -> tuple[np.ndarray, np.ndarray]:
        """Sequence scores and classic-rule flags from position statistics at a given ``g``."""
        n = stats.num_sequences
        miss = (stats.rank >= top_g) | stats.unknown
        any_miss = np.zeros(n, dtype=bool)
        np.logical_or.at(any_miss, stats.seq, miss)
        positions = np.maximum(np.bincount(stats.seq, minlength=n), 1)
        mean_nll = np.bincount(stats.seq, weights=stats.nll, minlength=n) / positions
        surprise = 1.0 - np.exp(-mean_nll / self.config.nll_scale)
        return 0.5 * any_miss + 0.5 * np.minimum(surprise, 1.0 - 1e-9), any_miss

    def raw_scores(self, sequences: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
        """Per sequence: misses, positions, unknown lines, miss fraction, max and mean NLL."""
        stats = self.position_stats(sequences)
        n = stats.num_sequences
        miss = ((stats.rank >= self.config.top_g) | stats.unknown).astype(np.float64)
        positions = np.bincount(stats.seq, minlength=n).astype(np.float64)
        misses = np.bincount(stats.seq, weights=miss, minlength=n)
        max_nll = np.zeros(n)
        np.maximum.at(max_nll, stats.seq, stats.nll)
        return {
            "misses": misses,
            "positions": positions,
            "unknown": np.bincount(stats.seq, weights=stats.unknown.astype(np.float64), minlength=n),
            "miss_fraction": misses / np.maximum(positions, 1),
            "max_nll": max_nll,
            "mean_nll": np.bincount(stats.seq, weights=stats.nll, minlength=n) / np.maximum(positions, 1),
        }

    # ------------------------------------------------------------------------- public API

    def score(self, sequences: Sequence[Sequence[str]]) -> np.ndarray:
        """Anomaly score in [0, 1] of each sequence (a list of raw log lines); >= 0.5 means a miss."""
        if not sequences:
            return np.zeros(0)
        return self._scores_from(self.position_stats(sequences), self.config.top_g)[0]

    def predict(
        self, sequences: Sequence[Sequence[str]], rule: Literal["classic", "threshold"] = "classic"
    ) -> list[Detection]:
        """Score and decision per sequence: the classic any-miss rule, or ``score >= threshold``."""
        if not sequences:
            return []
        scores, any_miss = self._scores_from(self.position_stats(sequences), self.config.top_g)
        flags = any_miss if rule == "classic" else scores >= self.threshold
        return [Detection.of(s, f) for s, f in zip(scores, flags, strict=True)]

    def embed(self, sequences: Sequence[Sequence[str]]) -> np.ndarray:
        """Deep feature (N, H) per sequence: the top LSTM state after its last line (or the mean over lines)."""
        if not sequences:
            return np.zeros((0, self.config.hidden_size), dtype=np.float32)
        cfg = self.config
        stats = self.position_stats(sequences)
        n = stats.num_sequences
        if cfg.embed_pooling == "mean":
            sums = np.zeros((n, cfg.hidden_size), dtype=np.float64)
            np.add.at(sums, stats.seq, stats.hidden)
            return (sums / np.bincount(stats.seq, minlength=n)[:, None]).astype(np.float32)
        # the window after the last line: the end-marker position, else the last line's own window
        last = np.zeros(n, dtype=np.int64)
        last[stats.seq] = np.arange(len(stats.seq))  # later positions overwrite earlier ones
        if cfg.predict_end:
            return stats.hidden[last]
        tail = [list(lines)[-cfg.window :] for lines in sequences]
        tail_ids = self.template_ids(tail)
        model, _ = self._require()
        hist = np.array([[PAD] * (cfg.window - len(t)) + t for t in tail_ids], dtype=np.int64)
        with torch.inference_mode():
            return model(torch.from_numpy(hist)).hidden.float().numpy()

    def line_contributions_many(self, sequences: Sequence[Sequence[str]]) -> list[list[float]]:
        """:meth:`line_contributions` of each sequence."""
        return [self.line_contributions(lines) for lines in sequences]

    def line_contributions(self, lines: Sequence[str]) -> list[float]:
        """How anomalous each line looks: 0.5 when it is a miss plus half its squashed NLL (end marker -> last line)."""
        if not lines:
            return []
        stats = self.position_stats([list(lines)])
        miss = (stats.rank >= self.config.top_g) | stats.unknown
        per = 0.5 * miss + 0.5 * (1.0 - np.exp(-stats.nll / self.config.nll_scale))
        out = [float(v) for v in per[: len(lines)]]
        if len(per) > len(lines):
            out[-1] = max(out[-1], float(per[len(lines)]))
        return out

    # ------------------------------------------------------------------------- calibration

    def calibrate(
        self,
        sequences: Sequence[Sequence[str]],
        labels: Sequence[int] | np.ndarray,
        top_g_candidates: Sequence[int] | None = None,
    ) -> dict[str, Any]:
        """Pick ``top_g`` (best validation F1 of the score, then ROC-AUC, then the smaller g) and the best-F1 threshold."""
        y = np.asarray(labels, dtype=np.int64)
        if len(y) != len(sequences) or len(np.unique(y)) < 2:
            raise DataError("calibration needs labels of both classes, one per sequence")
        stats = self.position_stats(sequences)
        candidates = list(top_g_candidates or [self.config.top_g])
        search = []
        best: tuple[float, float, int] = (-1.0, -1.0, candidates[0])
        for g in candidates:
            scores, flags = self._scores_from(stats, g)
            tp = float(np.sum(flags & (y == 1)))
            classic_f1 = 2 * tp / max(float(flags.sum() + y.sum()), 1.0)
            auc = roc_auc(y, scores)
            best_f1 = best_f1_threshold(y, scores)[1]
            search.append({"top_g": g, "classic_f1": classic_f1, "best_f1": best_f1, "roc_auc": auc})
            if (best_f1, auc) > best[:2]:
                best = (best_f1, auc, g)
        self.config.top_g = best[2]
        scores, _ = self._scores_from(stats, self.config.top_g)
        threshold, f1 = best_f1_threshold(y, scores)
        self.calibration = Calibration(threshold=threshold, threshold_source="validation", search=search)
        return {"top_g": self.config.top_g, "threshold": threshold, "val_best_f1": f1, "search": search}

    # ------------------------------------------------------------------------- save / load

    def save_pretrained(self, save_dir: str | Path) -> Path:
        """Write the artifact folder (weights, config, Drain3 state, normalizer, threshold, metrics)."""
        from safetensors.torch import save_file

        model, miner = self._require()
        out = Path(save_dir)
        out.mkdir(parents=True, exist_ok=True)
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._version = f"deeplog-{weights_digest(model)}-{created.replace('-', '').replace(':', '')}"
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(out / WEIGHTS_NAME))
        miner.save(out / DRAIN_NAME)
        write_json(out / NORMALIZER_NAME, self.normalizer.to_dict())
        write_json(
            out / CONFIG_NAME,
            {
                "detector": "deeplog",
                "version": self._version,
                "created_at": created,
                "config": self.config.to_dict(),
                "calibration": asdict(self.calibration),
                "num_templates": self.num_templates,
            },
        )
        if self.metrics:
            write_json(out / METRICS_NAME, self.metrics)
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path, batch_size: int = 1024) -> DeepLogDetector:
        """Load a folder written by :meth:`save_pretrained`."""
        from safetensors.torch import load_file

        folder = Path(path)
        if not folder.is_dir():
            raise ModelError(f"{folder}: no such DeepLog folder")
        for name in (CONFIG_NAME, WEIGHTS_NAME, DRAIN_NAME):
            if not (folder / name).exists():
                raise ModelError(f"{folder}: not a DeepLog artifact ({name} missing)")
        try:
            meta = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{folder / CONFIG_NAME}: not valid JSON ({exc})") from None
        if meta.get("detector") != "deeplog":
            raise ModelError(f"{folder}: config.json is not a DeepLog config")
        config = DeepLogConfig.from_dict(meta["config"])
        normalizer = Normalizer()
        if (folder / NORMALIZER_NAME).exists():
            normalizer = Normalizer.from_dict(json.loads((folder / NORMALIZER_NAME).read_text(encoding="utf-8")))
        miner = TemplateMiner.load(folder / DRAIN_NAME, normalizer=normalizer)
        model = DeepLogLSTM(config)
        try:
            model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
        except RuntimeError as exc:
            raise ModelError(f"{folder}: weights do not fit the config ({exc})") from None
        metrics = {}
        if (folder / METRICS_NAME).exists():
            metrics = json.loads((folder / METRICS_NAME).read_text(encoding="utf-8"))
        calibration = Calibration(**meta.get("calibration", {}))
        return cls(config, normalizer, miner, model, calibration, metrics, meta.get("version"), batch_size)
