"""Speed of the detection path against what the model itself allows, in one run.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_detect.py runs/eval-real/hdfs_sessions/moebert/model \\
        --data ../shared/datasets/hdfs_sessions/test.jsonl.gz [--device auto] [--batch-size 256] [--repeat 3]

Figures (sequences per second, the best of ``--repeat`` timed runs after one warm-up run, on the same
sequences in the same process):

- ``score``: :meth:`MoEBertDetector.score` end to end (normalization, the line cache, every pass, the
  fusion), the warm cache as a long-running service has it;
- ``score (cold cache)``: the same with an empty line cache (every distinct line encoded once);
- ``line_scores``: the model passes alone (head, forward line modeling, masked line modeling) with the
  host work they need, after normalization;
- ``bare forward``: one forward pass of the sequence model (the head pass) over the same windows with
  every input already on the device: what the model itself allows;
- ``host preprocessing``: normalization and the line-table lookup alone.

With ``--compare-device D`` the scores of the same sequences on D are compared with these (the largest
absolute difference is printed: CPU and GPU agree within bf16 rounding). Prints a Markdown table and
writes ``--json`` when given. Figures only, no assertions.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.devices import resolve_device
from core.io import read_records
from small_model.data import LineVectors, window_starts
from small_model.scoring import MoEBertDetector, line_batch


def best_rate(n: int, run: Callable[[], Any], repeat: int, sync: Callable[[], None]) -> float:
    """Sequences per second: ``n`` over the fastest of ``repeat`` timed runs (one warm-up run first)."""
    run()
    sync()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - started)
    return n / min(times)


def bare_forward(detector: MoEBertDetector, normalized: list[list[str]]) -> Callable[[], None]:
    """One head pass of the model over the windows of ``normalized``, inputs built on the device beforehand."""
    size, end = int(detector.config.max_lines), detector.model.end_class
    device = detector.device
    batches = []
    for begin in range(0, len(normalized), detector.batch_size):
        windows = []
        for seq in normalized[begin : begin + detector.batch_size]:
            ids, classes = detector.vectors.ids(seq), detector.line_classes(seq)
            for a in window_starts(len(seq), size):
                windows.append((ids[a : a + size], classes[a : a + size], a + size >= len(seq)))
        batch = line_batch(windows, end)
        vectors = detector.vectors.table[batch.ids.to(detector.vectors.device)]
        batches.append((vectors, batch.classes.to(device), batch.real.to(device)))

    @torch.inference_mode()
    def run() -> None:
        for vectors, classes, real in batches:
            detector.model(vectors, classes, real)

    return run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="a MoE-BERT detector folder")
    p.add_argument("--data", type=Path, required=True, help="sequence records (JSON, JSONL, .gz)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=None, help="the first N sequences only")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--normalize-workers", type=int, default=None, help="processes that normalize (default: the detector's)"
    )
    p.add_argument("--compare-device", default=None, help="also score on this device and compare the scores")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    records = list(read_records(args.data))[: args.limit]
    sequences = [r.log_entries for r in records]
    n = len(sequences)
    detector = MoEBertDetector.from_pretrained(args.model, batch_size=args.batch_size, device=device)
    if args.normalize_workers is not None:
        detector.normalize_workers = args.normalize_workers

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    normalized = detector.normalize(sequences)
    figures: dict[str, Any] = {
        "model": str(args.model),
        "data": str(args.data),
        "sequences": n,
        "mean_lines": float(np.mean([len(s) for s in sequences])),
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "normalize_workers": detector.normalize_workers,
    }
    rates: dict[str, float] = {}
    rates["score"] = best_rate(n, lambda: detector.score(sequences), args.repeat, sync)

    def cold() -> None:
        detector.vectors = LineVectors(detector._encode_lines, detector.vectors.dim, device=detector.device)
        detector.score(sequences)

    rates["score (cold cache)"] = best_rate(n, cold, 1, sync)
    rates["line_scores"] = best_rate(n, lambda: detector.line_scores(normalized), args.repeat, sync)
    rates["bare forward"] = best_rate(n, bare_forward(detector, normalized), args.repeat, sync)
    rates["host preprocessing"] = best_rate(
        n, lambda: [detector.vectors.ids(s) for s in detector.normalize(sequences)], args.repeat, sync
    )
    figures["seq_per_s"] = rates
    figures["score_over_bare"] = rates["score"] / rates["bare forward"]
    if args.compare_device:
        scores = detector.score(sequences)
        other = MoEBertDetector.from_pretrained(args.model, batch_size=args.batch_size, device=args.compare_device)
        diff = np.abs(other.score(sequences) - scores)
        figures["compare"] = {"device": args.compare_device, "max_abs_diff": float(diff.max()),
                              "flag_disagreements": int(((scores >= detector.threshold)
                                                         != (other.score(sequences) >= other.threshold)).sum())}  # fmt: skip
    print(f"{args.model} on {args.data}: {n} sequences, {figures['mean_lines']:.1f} lines each, "
          f"{figures['device']}, {figures['torch_threads']} threads, batch {args.batch_size}, "
          f"{detector.normalize_workers} normalizing processes")  # fmt: skip
    print("\n| what | seq/s | × bare forward |\n|---|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.0f} | {rate / rates['bare forward']:.3f} |")
    if "compare" in figures:
        c = figures["compare"]
        print(
            f"\nscores on {c['device']}: max |diff| {c['max_abs_diff']:.2e}, {c['flag_disagreements']} decisions differ"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
