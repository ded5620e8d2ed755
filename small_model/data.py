"""Data for the detector: normalized lines, the line-vector cache, windows, length-bucketed batches, perturbations."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

import torch

from core.normalize import Normalizer


def normalize_lines(lines: Sequence[str], normalizer: Normalizer) -> list[str]:
    """The normalized, stripped lines of one sequence; empty lines dropped (an empty sequence keeps one ``""``)."""
    out = [t for t in (normalizer.normalize(line).strip() for line in lines) if t]
    return out or [""]


class LineVectors:
    """The vector of each distinct normalized line, computed once (real logs repeat a few dozen lines).

    ``ids(lines)`` gives each line's row in ``table`` (N, D), encoding the lines not seen before in
    batches. At most ``max_lines`` rows are kept: a call that would overflow starts a fresh table.
    """

    def __init__(
        self,
        encode: Callable[[list[str]], torch.Tensor],
        dim: int,
        max_lines: int = 50_000,
        batch_size: int = 256,
        device: str | torch.device = "cpu",
    ) -> None:
        self.encode, self.dim, self.max_lines, self.batch_size = encode, dim, max_lines, batch_size
        self.device = torch.device(device)  # the table lives where the model reads it
        self.rows: dict[str, int] = {}
        self.table = torch.zeros(0, dim, device=self.device)

    def __len__(self) -> int:
        return len(self.rows)

    def ids(self, lines: Sequence[str]) -> list[int]:
        """The table row of each line (new lines encoded and added)."""
        new = list(dict.fromkeys(line for line in lines if line not in self.rows))
        if new and len(self.rows) + len(new) > self.max_lines:
            self.rows, self.table = {}, torch.zeros(0, self.dim, device=self.device)
            new = list(dict.fromkeys(lines))
        if new:
            order = sorted(new, key=len)  # similar lengths together: less padding
            parts = [self.encode(order[i : i + self.batch_size]) for i in range(0, len(order), self.batch_size)]
            self.table = torch.cat([self.table, *[p.float().to(self.device) for p in parts]])
            start = len(self.rows)
            self.rows.update({line: start + i for i, line in enumerate(order)})
        return [self.rows[line] for line in lines]


def window_starts(length: int, size: int) -> list[int]:
    """The starts of overlapping windows of ``size`` lines (stride ``size // 2``) that cover ``length`` lines."""
    if length <= size:
        return [0]
    stride = size // 2
    return [*range(0, length - size, stride), length - size]


def window_owner(length: int, starts: Sequence[int], size: int) -> list[int]:
    """For each line, the window that scores it: the last one that shows it with at least ``size // 2`` lines
    before it (the first window for the first lines), so every line is scored once, with context."""
    stride = size // 2
    out, w = [], 0
    for i in range(length):
        while w + 1 < len(starts) and starts[w + 1] <= max(0, i - stride):
            w += 1
        out.append(w)
    return out


def length_batches(
    lengths: Sequence[int], batch_size: int, shuffle: bool, rng: random.Random | None = None, pool_batches: int = 50
) -> list[list[int]]:
    """Index batches of similar lengths (less padding); with ``shuffle``, random pools and batch order.

    Shuffled batches are sorted by length only within random pools of ``pool_batches`` batches:
    small pools keep batches mixed where length correlates with the label (1: no sorting at all).
    """
    order = list(range(len(lengths)))
    if not shuffle:
        order.sort(key=lambda i: lengths[i])
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng = rng or random.Random(0)
    rng.shuffle(order)
    pool = batch_size * max(1, pool_batches)
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def stratified_length_batches(
    lengths: Sequence[int], labels: Sequence[int], batch_size: int, rng: random.Random, pool_batches: int = 50
) -> list[list[int]]:
    """Shuffled batches with both classes in every batch at their overall ratio, and little padding.

    In each random pool, each class is sorted by length and cut into as many chunks as the pool has
    batches; batch j joins chunk j of every class, so its members have similar length ranks.
    Plain length bucketing would make single-class batches where length tells the classes apart.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * max(1, pool_batches)
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        n_batches = max(1, -(-len(chunk) // batch_size))
        parts: list[list[list[int]]] = []
        for cls in sorted({labels[i] for i in chunk}):
            members = sorted((i for i in chunk if labels[i] == cls), key=lambda i: lengths[i])
            size, extra = divmod(len(members), n_batches)
            cuts, pos = [], 0
            for j in range(n_batches):
                step = size + (1 if j < extra else 0)
                cuts.append(members[pos : pos + step])
                pos += step
            parts.append(cuts)
        batches.extend([i for cuts in parts for i in cuts[j]] for j in range(n_batches))
    batches = [b for b in batches if b]
    rng.shuffle(batches)
    return batches


# ----------------------------------------------------------------------------- perturbed negatives

PERTURBATIONS = ("drop", "duplicate", "swap", "foreign_line", "foreign_token", "shuffle", "slow")
# a duration bucket of the normalizer (``<dur:1e2ms>``): "slow" moves one 2-3 orders of magnitude up
_DURATION_BUCKET = re.compile(r"<dur:1e(-?\d+)ms>")


def _slow_down(line: str, rng: random.Random) -> str | None:
    """``line`` with one duration bucket 100-1000 times slower, or ``None`` when it has none."""
    found = list(_DURATION_BUCKET.finditer(line))
    if not found:
        return None
    m = rng.choice(found)
    return f"{line[: m.start()]}<dur:1e{int(m.group(1)) + rng.choice((2, 3))}ms>{line[m.end() :]}"


def perturb_lines(lines: Sequence[str], rng: random.Random, line_pool: Sequence[str]) -> list[str]:
    """A corrupted copy of a normal sequence, the synthetic negative of the one-class head.

    One or two of: drop a line, duplicate a line, swap two lines, replace a line by a line of
    another sequence, replace a word by a word of another line, shuffle the lines, make one timed
    step 100-1000 times slower (its duration bucket; a line without one gets a foreign line instead).
    """
    out = list(lines)
    for _ in range(rng.choice((1, 1, 2))):
        op = rng.choice(PERTURBATIONS)
        n = len(out)
        if op == "drop" and n > 2:
            del out[rng.randrange(n)]
        elif op == "duplicate":
            i = rng.randrange(n)
            out.insert(i + 1, out[i])
        elif op == "swap" and n > 1:
            i, j = rng.sample(range(n), 2)
            out[i], out[j] = out[j], out[i]
        elif op == "foreign_line" and line_pool:
            out[rng.randrange(n)] = rng.choice(line_pool)
        elif op == "foreign_token" and line_pool:
            i = rng.randrange(n)
            words = out[i].split()
            donor = rng.choice(line_pool).split()
            if words and donor:
                words[rng.randrange(len(words))] = rng.choice(donor)
                out[i] = " ".join(words)
        elif op == "shuffle" and n > 2:
            rng.shuffle(out)
        elif op == "slow" and any("<dur:" in x for x in out):
            i = rng.choice([k for k, x in enumerate(out) if "<dur:" in x])
            out[i] = _slow_down(out[i], rng) or out[i]
        else:
            out.insert(rng.randrange(n + 1), rng.choice(line_pool) if line_pool else out[0])
    if out == list(lines):  # the operations can cancel out; insert a foreign line then
        out.insert(rng.randrange(len(out) + 1), rng.choice(line_pool) if line_pool else "unexpected event")
    return out
