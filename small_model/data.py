"""Text and tensors for the detector: joined sequences, length-bucketed batches, masking, perturbations."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from core.normalize import Normalizer


def sequence_text(lines: Sequence[str], normalizer: Normalizer | None, separator: str = " [SEP] ") -> str:
    """The model input for one sequence: its normalized lines joined with ``[SEP]``."""
    if normalizer is not None:
        lines = [normalizer.normalize(line) for line in lines]
    return separator.join(line.strip() for line in lines)


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids (with [CLS] ... [SEP]) of each text, truncated to ``max_length``, unpadded."""
    if not texts:
        return []
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=True)
    return [list(ids) for ids in enc["input_ids"]]


def pad_batch(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest member: ``(input_ids, attention_mask)``, both (B, T)."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    return input_ids, attention_mask


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


def special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids never masked: [CLS], [SEP], [PAD] and the like."""
    return sorted({int(i) for i in tokenizer.all_special_ids if i is not None and i != tokenizer.mask_token_id})


def maskable(input_ids: torch.Tensor, attention_mask: torch.Tensor, never: Sequence[int]) -> torch.Tensor:
    """(B, T) bool: real tokens that may be masked."""
    ok = attention_mask.bool().clone()
    for token_id in never:
        ok &= input_ids != token_id
    return ok


def random_mlm_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    never: Sequence[int],
    mask_id: int,
    vocab_size: int,
    probability: float,
    generator: torch.Generator,
    whole_lines: torch.Tensor | None = None,
    sep_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking (80% [MASK], 10% random, 10% kept) of ``probability`` of the maskable tokens.

    ``whole_lines`` (B, L) bool with ``sep_id``: those log lines are masked whole besides (masked
    line modeling, see :func:`draw_lines`). Returns ``(masked_ids, mlm_labels)``; every sequence
    gets at least one masked token.
    """
    can = maskable(input_ids, attention_mask, never)  # (B, T)
    draw = torch.rand(input_ids.shape, generator=generator)
    chosen = (draw < probability) & can
    if whole_lines is not None and sep_id is not None:
        chosen |= whole_lines.gather(1, line_index(input_ids, sep_id)) & can  # (B, T) every token of those lines
    # at least one masked token per sequence: the maskable token with the lowest draw
    lowest = draw.masked_fill(~can, 2.0).argmin(dim=1)  # (B,)
    rows = can.any(dim=1)
    chosen[rows.nonzero(as_tuple=True)[0], lowest[rows]] = True
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    kind = torch.rand(input_ids.shape, generator=generator)
    masked = input_ids.clone()
    masked[chosen & (kind < 0.8)] = mask_id
    swap = chosen & (kind >= 0.8) & (kind < 0.9)
    masked[swap] = torch.randint(vocab_size, input_ids.shape, generator=generator)[swap]
    return masked, labels


def strided_masks(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    never: Sequence[int],
    mask_id: int,
    passes: int,
    sep_id: int | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Deterministic masking for reconstruction scores: in pass j the k-th maskable token with k % passes == j.

    With ``sep_id`` whole lines instead: in pass j every token of the lines k with k % passes == j,
    so each line is predicted from the others (a line out of place reconstructs badly).
    Over all passes each maskable token is masked exactly once, so summed NLLs are reproducible.
    """
    can = maskable(input_ids, attention_mask, never)  # (B, T)
    # (B, T) the line of each token, or the index of each maskable token within its row
    rank = line_index(input_ids, sep_id) if sep_id is not None else can.long().cumsum(dim=1) - 1
    out = []
    for j in range(passes):
        chosen = can & (rank % passes == j)
        labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
        out.append((input_ids.masked_fill(chosen, mask_id), labels))
    return out


def line_index(input_ids: torch.Tensor, sep_id: int) -> torch.Tensor:
    """(B, T) the index of the log line each token belongs to (the [SEP] ending a line counts with it)."""
    is_sep = (input_ids == sep_id).long()
    return is_sep.cumsum(dim=1) - is_sep


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


def draw_lines(input_ids: torch.Tensor, sep_id: int, probability: float, generator: torch.Generator) -> torch.Tensor:
    """(B, L) bool: each log line drawn with ``probability`` to be masked whole (L = most lines in a row)."""
    num_lines = int(line_index(input_ids, sep_id).max()) + 1
    return torch.rand((input_ids.shape[0], num_lines), generator=generator) < probability


def line_keys(text: str, separator: str, vocab: dict[str, int], other: int) -> list[int]:
    """The line-vocabulary class of each line of a joined text (``other`` for lines not in ``vocab``)."""
    return [vocab.get(line.strip(), other) for line in text.split(separator.strip())]


def line_targets(
    input_ids: torch.Tensor, keys: Sequence[Sequence[int]], sep_id: int, chosen: torch.Tensor
) -> torch.Tensor:
    """(B, L) line classes where ``chosen`` (B, L) and the line is in the ids, -100 elsewhere.

    When truncation cut the text (the ids hold fewer [SEP] than the text has lines), the lines
    past the cut and the line it cut have no target. A cut inside the last line leaves the [SEP]
    count whole: that line keeps its class (predicted from context, it is the same line).
    """
    out = torch.full(chosen.shape, -100, dtype=torch.long)
    seps = (input_ids == sep_id).sum(dim=1)  # (B,) lines present, the last one possibly cut
    for b, row in enumerate(keys):
        whole = len(row) if int(seps[b]) >= len(row) else max(0, int(seps[b]) - 1)
        n = min(whole, chosen.shape[1])
        if n:
            out[b, :n] = torch.tensor(row[:n], dtype=torch.long)
    return out.masked_fill(~chosen, -100)


def next_targets(input_ids: torch.Tensor, keys: Sequence[Sequence[int]], sep_id: int, end: int) -> torch.Tensor:
    """(B, L) forward line modeling targets: at line i, the class of line i + 1 (``end`` after the last
    line); -100 where line i is not whole in the ids (truncation cut it, as :func:`line_targets` says,
    or it is padding)."""
    seps = (input_ids == sep_id).sum(dim=1)  # (B,) lines present, the last one possibly cut
    out = torch.full((input_ids.shape[0], max(1, int(seps.max()) if len(seps) else 1)), -100, dtype=torch.long)
    for b, row in enumerate(keys):
        n = len(row) if int(seps[b]) >= len(row) else max(0, int(seps[b]) - 1)
        n = min(n, out.shape[1])
        if n:
            out[b, :n] = torch.tensor([*row[1 : n + 1], *([end] if n == len(row) else [])][:n], dtype=torch.long)
    return out
