"""What both explainer backends share (in process: :mod:`inference`; an OpenAI-compatible server:
:mod:`remote`): the answer's budget, the label choice, the field-by-field writing of the texts, the
validated explanation built from them, and what an explainer folder says of itself.

Nothing here imports torch, so the OpenAI-compatible backend runs without it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import LogTriageError, ModelError
from core.labels import OTHER
from large_model import prompts
from large_model.category_classifier import CLASSIFIER_FILE, CategoryClassifier
from large_model.evidence import FLOW_PROFILE_FILE, FlowProfile
from large_model.schema import Explanation

log = logging.getLogger(__name__)

# 736: the three fields' budgets and one retry of the longest (a field the model left open)
DEFAULT_MAX_NEW_TOKENS = sum(prompts.FIELD_TOKENS.values()) + max(prompts.FIELD_TOKENS.values())


def answer_span(max_new_tokens: int) -> int:
    """The most generated tokens an answer holds at once: a retry writes an open field again from the
    same place (the cache cut back), so the answer never grows past the three fields' budgets."""
    return min(max_new_tokens, sum(prompts.FIELD_TOKENS.values()))


@dataclass
class ExplainResult:
    """An explanation with what led to it: label scores, the raw generated text, timing."""

    explanation: Explanation
    category_scores: dict[str, float]
    severity_scores: dict[str, float]
    generated: str
    parsed: bool  # schema-valid: the model wrote all three text fields, each closed, non-empty, valid JSON
    seconds: float
    omitted_lines: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def grounding_source(log_entries: Sequence[str | bytes], messages: Sequence[Mapping[str, str]]) -> str:
    """What an explanation may name: the sequence's lines as given and as the model saw them, with the evidence."""
    lines = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in log_entries]
    shown = [m["content"] for m in messages if m.get("role") == "user"]
    return "\n".join([*lines, *shown])


def _fallback_text(field_name: str, category: str, severity: str, lang: str) -> str:
    what = category.replace("_", " ")
    if category == OTHER:
        other = {
            "zh": {
                "summary": f"检测到一个不属于已知类别的异常（严重程度 {severity}）。",
                "root_cause": "模型未给出根因；请查看日志序列。",
                "suggested_response": "查看被标记的日志行及其前后的日志，检查写出这些日志的组件。",
            },
            "en": {
                "summary": f"An anomaly unlike the known categories, of {severity} severity, was detected.",
                "root_cause": "The model gave no root cause; inspect the log sequence.",
                "suggested_response": "Read the flagged lines and those around them, and check the component "
                "that wrote them.",
            },
        }
        return other["zh" if lang == "zh" else "en"][field_name]
    if lang == "zh":
        table = {
            "summary": f"检测到 {what} 异常（严重程度 {severity}）。",
            "root_cause": "模型未给出根因；请查看日志序列。",
            "suggested_response": f"按 {what} 的处理手册排查受影响的服务。",
        }
    else:
        table = {
            "summary": f"A {what} anomaly of {severity} severity was detected.",
            "root_cause": "The model gave no root cause; inspect the log sequence.",
            "suggested_response": f"Follow the {what} runbook for the affected service.",
        }
    return table[field_name]


def build_explanation(
    category: str,
    severity: str,
    raws: Sequence[str],
    closed: Sequence[bool],
    lang: str,
    model: str,
    base: str,
) -> tuple[Explanation, bool]:
    """The validated Explanation from the chosen labels and the generated text fields.

    ``raws``/``closed``: per field of :data:`prompts.TEXT_KEYS` (as many as were generated), the
    raw JSON-string content and whether the model closed it within its budget. Returns ``True``
    (schema-valid) when the model wrote every field, closed, non-empty and valid JSON; a field it
    did not is kept as far as it got or filled with a fixed sentence, so the Explanation always
    validates.
    """
    values: dict[str, str] = {}
    complete = len(raws) == len(prompts.TEXT_KEYS)
    for index, key in enumerate(prompts.TEXT_KEYS):
        raw = raws[index] if index < len(raws) else ""
        decoded = prompts.decode_string(raw)
        ok = index < len(closed) and closed[index] and decoded is not None and bool(decoded.strip())
        complete = complete and ok
        text = (decoded if decoded is not None else raw.replace('\\"', '"')).strip()
        values[key] = text or _fallback_text(key, category, severity, lang)
    explanation = Explanation(category=category, severity=severity, model=model, base=base, **values)
    return explanation, complete


