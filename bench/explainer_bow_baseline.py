"""The explainer's category classifier alone (TF-IDF + logistic regression), on train-large's split.

    .venv/bin/python bench/explainer_bow_baseline.py --data data/instructions_chat.jsonl [--no-evidence]

The classifier is the one ``train-large`` fits and the explainer fuses with the LLM's label scores
(:mod:`large_model.category_classifier`): the lines through the explainer's own prompt cleaning (relative
timestamps, short ids), followed by the prompt's comparison with normal runs (``normal_reference.jsonl``
beside the data; ``--no-evidence``: the lines alone). Training and held-out sets are the ones
``train-large`` uses (its examples, the real-log ``other`` records included where they exist; hash of the
sequence id, 20%). Prints the held-out accuracy on the known categories per language and overall, and
the share of held-out real records answered ``other``. Figures only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.labels import OTHER  # noqa: E402
from large_model.category_classifier import fit_category_classifier  # noqa: E402
from large_model.encoding import split_examples  # noqa: E402
from large_model.train_args import TrainLargeArgs  # noqa: E402
from large_model.train_data import load_training_examples, reference_profile  # noqa: E402


def main() -> None:
    """Fit on the training part, print held-out accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "instructions_chat.jsonl")
    parser.add_argument("--no-evidence", dest="evidence", action="store_false", help="the lines alone")
    args = parser.parse_args()
    run = TrainLargeArgs(data=args.data, evidence=args.evidence)
    examples, labels, _ = load_training_examples(run)
    train, held = split_examples(examples, run.holdout_fraction, run.seed)
    profile, _ = reference_profile(run)
    started = time.perf_counter()
    classifier = fit_category_classifier(train, profile)
    if classifier is None:
        sys.exit("fewer than 2 categories in the training part")
    fitted = time.perf_counter() - started
    rows = [e for e in held if e.log_entries]
    cats = labels.categories
    chosen = []
    for e in rows:
        scores = classifier.category_log_probs(cats, e.log_entries or [], e.lang, profile)
        chosen.append(cats[max(range(len(cats)), key=scores.__getitem__)])
    known = [(c, e) for c, e in zip(chosen, rows, strict=True) if e.category != OTHER]
    for lang in ("en", "zh"):
        part = [(c, e) for c, e in known if e.lang == lang]
        if part:
            print(f"{lang}: {sum(c == e.category for c, e in part) / len(part):.3f} ({len(part)} held out)")
    total = sum(c == e.category for c, e in known)
    print(f"all: {total / len(known):.3f} ({len(known)} held out, {len(train)} trained on, "
          f"{len(classifier.terms)} terms, fitted in {fitted:.1f} s; evidence {'on' if profile else 'off'})")  # fmt: skip
    real = [c for c, e in zip(chosen, rows, strict=True) if e.category == OTHER]
    if real:
        print(f"real-log records answered other: {sum(c == OTHER for c in real)} of {len(real)}")


if __name__ == "__main__":
    main()
