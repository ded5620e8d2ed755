"""Evaluation of the explainer: ``logtriage evaluate-large``.

    OMP_WAIT_POLICY=PASSIVE logtriage evaluate-large \\
        --model artifacts/explainer --compare-base --report artifacts/explainer/eval.json

Data: records with ``log_entries``, ``category``, ``severity`` and a reference
``suggested_response`` (default: the ``heldout.jsonl`` the training run saved in the model
folder). Figures: category accuracy and macro-F1, severity accuracy, the category confusion
matrix, the schema-valid rate (the model wrote all three text fields, each a non-empty JSON string
it closed within its token budget, so the answer parsed as the JSON object with nothing filled in;
the returned Explanation always validates; the report keeps up to 20 of the answers that were not,
as generated), ROUGE-L F1 of suggested responses and root
causes against the references, and latency per explanation. ``--compare-base`` evaluates the
untuned base the same way (same prompts, same label scoring) beside it. Where the model folder
holds a flow profile (trained with the comparison with normal runs, :mod:`large_model.evidence`),
both the tuned model and the base get that comparison in their prompts: the same input.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import DataError
from core.io import write_json
from core.labels import OTHER
from large_model.answer import DEFAULT_MAX_NEW_TOKENS, ExplainResult
from large_model.encoding import iter_json_rows
from large_model.grounding import has_loop, ungrounded, words
from large_model.schema import LabelSet

log = logging.getLogger(__name__)

MAX_INVALID_SHOWN = 20  # answers that were not schema-valid kept in the report


class _Tokenizer:
    """ROUGE tokens: lower-cased ASCII words and single CJK characters (rouge-score drops CJK)."""

    def tokenize(self, text: str) -> list[str]:
        return words(text)


def _lcs_f1(prediction: list[str], reference: list[str]) -> float:
    """ROUGE-L F1 from the longest common subsequence (what rouge-score computes)."""
    if not prediction or not reference:
        return 0.0
    previous = [0] * (len(reference) + 1)
    for token in prediction:
        current = [0]
        for j, ref_token in enumerate(reference):
            current.append(previous[j] + 1 if token == ref_token else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(prediction), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 of predictions against references (rouge-score where installed, else the same LCS here)."""
    if not predictions:
        return 0.0
    tokenizer = _Tokenizer()
    try:
        from rouge_score import rouge_scorer
    except ImportError:  # e.g. a GPU machine with only the wheels carried to it
        scores = [
            _lcs_f1(tokenizer.tokenize(pred), tokenizer.tokenize(ref))
            for pred, ref in zip(predictions, references, strict=True)
        ]
    else:
        scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=tokenizer)
        scores = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references, strict=True)]
    return float(sum(scores) / len(scores))