FUSION_WEIGHTS = tuple(i / 10 for i in range(11))  # the classifier's weights calibration tries, 0 first


def log_softmax(scores: Sequence[float]) -> list[float]:
    """``scores`` shifted so that their exponentials sum to 1."""
    top = max(scores)
    total = top + math.log(sum(math.exp(v - top) for v in scores))
    return [float(v) - total for v in scores]


def fuse_scores(scores: Sequence[float], classifier: Sequence[float] | None = None, weight: float = 0.0) -> list[float]:
    """The category scores the choice is made on: ``(1 - weight) * log_softmax(scores) + weight * classifier``.

    ``scores``: the LLM's label scores; ``classifier``: the category classifier's log-probabilities in the
    same order. Without a classifier or at weight 0, the LLM's scores as they are (the choice of old)."""
    if classifier is None or weight <= 0.0:
        return [float(v) for v in scores]
    if len(classifier) != len(scores):
        raise ModelError(f"{len(classifier)} classifier scores for {len(scores)} categories")
    return [(1.0 - weight) * v + weight * float(c) for v, c in zip(log_softmax(scores), classifier, strict=True)]


def choose_category(
    categories: Sequence[str],
    scores: Sequence[float],
    threshold: float | None = None,
    classifier: Sequence[float] | None = None,
    weight: float = 0.0,
) -> tuple[str, float]:
    """The category to report and its confidence: the best-scored one and its softmax share of the
    label scores (summed log-probabilities), fused with the category classifier's log-probabilities
    (``classifier``) at ``weight`` (:func:`fuse_scores`); :data:`core.labels.OTHER` when that share is
    below ``threshold`` (the explainer's calibrated ``category_threshold``; None: never)."""
    values = fuse_scores(scores, classifier, weight)
    best = max(range(len(values)), key=values.__getitem__)  # the first of equal bests, as argmax
    confidence = 1.0 / sum(math.exp(v - values[best]) for v in values)  # its softmax share
    if threshold is not None and confidence < threshold:
        return OTHER, confidence
    return categories[best], confidence


def choose_fusion_weight(
    categories: Sequence[str],
    truths: Sequence[str],
    scores: Sequence[Sequence[float]],
    classifier: Sequence[Sequence[float]],
    weights: Sequence[float] = FUSION_WEIGHTS,
) -> tuple[float, dict[str, float]]:
    """The classifier's weight with the best category accuracy on these (held-out) records, the smallest
    of equal bests (the LLM trusted where the classifier adds nothing); and the accuracy at every weight."""
    if not truths or not (len(truths) == len(scores) == len(classifier)):
        raise ModelError("the fusion weight needs records with both the LLM's and the classifier's scores")
    accuracy: dict[str, float] = {}
    best_weight, best = 0.0, -1.0
    for weight in sorted(weights):
        right = sum(
            choose_category(categories, s, None, c, weight)[0] == truth
            for truth, s, c in zip(truths, scores, classifier, strict=True)
        )
        accuracy[f"{weight:g}"] = right / len(truths)
        if right / len(truths) > best:
            best_weight, best = weight, right / len(truths)
    return best_weight, accuracy


