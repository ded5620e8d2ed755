"""A reference for the explainer's category accuracy: TF-IDF + logistic regression, same split.

    .venv/bin/python bench/explainer_bow_baseline.py --data data/instructions_chat.jsonl

The lines go through the explainer's own prompt cleaning (relative timestamps, short ids);
training and held-out sets are the ones ``train-large`` uses (hash of the sequence id, 20%).
Prints the held-out accuracy per language and overall. Figures only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from large_model import prompts  # noqa: E402
from large_model.encoding import Example, load_examples, split_examples  # noqa: E402
from large_model.schema import LabelSet  # noqa: E402


def text_of(example: Example) -> str:
    """The log lines as the explainer's prompt shows them."""
    lines = prompts.relative_timestamps(prompts.clean_lines(example.log_entries or []))
    return "\n".join(prompts.shorten_ids(line) for line in lines)


def main() -> None:
    """Fit on the training part, print held-out accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "instructions_chat.jsonl")
    args = parser.parse_args()
    labels = LabelSet.from_json(args.data.parent / "labels.json")
    train, held = split_examples(load_examples(args.data, labels), 0.2, 42)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x_train = vectorizer.fit_transform([text_of(e) for e in train])
    clf = LogisticRegression(C=10, max_iter=2000).fit(x_train, [e.category for e in train])
    predicted = clf.predict(vectorizer.transform([text_of(e) for e in held]))
    for lang in ("en", "zh"):
        rows = [i for i, e in enumerate(held) if e.lang == lang]
        if rows:
            hits = sum(predicted[i] == held[i].category for i in rows)
            print(f"{lang}: {hits / len(rows):.3f} ({len(rows)} held out)")
    total = sum(p == e.category for p, e in zip(predicted, held, strict=True))
    print(f"all: {total / len(held):.3f} ({len(held)} held out, {len(train)} trained on)")


if __name__ == "__main__":
    main()
