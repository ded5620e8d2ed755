"""Stratified train/validation/test split of a sequence file, plus a normal-only training set.

    python data_gen/data_splitter.py --input data/log_sequences_strings.json --output-dir data/splits \
        --train-ratio 0.8 --val-ratio 0.1 --test-ratio 0.1 --seed 42

Strata are (label, anomaly_type). The split sizes are exact (6400/800/800 for 8000 records) and
each stratum keeps its share within one record (largest-remainder allocation). Records keep their
input order inside each split. Writes ``train``, ``val``, ``test`` and ``train_normal`` (the
label-0 records of train, for the label-free track).
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core.cli_args import run_cli
from core.errors import LogTriageError
from core.io import read_records, write_records
from core.schema import SequenceRecord
from data_gen.cli_utils import derive_seed, setup_logging

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
Stratum = tuple[int | None, str | None]


@dataclass
class Split:
    """The three parts of a split, each in input order."""

    train: list[SequenceRecord]
    val: list[SequenceRecord]
    test: list[SequenceRecord]

    def part(self, name: str) -> list[SequenceRecord]:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    """Three non-negative ratios that sum to 1."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or not math.isclose(sum(ratios), 1.0, abs_tol=1e-6):
        raise LogTriageError(f"split ratios must be three non-negative numbers summing to 1, got {list(ratios)}")
    return ratios[0], ratios[1], ratios[2]


def split_sizes(n: int, ratios: Sequence[float]) -> tuple[int, int, int]:
    """Exact part sizes: validation and test rounded, train takes the rest (8000 -> 6400/800/800)."""
    _, val, test = check_ratios(ratios)
    n_val = round(n * val)
    n_test = min(round(n * test), n - n_val)
    return n - n_val - n_test, n_val, n_test


def _allocate(sizes: dict[Stratum, int], total: int, ratio: float, room: dict[Stratum, int]) -> dict[Stratum, int]:
    """Largest-remainder shares of ``total`` over strata, proportional to ``ratio`` and within ``room``."""
    keys = sorted(sizes, key=repr)
    share = {k: min(math.floor(sizes[k] * ratio), room[k]) for k in keys}
    left = total - sum(share.values())
    order = sorted(keys, key=lambda k: (-(sizes[k] * ratio % 1), repr(k)))
    while left > 0:
        grew = False
        for k in order:
            if left > 0 and share[k] < room[k]:
                share[k] += 1
                left -= 1
                grew = True
        if not grew:
            break
    return share


def stratified_split(records: Sequence[SequenceRecord], ratios: Sequence[float], seed: int) -> Split:
    """Split records by (label, anomaly_type) strata into exact train/val/test sizes."""
    _, val_ratio, test_ratio = check_ratios(ratios)
    _, n_val, n_test = split_sizes(len(records), ratios)
    strata: dict[Stratum, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        strata[(record.label, record.anomaly_type)].append(i)
    sizes = {k: len(v) for k, v in strata.items()}
    val_share = _allocate(sizes, n_val, val_ratio, dict(sizes))
    room = {k: sizes[k] - val_share[k] for k in sizes}
    test_share = _allocate(sizes, n_test, test_ratio, room)
    rng = random.Random(derive_seed(seed, "split"))
    assignment: dict[int, str] = {}
    for key in sorted(strata, key=repr):
        members = list(strata[key])
        rng.shuffle(members)
        v, t = val_share[key], test_share[key]
        for j, index in enumerate(members):
            assignment[index] = "val" if j < v else "test" if j < v + t else "train"
    parts: dict[str, list[SequenceRecord]] = {name: [] for name in SPLITS}
    for i, record in enumerate(records):
        parts[assignment[i]].append(record)
    return Split(parts["train"], parts["val"], parts["test"])


def summary_table(split: Split) -> str:
    """Counts per (label, anomaly_type) and split, as a plain-text table."""
    counts: dict[Stratum, dict[str, int]] = defaultdict(lambda: dict.fromkeys(SPLITS, 0))
    for name in SPLITS:
        for record in split.part(name):
            counts[(record.label, record.anomaly_type)][name] += 1
    rows: list[tuple[str, ...]] = [("label", "anomaly_type", "total", *SPLITS)]
    keys = sorted(counts, key=lambda k: (-1 if k[0] is None else k[0], k[1] or ""))
    for key in keys:
        c = counts[key]
        label = "-" if key[0] is None else str(key[0])
        rows.append((label, key[1] or "-", str(sum(c.values())), *(str(c[n]) for n in SPLITS)))
    totals = [len(split.part(n)) for n in SPLITS]
    rows.append(("all", "", str(sum(totals)), *(str(t) for t in totals)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(len(lines) - 1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script."""
    parser = argparse.ArgumentParser(
        prog="data_splitter.py",
        description="Stratified train/val/test split of a sequence file (JSON, JSONL or CSV).",
    )
    parser.add_argument(
        "--input", type=Path, default=Path("data/log_sequences_strings.json"), help="sequence file to split"
    )
    parser.add_argument("--output-dir", type=Path, default=Path("data/splits"), help="output folder")
    parser.add_argument("--train-ratio", type=float, default=0.8)
    parser.add_argument("--val-ratio", type=float, default=0.1)
    parser.add_argument("--test-ratio", type=float, default=0.1)
    parser.add_argument("--format", choices=("json", "jsonl", "csv"), default="json", help="output format")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no summary table, warnings only")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Split the input file and write train, val, test and train_normal."""
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)

    def body() -> int:
        ratios = check_ratios((args.train_ratio, args.val_ratio, args.test_ratio))
        records = read_records(args.input)
        split = stratified_split(records, ratios, args.seed)
        train_normal = [r for r in split.train if r.label == 0]
        if not train_normal:
            log.warning("no normal (label 0) records in train: train_normal is empty")
        out: Path = args.output_dir
        files = {**{name: split.part(name) for name in SPLITS}, "train_normal": train_normal}
        for name, part in files.items():
            write_records(out / f"{name}.{args.format}", part)
        if not args.quiet:
            print(summary_table(split))
            print(f"train_normal: {len(train_normal)}")
        log.info("wrote %s to %s", ", ".join(f"{k}.{args.format}" for k in files), out)
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
