"""Score log sequences with a trained MoE-BERT detector folder.

    detector = MoEBertDetector.from_pretrained("artifacts/detector")
    scores = detector.score([["line", "line", ...], ...])      # (N,) in [0, 1]
    flagged = scores >= detector.threshold

Each distinct normalized line is encoded once (``detector.vectors`` caches its vector); the sequence
model runs over the line vectors, in overlapping windows when a sequence is longer than its positions,
so every line of a session of any length is scored. Supervised artifacts score with the anomaly head
alone (a probability). Calibrated artifacts fuse four scores with weights fitted on validation data,
each mapped to [0, 1] by a robust z-score against held-out normal sequences: the head, the cosine kNN
distance of the pooled embedding to a bank of training embeddings, and the two reconstruction parts,
each the most surprising line of a line model (a line's surprise: the smaller of its NLL and its NLL
standardized per line class on held-out normal sequences): masked line modeling (``lines``: each line
masked in turn, named from all the others) and forward line modeling (``next``: each line, and the
end of the sequence, named from the lines before it: a session that stops early scores its missing end).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from core.devices import resolve_device
from core.errors import ModelError
from core.io import write_json
from core.normalize import Normalizer, NormalizerPool
from small_model.calibration import COMPONENTS, RECON_PARTS, Calibration, ScoreStats
from small_model.common import weights_digest
from small_model.data import LineVectors, window_owner, window_starts
from small_model.detection import Detection
from small_model.detector import DetectorKind
from small_model.modeling import CONFIG_NAME, WEIGHTS_NAME, MoEBertForLogAnomaly

logger = logging.getLogger(__name__)

CALIBRATION_NAME = "calibration.json"
NORMALIZER_NAME = "normalizer.json"
BANK_NAME = "embedding_bank.safetensors"
METRICS_NAME = "metrics.json"


# ----------------------------------------------------------------------------- the detector


@dataclass
class LineBatch:
    """Windows of sequences as tensors for the model: each row one window of up to ``max_lines`` lines."""

    ids: torch.Tensor  # (B, L) rows of the line-vector table
    classes: torch.Tensor  # (B, L) line classes (the vocabulary, or other)
    real: torch.Tensor  # (B, L) bool, the lines that are there
    nxt: torch.Tensor  # (B, L) the class after each line (the end class after a sequence's last line); -100: none


def line_batch(windows: Sequence[tuple[Sequence[int], Sequence[int], bool]], end_class: int) -> LineBatch:
    """Pad windows ``(table ids, classes, ends the sequence)`` into a :class:`LineBatch`."""
    width = max(len(w[0]) for w in windows)
    B = len(windows)
    ids = np.zeros((B, width), dtype=np.int64)
    classes = np.zeros((B, width), dtype=np.int64)
    real = np.zeros((B, width), dtype=bool)
    nxt = np.full((B, width), -100, dtype=np.int64)
    for b, (row_ids, row_classes, ends) in enumerate(windows):
        n = len(row_ids)
        ids[b, :n] = row_ids
        classes[b, :n] = row_classes
        real[b, :n] = True
        nxt[b, : n - 1] = classes[b, 1:n]
        if ends:
            nxt[b, n - 1] = end_class
    return LineBatch(torch.from_numpy(ids), torch.from_numpy(classes), torch.from_numpy(real), torch.from_numpy(nxt))


@dataclass
class _Prepared:
    """One distinct sequence ready to score: its line-table rows, classes and windows."""

    ids: list[int]
    classes: list[int]
    starts: list[int]
    owner: list[int]

    @property
    def owner_array(self) -> np.ndarray:
        """``owner`` as an array."""
        return np.asarray(self.owner)


@dataclass
class LineScores:
    """Per-sequence results of the line models (raw NLLs, before the class baselines)."""

    head: np.ndarray  # (N,) anomaly logit (the most anomalous window)
    pooled: np.ndarray  # (N, H) mean pooled embedding of the windows
    line_nll: list[np.ndarray] = field(default_factory=list)  # per sequence (n,): each line masked in turn
    line_cls: list[np.ndarray] = field(default_factory=list)
    next_nll: list[np.ndarray] = field(default_factory=list)  # per sequence (n,): at line i, its successor
    next_cls: list[np.ndarray] = field(default_factory=list)  # (the end class after the last line)


# Below this many line positions a CPU pass runs on one thread: the passes over a few short windows are
# too small to split, and waking a second thread costs more than it saves (one synthetic sequence: 21 ms
# on one thread, 54 ms on two; the two meet near 150 lines on a 2-core AMD EPYC).
SMALL_WORK_LINES = 128


@contextlib.contextmanager
def cpu_threads_for(n_lines: int, device: torch.device) -> Iterator[None]:
    """Run a CPU pass over ``n_lines`` line positions on one thread when it is small (see SMALL_WORK_LINES)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or n_lines >= SMALL_WORK_LINES or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class MoEBertDetector:
    """A trained detector: model, tokenizer, normalizer, calibration and (label-free) embedding bank."""

    kind: DetectorKind = "moe-bert"

    def __init__(
        self,
        model: MoEBertForLogAnomaly,
        tokenizer: PreTrainedTokenizerBase,
        normalizer: Normalizer | None = None,
        calibration: Calibration | None = None,
        bank: torch.Tensor | None = None,
        metrics: dict[str, Any] | None = None,
        batch_size: int = 64,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.normalizer = normalizer or Normalizer()
        self.calibration = calibration or Calibration()
        self.bank = bank.float() if bank is not None else None  # (Nb, H) raw pooled embeddings
        self.metrics = metrics or {}
        self.batch_size = batch_size
        self._line_map = {line: i for i, line in enumerate(model.config.line_vocab or [])}
        self.device = next(model.parameters()).device
        # processes that normalize large batches: a GPU's host has cores to spare, a CPU's run the model
        cores = os.cpu_count() or 1
        self.normalize_workers = min(16, cores - 1) if self.device.type == "cuda" and cores > 2 else 0
        self._pool: NormalizerPool | None = None
        self.vectors = LineVectors(self._encode_lines, int(model.config.line_dim or 0), device=self.device)
        # the service scores from worker threads: the line cache and its table change together
        self._lock = threading.RLock()

    # ------------------------------------------------------------------------- properties

    @property
    def config(self) -> Any:
        """The model's :class:`DetectorConfig`."""
        return self.model.config

    @property
    def threshold(self) -> float:
        """Scores at or above this are anomalies."""
        return float(self.calibration.threshold)

    @property
    def version(self) -> str:
        """The version id recorded when the artifact was saved (weights digest + time)."""
        return str(self.model.config.version or "unsaved")

    @property
    def profile(self) -> str:
        """The training budget that made the artifact: ``full``, or ``quick`` (make demo's)."""
        return str(self.model.config.profile)

    @property
    def mode(self) -> str:
        """``supervised`` or ``unsupervised``."""
        return self.calibration.mode

    # ------------------------------------------------------------------------- save / load

    def save_pretrained(self, save_dir: str | Path) -> Path:
        """Write the whole artifact folder; stamps a fresh version id into the config."""
        out = Path(save_dir)
        out.mkdir(parents=True, exist_ok=True)
        cfg = self.model.config
        cfg.created_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        stamp = cfg.created_at.replace("-", "").replace(":", "")
        quick = "quick-" if cfg.profile == "quick" else ""  # a quick demo model is never taken for a full one
        cfg.version = f"moebert-{quick}{weights_digest(self.model)}-{stamp}"
        self.model.save_pretrained(out, tokenizer=self.tokenizer)
        write_json(out / NORMALIZER_NAME, self.normalizer.to_dict())
        write_json(out / CALIBRATION_NAME, self.calibration.to_dict())
        if self.bank is not None:
            save_file({"bank": self.bank.contiguous()}, str(out / BANK_NAME))
        if self.metrics:
            write_json(out / METRICS_NAME, self.metrics)
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path, batch_size: int = 64, device: str = "cpu") -> MoEBertDetector:
        """Load an artifact folder written by :meth:`save_pretrained` (or by training); ``device``: cpu, cuda,
        cuda:N or auto (:func:`core.devices.resolve_device`)."""
        device = resolve_device(device)
        folder = Path(path)
        if not folder.is_dir():
            raise ModelError(f"{folder}: no such detector folder")
        for name in (CONFIG_NAME, WEIGHTS_NAME, CALIBRATION_NAME):
            if not (folder / name).exists():
                raise ModelError(f"{folder}: not a detector artifact ({name} missing)")
        model = MoEBertForLogAnomaly.from_pretrained(folder).to(device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError) as exc:
            raise ModelError(f"{folder}: cannot load the tokenizer ({exc})") from None
        normalizer = Normalizer()
        if (folder / NORMALIZER_NAME).exists():
            normalizer = Normalizer.from_dict(json.loads((folder / NORMALIZER_NAME).read_text(encoding="utf-8")))
        try:
            calibration = Calibration.from_dict(json.loads((folder / CALIBRATION_NAME).read_text(encoding="utf-8")))
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{folder}: unreadable {CALIBRATION_NAME} ({exc})") from None
        bank = load_file(str(folder / BANK_NAME))["bank"] if (folder / BANK_NAME).exists() else None
        if calibration.weights.get("knn", 0) > 0 and bank is None:
            raise ModelError(f"{folder}: calibration uses the kNN score but {BANK_NAME} is missing")
        metrics = {}
        if (folder / METRICS_NAME).exists():
            metrics = json.loads((folder / METRICS_NAME).read_text(encoding="utf-8"))
        return cls(model, tokenizer, normalizer, calibration, bank, metrics, batch_size)

    # ------------------------------------------------------------------------- lines

    def line_texts(self, sequences: Sequence[Sequence[str]]) -> list[list[str]]:
        """Every line of each sequence normalized and stripped (empty ones kept, in place), on
        :attr:`normalize_workers` processes when there are that many and the lines are many."""
        flat = [line for lines in sequences for line in lines]
        if self.normalize_workers > 1:
            if self._pool is None:
                self._pool = NormalizerPool(self.normalizer, self.normalize_workers)
            texts = self._pool.normalize(flat)
        else:
            texts = [self.normalizer.normalize(line) for line in flat]
        out, pos = [], 0
        for lines in sequences:
            out.append([t.strip() for t in texts[pos : pos + len(lines)]])
            pos += len(lines)
        return out

    def normalize(self, sequences: Sequence[Sequence[str]]) -> list[list[str]]:
        """The normalized lines of each sequence (the model's input): :func:`data.normalize_lines` of each."""
        return [[t for t in texts if t] or [""] for texts in self.line_texts(sequences)]

    def _encode_lines(self, lines: list[str]) -> torch.Tensor:
        enc = self.tokenizer(
            lines, truncation=True, max_length=self.config.max_line_tokens, padding=True, return_tensors="pt"
        )
        return self.model.encode_lines(enc["input_ids"], enc["attention_mask"])

    def line_classes(self, lines: Sequence[str]) -> list[int]:
        """The class of each normalized line: its index in the line vocabulary, else ``other``."""
        other = len(self._line_map)
        return [self._line_map.get(line, other) for line in lines]

    def _prepare(self, sequences: Sequence[Sequence[str]]) -> list[_Prepared]:
        """Line-table rows, classes and windows of each sequence; the rows of all lines in one cache call,
        so that a cache that starts afresh on the way keeps every row of this call valid."""
        size = int(self.config.max_lines)
        ids = self.vectors.ids([line for seq in sequences for line in seq])
        out, pos = [], 0
        for seq in sequences:
            starts = window_starts(len(seq), size)
            out.append(
                _Prepared(
                    ids[pos : pos + len(seq)], self.line_classes(seq), starts, window_owner(len(seq), starts, size)
                )
            )
            pos += len(seq)
        return out

    # ------------------------------------------------------------------------- raw scores

    @torch.inference_mode()
    def line_scores(self, sequences: Sequence[Sequence[str]], recon: bool = True) -> LineScores:
        """Head logit, pooled embedding and (``recon``) the raw per-line NLLs of normalized sequences.

        Every line is scored once, in the window that shows it with context; a sequence longer than
        the model's positions is read in overlapping windows. Identical sequences are run once.
        """
        with self._lock, cpu_threads_for(sum(map(len, sequences)), self.device):
            return self._line_scores(sequences, recon)

    def _line_scores(self, sequences: Sequence[Sequence[str]], recon: bool) -> LineScores:
        unique: dict[tuple[str, ...], int] = {}
        where = [unique.setdefault(tuple(seq), len(unique)) for seq in sequences]
        prepared = self._prepare(list(unique))
        n = len(prepared)
        size, end = int(self.config.max_lines), self.model.end_class
        rows = [(s, w, a) for s, p in enumerate(prepared) for w, a in enumerate(p.starts)]
        rows.sort(key=lambda r: min(size, len(prepared[r[0]].ids) - r[2]))
        head = np.full(n, -np.inf)
        pooled_sum = np.zeros((n, self.model.hidden_size))
        line_nll = [np.zeros(len(p.ids)) for p in prepared]
        next_nll = [np.zeros(len(p.ids)) for p in prepared]
        table = self.vectors.table
        for begin in range(0, len(rows), self.batch_size):
            chunk = rows[begin : begin + self.batch_size]
            windows = []
            for s, _, a in chunk:
                p = prepared[s]
                windows.append((p.ids[a : a + size], p.classes[a : a + size], a + size >= len(p.ids)))
            batch = line_batch(windows, end)
            vectors = table[batch.ids.to(table.device)]  # (B, L, D)
            out = self.model(vectors, batch.classes, batch.real)
            logits, pooled = out.logits.double().cpu().numpy(), out.pooled.double().cpu().numpy()
            for r, (s, _, _) in enumerate(chunk):
                head[s] = max(head[s], logits[r])
                pooled_sum[s] += pooled[r]
            if not recon:
                continue
            # forward line modeling: the line after each line, scored in the window that owns that next line
            owned_line_np = np.zeros(tuple(batch.real.shape), dtype=bool)
            owned_next_np = np.zeros(tuple(batch.real.shape), dtype=bool)
            ends = batch.nxt[:, :].eq(end).numpy()
            for r, (s, w, a) in enumerate(chunk):
                p = prepared[s]
                n_lines = len(p.ids)
                width = min(size, n_lines - a)
                if len(p.starts) == 1:  # one window shows the whole sequence: it owns every line
                    owned_line_np[r, :width] = True
                    owned_next_np[r, : width - 1] = True
                else:
                    owner = p.owner_array
                    owned_line_np[r, :width] = owner[a : a + width] == w
                    follow = owner[a + 1 : a + width + 1] == w  # the owner of each line's successor
                    owned_next_np[r, : len(follow)] = follow
                if a + width == n_lines:  # the end after the last line
                    owned_next_np[r, width - 1] = ends[r, width - 1]
            owned_line = torch.from_numpy(owned_line_np)
            owned_next = torch.from_numpy(owned_next_np)
            targets = batch.nxt.masked_fill(~owned_next, -100)
            out = self.model(vectors, batch.classes, batch.real, causal=True, next_labels=targets)
            assert out.next_nll is not None
            nxt = out.next_nll.float().cpu().numpy()
            masked_nll = torch.zeros(batch.real.shape)
            passes = int(self.config.recon_passes)
            position = torch.arange(batch.real.shape[1])[None]
            for j in range(passes):
                chosen = batch.real & owned_line & (position % passes == j)
                if not bool(chosen.any()):
                    continue
                labels = batch.classes.masked_fill(~chosen, -100)
                out = self.model(vectors, batch.classes, batch.real, masked=chosen, line_labels=labels)
                assert out.line_nll is not None
                masked_nll += out.line_nll.float().cpu()
            for r, (s, _, a) in enumerate(chunk):
                p = prepared[s]
                width = min(size, len(p.ids) - a)
                own = owned_line[r, :width].numpy()
                line_nll[s][a : a + width][own] = masked_nll[r, :width].numpy()[own]
                own_next = owned_next[r, :width].numpy()
                next_nll[s][a : a + width][own_next] = nxt[r, :width][own_next]
        counts = np.array([len(p.starts) for p in prepared], dtype=np.float64)
        result = LineScores(head[where], (pooled_sum / counts[:, None])[where].astype(np.float32))
        if recon:
            for u in where:
                p = prepared[u]
                result.line_nll.append(line_nll[u])
                result.line_cls.append(np.asarray(p.classes))
                result.next_nll.append(next_nll[u])
                result.next_cls.append(np.asarray([*p.classes[1:], end]))
        return result

    def _standardized(self, nll: np.ndarray, classes: np.ndarray, kind: Literal["line", "next"]) -> np.ndarray:
        """Per line its surprise: the smaller of its NLL (nats) and its NLL standardized by its class's NLLs on
        normal sequences. A line counts as surprising only when it is both improbable and more so than its
        class usually is: a line that is unpredictable by nature (a background event at a random place)
        stays low, and so does a rare but plausible turn of a line that is otherwise always predicted
        exactly (whose spread on normal data is near zero)."""
        cal = self.calibration
        baseline, scale = (cal.line_baseline, cal.line_scale) if kind == "line" else (cal.next_baseline, cal.next_scale)
        raw = np.asarray(nll, dtype=np.float64)
        z = raw
        if baseline:
            z = z - np.asarray(baseline)[classes]
        if scale:
            z = z / np.asarray(scale)[classes]
        return np.minimum(raw, z)

    def line_surprise(self, scores: LineScores) -> list[np.ndarray]:
        """Per sequence and line: the worst standardized NLL that concerns the line (masked, as the successor
        of the line before it, and for the last line also the end that followed it)."""
        out = []
        for ln, lc, nn_, nc in zip(scores.line_nll, scores.line_cls, scores.next_nll, scores.next_cls, strict=True):
            z = self._standardized(ln, lc, "line")
            zn = self._standardized(nn_, nc, "next")  # zn[i]: the line after line i (the end after the last)
            per = z.copy()
            per[1:] = np.maximum(per[1:], zn[:-1])
            per[-1] = max(per[-1], zn[-1])
            out.append(per)
        return out

    def raw_from_lines(
        self, sequences: Sequence[Sequence[str]], components: Sequence[str] = COMPONENTS
    ) -> dict[str, np.ndarray]:
        """Raw component scores (``head`` as a logit, ``knn``, the reconstruction parts ``lines`` and ``next``
        and their worst ``recon``) and the ``pooled`` embeddings of normalized sequences."""
        recon = any(c in components for c in (*RECON_PARTS, "recon"))
        return self._raw_from(self.line_scores(sequences, recon=recon), components)

    def _raw_from(self, scores: LineScores, components: Sequence[str]) -> dict[str, np.ndarray]:
        """:meth:`raw_from_lines` of line scores already computed."""
        recon = bool(scores.line_nll)
        result: dict[str, np.ndarray] = {"head": scores.head, "pooled": scores.pooled}
        if recon:
            lines = [
                self._standardized(n, c, "line").max(initial=-1e6)
                for n, c in zip(scores.line_nll, scores.line_cls, strict=True)
            ]
            nexts = [
                self._standardized(n, c, "next").max(initial=-1e6)
                for n, c in zip(scores.next_nll, scores.next_cls, strict=True)
            ]
            result["lines"] = np.asarray(lines, dtype=np.float64)
            result["next"] = np.asarray(nexts, dtype=np.float64)
            result["recon"] = np.maximum(result["lines"], result["next"])
        if "knn" in components and self.bank is not None:
            result["knn"] = knn_distance(scores.pooled, self.bank, self.calibration.knn_k)
        return result

    @torch.inference_mode()
    def fit_line_baseline(
        self, sequences: Sequence[Sequence[str]], min_count: int = 3, spread: float = 0.5
    ) -> dict[str, Any]:
        """Set ``calibration.line_baseline``/``line_scale`` and ``next_baseline``/``next_scale`` from normal
        normalized ``sequences``: the mean NLL of each line class seen at least ``min_count`` times and its
        standard deviation + ``spread``. The rare classes of the vocabulary share the stats of all their
        occurrences; ``other`` (a line never seen in training) keeps its raw NLL. Returns a summary."""
        if not sequences:
            return {}
        scores = self.line_scores(sequences)
        other = len(self._line_map)
        notes: dict[str, Any] = {"line_baseline_sequences": len(sequences)}
        for kind, nll, cls, size in (
            ("line", scores.line_nll, scores.line_cls, other + 1),
            ("next", scores.next_nll, scores.next_cls, other + 2),
        ):
            values, classes = np.concatenate(nll), np.concatenate(cls)
            counts = np.bincount(classes, minlength=size).astype(np.float64)
            sums = np.bincount(classes, weights=values, minlength=size)
            squares = np.bincount(classes, weights=values**2, minlength=size)
            seen = counts >= min_count
            mean = sums / np.maximum(counts, 1)
            std = np.sqrt(np.maximum(squares / np.maximum(counts, 1) - mean**2, 0.0))
            rare = ~seen & (np.arange(size) != other)
            pooled = float(counts[rare].sum())
            baseline, scale = np.zeros(size), np.ones(size)  # raw NLL
            if pooled >= min_count:
                rare_mean = sums[rare].sum() / pooled
                baseline[rare] = rare_mean
                scale[rare] = math.sqrt(max(squares[rare].sum() / pooled - rare_mean**2, 0.0)) + spread
            baseline, scale = np.where(seen, mean, baseline), np.where(seen, std + spread, scale)
            setattr(self.calibration, f"{kind}_baseline", [round(float(x), 5) for x in baseline])
            setattr(self.calibration, f"{kind}_scale", [round(float(x), 5) for x in scale])
            notes[f"{kind}_baseline_classes"] = int(seen.sum())
            notes[f"{kind}_rare_pooled"] = int(pooled)
        return notes

    def _components(self) -> list[str]:
        """The parts the score needs: the weighted ones and the head (the head alone when nothing is fused)."""
        return [*self.calibration.active(), "head"] if self.calibration.fused else ["head"]

    def raw_scores(self, sequences: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
        """Raw component scores (``head``, ``knn``, ``lines``, ``next``, ``recon``) and ``pooled`` embeddings of
        raw sequences."""
        components = self._components()
        return self.raw_from_lines(self.normalize(sequences), components)

    # ------------------------------------------------------------------------- public API

    def score(self, sequences: Sequence[Sequence[str]]) -> np.ndarray:
        """Anomaly score in [0, 1] of each sequence (a list of raw log lines)."""
        if not sequences:
            return np.zeros(0)
        return self.calibration.fuse(self.raw_scores(sequences))

    def embed(self, sequences: Sequence[Sequence[str]]) -> np.ndarray:
        """Pooled embedding (N, H) of each sequence."""
        if not sequences:
            return np.zeros((0, self.model.hidden_size), dtype=np.float32)
        return self.line_scores(self.normalize(sequences), recon=False).pooled

    def predict(self, sequences: Sequence[Sequence[str]]) -> list[Detection]:
        """Score, decision and risk level of each sequence."""
        thr = self.threshold
        return [Detection.of(s, s >= thr) for s in self.score(sequences)]

    def score_with_lines(self, sequences: Sequence[Sequence[str]]) -> tuple[np.ndarray, list[list[float]] | None]:
        """:meth:`score` and, where the score's own passes give them (a fused artifact with a reconstruction
        part), :meth:`line_contributions` of every sequence from the same passes; ``None`` otherwise (a
        supervised artifact scores with the head alone: its top lines need the line passes, which
        :meth:`line_contributions` runs for the sequences that need them)."""
        if not sequences:
            return np.zeros(0), []
        components = self._components()
        if not any(c in RECON_PARTS for c in components):
            return self.score(sequences), None
        texts_all = self.line_texts(sequences)
        kept_all = [[i for i, t in enumerate(texts) if t] for texts in texts_all]
        scores = self.line_scores(
            [[texts[i] for i in kept] or [""] for texts, kept in zip(texts_all, kept_all, strict=True)], recon=True
        )
        fused = self.calibration.fuse(self._raw_from(scores, components))
        per_line = self.line_surprise(scores)
        return fused, [
            self._spread(len(lines), kept, per) for lines, kept, per in zip(sequences, kept_all, per_line, strict=True)
        ]

    def _spread(self, n: int, kept: Sequence[int], per: np.ndarray) -> list[float]:
        """Line surprises of the kept lines through the reconstruction score's normalization, placed at their
        indices among ``n`` raw lines (a line the normalizer empties gets 0)."""
        stats = self.calibration.stats.get("recon", ScoreStats())  # the worst part's normalization
        out = [0.0] * n
        for i, v in zip(kept, stats.apply(per), strict=False):
            out[i] = float(v)
        return out

    def line_contributions(self, lines: Sequence[str]) -> list[float]:
        """How anomalous each raw line looks, in [0, 1]: its worst standardized surprise (masked, as the
        successor of the line before, the end after the last line) through the reconstruction score's
        normalization. Lines the normalizer empties get 0. One scoring pass, no extra forwards."""
        return self.line_contributions_many([lines])[0]

    def line_contributions_many(self, sequences: Sequence[Sequence[str]]) -> list[list[float]]:
        """:meth:`line_contributions` of many sequences in one scoring pass (their windows share batches)."""
        texts_all = self.line_texts(sequences) if sequences else []
        kept_all = [[i for i, t in enumerate(texts) if t] for texts in texts_all]
        todo = [k for k, kept in enumerate(kept_all) if kept]
        out = [[0.0] * len(lines) for lines in sequences]
        if todo:
            scores = self.line_scores([[texts_all[k][i] for i in kept_all[k]] for k in todo])
            for k, per in zip(todo, self.line_surprise(scores), strict=True):
                out[k] = self._spread(len(sequences[k]), kept_all[k], per)
        return out


def knn_distance(queries: np.ndarray, bank: torch.Tensor, k: int) -> np.ndarray:
    """Mean cosine distance of each query to its ``k`` nearest bank embeddings."""
    q = F.normalize(torch.as_tensor(queries, dtype=torch.float32), dim=-1)  # (N, H)
    bank = F.normalize(bank.float(), dim=-1)  # (Nb, H)
    out = np.zeros(len(q))
    k = max(1, min(k, bank.shape[0]))
    for start in range(0, len(q), 1024):
        sims = q[start : start + 1024] @ bank.T  # (n, Nb)
        top = sims.topk(k, dim=-1).values  # (n, k)
        out[start : start + 1024] = (1.0 - top.mean(dim=-1)).double().numpy()
    return out