def classification_figures(truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 (over labels present in truth or predictions) and the confusion matrix."""
    n = len(truth)
    accuracy = sum(t == p for t, p in zip(truth, predicted, strict=True)) / n if n else 0.0
    names = list(labels) + sorted({*truth, *predicted} - set(labels))
    index = {name: i for i, name in enumerate(names)}
    matrix = [[0] * len(names) for _ in names]
    for t, p in zip(truth, predicted, strict=True):
        matrix[index[t]][index[p]] += 1
    f1s = []
    for i, name in enumerate(names):
        tp = matrix[i][i]
        fp = sum(matrix[r][i] for r in range(len(names))) - tp
        fn = sum(matrix[i]) - tp
        if tp + fp + fn == 0:
            continue  # a label absent from both sides does not count
        f1s.append(2 * tp / (2 * tp + fp + fn))
        del name
    return {
        "accuracy": accuracy,
        "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0,
        "labels": names,
        "confusion_matrix": matrix,
    }


def load_eval_rows(
    path: str | Path, labels: LabelSet, limit: int | None = None, lang: str | None = None
) -> list[dict[str, Any]]:
    """Evaluation records (log_entries, category, severity, references), optionally one language only.

    A record without category and severity (real logs outside the taxonomy) counts for the texts only:
    loops, grounding, latency."""
    rows = []
    for number, row in enumerate(iter_json_rows(path), 1):
        if lang and row.get("lang", "en") != lang:
            continue
        if not isinstance(row.get("log_entries"), list):
            raise DataError("evaluation records need log_entries", path, number)
        category = row.get("category") or row.get("anomaly_type")
        if (category is None) != (row.get("severity") is None):
            raise DataError("evaluation records need both category and severity, or neither", path, number)
        rows.append({**row, "category": category})
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise DataError("no evaluation records", path)
    unknown = {r["category"] for r in rows if r["category"] is not None} - set(labels.categories)
    if unknown:
        log.warning("categories not among the model's labels (always counted wrong): %s", sorted(unknown))
    return rows


def _explain_all(
    explainer: Any, rows: Sequence[dict[str, Any]], progress: bool, desc: str, generated_n: int
) -> tuple[list[ExplainResult], list[float]]:
    """The explainer's result for every row (texts for the first ``generated_n``) and those rows' latencies."""
    from tqdm.auto import tqdm

    results: list[ExplainResult] = []
    latencies: list[float] = []
    for index, row in enumerate(tqdm(rows, desc=desc, unit="seq", disable=not progress)):
        started = time.perf_counter()
        result = explainer.explain_detailed(row["log_entries"], row.get("lang", "en"), generate=index < generated_n)
        if index < generated_n:
            latencies.append(time.perf_counter() - started)
        results.append(result)
    return results, latencies


def _by_source(
    results: list[ExplainResult], rows: Sequence[dict[str, Any]], checks: list[dict[str, Any]], generated_n: int
) -> dict[str, dict[str, Any]]:
    """The other rate, category accuracy, grounding and loop rates per row source."""
    by_source: dict[str, dict[str, Any]] = {}
    for index, (x, r) in enumerate(zip(results, rows, strict=True)):
        part = by_source.setdefault(str(r.get("source") or "synthetic"), {"n": 0, "other": 0, "right": 0,
                                    "labeled": 0, "generated": 0, "grounded": 0, "loops": 0})  # fmt: skip
        part["n"] += 1
        part["other"] += x.explanation.category == OTHER
        if r["category"] is not None:
            part["labeled"] += 1
            part["right"] += x.explanation.category == r["category"]
        if index < generated_n:
            part["generated"] += 1
            part["grounded"] += not checks[index]["ungrounded"]
            part["loops"] += checks[index]["loop"]
    return {
        name: {
            "n": p["n"],
            "other_rate": p["other"] / p["n"],
            "category_accuracy": p["right"] / p["labeled"] if p["labeled"] else None,
            "n_generated": p["generated"],
            "grounding_rate": p["grounded"] / p["generated"] if p["generated"] else None,
            "loop_rate": p["loops"] / p["generated"] if p["generated"] else None,
        }
        for name, p in by_source.items()
    }


def _text_figures(
    results_gen: list[ExplainResult], rows: Sequence[dict[str, Any]], checks: list[dict[str, Any]]
) -> dict[str, Any]:
    """Schema-valid, loop and grounding rates and ROUGE-L of the generated texts."""
    with_ref = [(x, r) for x, r in zip(results_gen, rows, strict=False) if r.get("suggested_response")]
    with_cause = [(x, r) for x, r in zip(results_gen, rows, strict=False) if r.get("root_cause")]
    return {
        "schema_valid_rate": sum(x.parsed for x in results_gen) / len(results_gen) if results_gen else 0.0,
        "loop_rate": sum(c["loop"] for c in checks) / len(checks) if checks else 0.0,
        "grounding_rate": sum(not c["ungrounded"] for c in checks) / len(checks) if checks else 0.0,
        "rouge_l_suggested_response": rouge_l(
            [x.explanation.suggested_response for x, _ in with_ref], [r["suggested_response"] for _, r in with_ref]
        ),
        "rouge_l_root_cause": rouge_l(
            [x.explanation.root_cause for x, _ in with_cause], [r["root_cause"] for _, r in with_cause]
        ),
    }


def _latency_figures(latencies: list[float]) -> dict[str, float]:
    """Mean, median and 95th percentile of the generation latencies."""
    sorted_lat = sorted(latencies) or [0.0]
    return {
        "latency_mean_s": statistics.fmean(latencies) if latencies else 0.0,
        "latency_p50_s": sorted_lat[len(sorted_lat) // 2],
        "latency_p95_s": sorted_lat[min(len(sorted_lat) - 1, int(0.95 * len(sorted_lat)))],
    }


def _findings(
    results: list[ExplainResult],
    results_gen: list[ExplainResult],
    rows: Sequence[dict[str, Any]],
    checks: list[dict[str, Any]],
) -> dict[str, Any]:
    """A few examples, and the answers to look at: not schema-valid, not grounded, looping."""
    return {
        "examples": [
            {
                "sequence_id": r.get("sequence_id"),
                "truth": {"category": r["category"], "severity": r.get("severity")},
                "explanation": x.explanation.model_dump(),
                "parsed": x.parsed,
                "generated": x.generated,
            }
            for x, r in list(zip(results, rows, strict=True))[:5]
        ],
        # the answers that were not schema-valid, as the model wrote them: what to look at first
        "not_schema_valid": [
            {"sequence_id": r.get("sequence_id"), "lang": r.get("lang", "en"), "generated": x.generated}
            for x, r in zip(results_gen, rows, strict=False)
            if not x.parsed
        ][:MAX_INVALID_SHOWN],
        # what the texts named that the input does not show, and the answers that loop
        "not_grounded": [c for c in checks if c["ungrounded"]][:MAX_INVALID_SHOWN],
        "loops": [c for c in checks if c["loop"]][:MAX_INVALID_SHOWN],
    }


def evaluate_explainer(
    explainer: Any,
    rows: Sequence[dict[str, Any]],
    progress: bool = True,
    desc: str = "evaluate",
    generate_limit: int | None = None,
) -> dict[str, Any]:
    """Every figure for one explainer over ``rows``.

    Labels are scored on every row; the texts are generated for the first ``generate_limit``
    rows only (all where None): schema-valid rate, ROUGE-L and latency count those rows.
    """
    generated_n = len(rows) if generate_limit is None else min(generate_limit, len(rows))
    results, latencies = _explain_all(explainer, rows, progress, desc, generated_n)
    scored_only = results[generated_n:]
    results_gen = results[:generated_n]
    labels: LabelSet = explainer.labels
    labeled = [(x, r) for x, r in zip(results, rows, strict=True) if r["category"] is not None]
    cats = classification_figures(
        [r["category"] for _, r in labeled], [x.explanation.category for x, _ in labeled], labels.categories
    )
    sevs = classification_figures(
        [r["severity"] for _, r in labeled], [x.explanation.severity for x, _ in labeled], labels.severities
    )
    checks = [_text_checks(x, r) for x, r in zip(results_gen, rows, strict=False)]
    scoring_s = [x.seconds for x in scored_only]
    confidences = [x.explanation.confidence for x in results if x.explanation.confidence is not None]
    return {
        "model": explainer.name,
        "base": explainer.base,
        "evidence": getattr(explainer, "flow_profile", None) is not None,
        "n": len(rows),
        "n_labeled": len(labeled),
        "n_generated": generated_n,
        "label_scoring_mean_s": statistics.fmean(scoring_s) if scoring_s else None,
        "category_accuracy": cats["accuracy"],
        "category_macro_f1": cats["macro_f1"],
        "other_rate": sum(x.explanation.category == OTHER for x in results) / len(results) if results else 0.0,
        "confidence_mean": statistics.fmean(confidences) if confidences else None,
        "category_threshold": getattr(explainer, "category_threshold", None),
        # the category classifier's weight in the fused category choice (0: the LLM alone)
        "fusion_weight": getattr(explainer, "fusion_weight", 0.0) if getattr(explainer, "classifier", None) else 0.0,
        "by_source": _by_source(results, rows, checks, generated_n),
        "severity_accuracy": sevs["accuracy"],
        **_text_figures(results_gen, rows, checks),
        **_latency_figures(latencies),
        "category_confusion": {"labels": cats["labels"], "matrix": cats["confusion_matrix"]},
        "severity_confusion": {"labels": sevs["labels"], "matrix": sevs["confusion_matrix"]},
        **_findings(results, results_gen, rows, checks),
    }


def _text_checks(result: ExplainResult, row: dict[str, Any]) -> dict[str, Any]:
    """Loops (any text field) and the names and numbers of the summary and root cause that the input lacks."""
    e = result.explanation
    source = str(result.extra.get("source") or "\n".join(map(str, row["log_entries"])))
    return {
        "sequence_id": row.get("sequence_id"),
        "loop": any(has_loop(text) for text in (e.summary, e.root_cause, e.suggested_response)),
        "ungrounded": ungrounded([e.summary, e.root_cause], source),
    }


FIGURES = (
    ("category_accuracy", "category accuracy"),
    ("category_macro_f1", "category macro-F1"),
    ("severity_accuracy", "severity accuracy"),
    ("other_rate", "answered other"),
    ("schema_valid_rate", "schema-valid rate"),
    ("grounding_rate", "grounding rate"),
    ("loop_rate", "loop rate"),
    ("rouge_l_suggested_response", "ROUGE-L suggested response"),
    ("rouge_l_root_cause", "ROUGE-L root cause"),
    ("latency_mean_s", "latency mean (s)"),
    ("latency_p95_s", "latency p95 (s)"),
)


def _cell(report: dict[str, Any], key: str) -> str:
    if key.startswith(("category", "severity")) and not report.get("n_labeled", report["n"]):
        return "-"  # no labeled record: no label figures
    return f"{report[key]:.3f}"


def format_table(reports: dict[str, dict[str, Any]]) -> str:
    """The figures of one or more evaluated models side by side."""
    names = list(reports)
    width = max(len(label) for _, label in FIGURES) + 2
    cols = [max(12, len(n) + 2) for n in names]
    lines = ["".ljust(width) + "".join(n.rjust(c) for n, c in zip(names, cols, strict=True))]
    for key, label in FIGURES:
        cells = "".join(_cell(reports[n], key).rjust(c) for n, c in zip(names, cols, strict=True))
        lines.append(label.ljust(width) + cells)
    lines.append("n".ljust(width) + "".join(str(reports[n]["n"]).rjust(c) for n, c in zip(names, cols, strict=True)))
    lines.append(
        "n generated".ljust(width)
        + "".join(str(reports[n]["n_generated"]).rjust(c) for n, c in zip(names, cols, strict=True))
    )
    sources = reports[names[0]].get("by_source") or {}
    if len(sources) > 1:
        lines.append("")
        lines.append(f"by source ({names[0]}):      n  other  category acc  grounding  loops")
        for name, part in sources.items():
            acc = "-" if part["category_accuracy"] is None else f"{part['category_accuracy']:.3f}"
            ground = "-" if part["grounding_rate"] is None else f"{part['grounding_rate']:.3f}"
            loops = "-" if part["loop_rate"] is None else f"{part['loop_rate']:.3f}"
            lines.append(
                f"  {name[:22]:<22}{part['n']:>5}  {part['other_rate']:.3f}  {acc:>12}  {ground:>9}  {loops:>5}"
            )
    first = reports[names[0]]["category_confusion"]
    if not reports[names[0]].get("n_labeled", reports[names[0]]["n"]):
        return "\n".join(lines)  # no labeled record: no confusion matrix
    lines.append("")
    lines.append(f"category confusion ({names[0]}; rows truth, columns predicted):")
    short = [label[:8] for label in first["labels"]]
    lines.append(" " * 22 + "".join(s.rjust(9) for s in short))
    for label, row in zip(first["labels"], first["matrix"], strict=True):
        lines.append(label[:21].ljust(22) + "".join(str(v).rjust(9) for v in row))
    return "\n".join(lines)


def run(ns: argparse.Namespace) -> int:
    """The ``evaluate-large`` handler: evaluates, writes the JSON report, prints the table."""
    from large_model.inference import Explainer

    model_dir = Path(ns.model)
    explainer = Explainer.from_pretrained(model_dir, device=ns.device, dtype=ns.dtype, max_new_tokens=ns.max_new_tokens)
    explainer.grounded = ns.grounded
    data = Path(ns.data) if ns.data else model_dir / "heldout.jsonl"
    rows = load_eval_rows(data, explainer.labels, ns.limit, ns.lang)
    reports = {"tuned": evaluate_explainer(explainer, rows, ns.progress, "tuned", ns.generate_limit)}
    if ns.compare_base:
        base = Explainer.from_pretrained(
            ns.base or explainer.base,
            device=ns.device,
            dtype=ns.dtype,
            max_new_tokens=ns.max_new_tokens,
            labels=explainer.labels,
            flow_profile=explainer.flow_profile,  # the same prompts as the tuned model's
        )
        base.grounded = ns.grounded
        del explainer
        reports["base"] = evaluate_explainer(base, rows, ns.progress, "base", ns.generate_limit)
    report = {"data": str(data), "reports": reports}
    target = Path(ns.report) if ns.report else model_dir / "eval.json"
    write_json(target, report)
    sys.stdout.write(format_table(reports) + f"\n\nreport: {target}\n")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``evaluate-large`` flags."""
    parser.add_argument("--model", type=Path, default=Path("artifacts/explainer"), help="the explainer folder")
    parser.add_argument(
        "--data", type=Path, default=None, help="records to evaluate on (default: <model>/heldout.jsonl)"
    )
    parser.add_argument("--compare-base", action="store_true", help="evaluate the untuned base beside it")
    parser.add_argument("--base", default=None, help="the base to compare with (default: the model's own base)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N records only")
    parser.add_argument("--lang", choices=("en", "zh"), default=None, help="evaluate one language only")
    parser.add_argument(
        "--generate-limit", type=int, default=None, help="generate texts for the first N records only (labels: all)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto, bf16, fp32")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--report", type=Path, default=None, help="JSON report path (default: <model>/eval.json)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument(
        "--no-grounding",
        dest="grounded",
        action="store_false",
        help="generate without the copying constraint on names and numbers (to measure what it does)",
    )
    return parser