def generate_fields(
    write: Callable[[str, int, str], tuple[str, bool, int]],
    category: str,
    severity: str,
    max_new_tokens: int,
    retry: Callable[[str, int, str], tuple[str, bool, int]] | None = None,
) -> tuple[list[str], list[bool]]:
    """The three text fields, one after the other, each a JSON string the model closes.

    ``write(answer, budget, key)``: the model's greedy text of the string that ``answer`` (the answer
    so far, :func:`prompts.field_prefix`) opens for the field ``key``, as ``(raw content, closed,
    tokens used)``. The
    fixed joints between the fields (``", "root_cause": "``) are written here, so the answer is
    valid JSON whenever the model closes each string; each field has its own budget
    (:data:`prompts.FIELD_TOKENS`), all of them together at most ``max_new_tokens``. ``retry``
    (same signature): a second way of writing a field that the first left open, tried once per
    field while the total budget lasts (its tokens count too).
    """
    raws: list[str] = []
    closed: list[bool] = []
    left = max_new_tokens
    for key in prompts.TEXT_KEYS:
        budget = min(prompts.FIELD_TOKENS[key], left)
        if budget <= 0:
            break
        prefix = prompts.field_prefix(category, severity, raws)
        raw, done, used = write(prefix, budget, key)
        left -= used
        if not done and retry is not None and left > 0:
            again, done_again, used_again = retry(prefix, min(prompts.FIELD_TOKENS[key], left), key)
            left -= used_again
            if done_again:
                raw, done = again, True
        raws.append(raw)
        closed.append(done)
    return raws, closed


def folder_profile(folder: Path, meta: Mapping[str, Any] | None = None) -> FlowProfile | None:
    """The flow profile an explainer folder was trained with, if any (``flow_profile.json``).

    ``meta``: the folder's ``explainer.json`` (read here when not given).
    """
    if meta is None:
        meta = read_meta(folder)
    path = folder / FLOW_PROFILE_FILE
    if path.is_file():
        try:
            profile = FlowProfile.load(path)
        except LogTriageError as exc:
            raise ModelError(f"cannot load the flow profile of {folder}: {exc}") from None
        log.info("flow evidence on: %s (%s)", path, profile.describe())
        return profile
    if meta and meta.get("evidence"):
        raise ModelError(f"{folder} was trained with the flow evidence but holds no {FLOW_PROFILE_FILE}")
    return None


def folder_classifier(folder: Path, meta: Mapping[str, Any] | None = None) -> tuple[CategoryClassifier | None, float]:
    """The category classifier of an explainer folder (``category_classifier.safetensors``), if any, and the
    weight of its log-probabilities in the fused choice (``fusion_weight`` in ``explainer.json``; 0 where
    the run chose none). A folder calibrated with a classifier that holds none is a :class:`ModelError`."""
    if meta is None:
        meta = read_meta(folder)
    try:
        weight = float(meta.get("fusion_weight") or 0.0)
    except (TypeError, ValueError):
        raise ModelError(f"{folder / 'explainer.json'}: fusion_weight is not a number") from None
    if not 0.0 <= weight <= 1.0:
        raise ModelError(f"{folder / 'explainer.json'}: fusion_weight {weight} is not between 0 and 1")
    path = folder / CLASSIFIER_FILE
    if not path.is_file():
        if weight > 0:
            raise ModelError(f"{folder} was calibrated with a category classifier (weight {weight}) but holds no "
                             f"{CLASSIFIER_FILE}")  # fmt: skip
        return None, 0.0
    classifier = CategoryClassifier.load(path)
    log.info("category classifier: %s (%d classes, %d terms), weight %g", path, len(classifier.classes),
             len(classifier.terms), weight)  # fmt: skip
    return classifier, weight


def read_meta(path: Path) -> dict[str, Any]:
    """The folder's ``explainer.json`` ({} where it has none)."""
    meta_file = path / "explainer.json"
    if not meta_file.is_file():
        return {}
    try:
        return dict(json.loads(meta_file.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{meta_file} is not valid JSON: {exc}") from None
