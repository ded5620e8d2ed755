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


def choose_category(
    categories: Sequence[str], scores: Sequence[float], threshold: float | None = None
) -> tuple[str, float]:
    """The category to report and its confidence: the best-scored one and its softmax share of the
    label scores (summed log-probabilities); :data:`core.labels.OTHER` when that share is below
    ``threshold`` (the explainer's calibrated ``category_threshold``; None: never)."""
    values = [float(v) for v in scores]
    best = max(range(len(values)), key=values.__getitem__)  # the first of equal bests, as argmax
    confidence = 1.0 / sum(math.exp(v - values[best]) for v in values)  # its softmax share
    if threshold is not None and confidence < threshold:
        return OTHER, confidence
    return categories[best], confidence


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


def read_meta(path: Path) -> dict[str, Any]:
    """The folder's ``explainer.json`` ({} where it has none)."""
    meta_file = path / "explainer.json"
    if not meta_file.is_file():
        return {}
    try:
        return dict(json.loads(meta_file.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{meta_file} is not valid JSON: {exc}") from None
