"""Turning records into token ids the same way for training and inference.

A prompt is the chat template applied to the system and user messages of :mod:`prompts`, with
the generation prompt; the answer is the canonical JSON after it, then the end-of-turn token.
Both sides tokenize the *whole* text (prompt + answer prefix) in one go, so the label tokens
that inference scores are the very tokens training taught.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import DataError
from large_model import prompts
from large_model.schema import LabelSet

if TYPE_CHECKING:
    from large_model.evidence import FlowProfile

log = logging.getLogger(__name__)

# 2: head-of-line timestamps as offsets; 3: compact instructions, ms offsets, short hex ids;
# 4: the comparison with normal runs of the flow in the context (where the explainer has a flow profile)
PROMPT_VERSION = 4
OVERHEAD_CACHE = 512  # prompt overheads kept per encoder (one per distinct language + context)


def end_of_turn_id(tokenizer: Any) -> int:
    """The token that closes an assistant turn: ``<|im_end|>`` for ChatML models, else eos."""
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id and im_end >= 0:
        return im_end
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has neither <|im_end|> nor an eos token")
    return int(tokenizer.eos_token_id)


@dataclass
class Example:
    """One instruction example: the chat messages, the canonical answer and its labels."""

    sequence_id: str
    messages: list[dict[str, str]]
    target: str
    category: str
    severity: str
    lang: str = "en"
    log_entries: list[str] | None = None
    reference: dict[str, str] = field(default_factory=dict)


class PromptEncoder:
    """Builds and tokenizes prompts that fit a token budget.

    With a :class:`~large_model.evidence.FlowProfile`, every prompt built from log lines gets the
    comparison of those lines with the normal runs of their flow as its first context entry
    (:meth:`FlowProfile.context_for`); a key of the caller's context of the same name wins.
    Training, evaluation and inference all build their prompts here, so they carry the same
    evidence.
    """

    def __init__(
        self,
        tokenizer: Any,
        labels: LabelSet,
        max_prompt_tokens: int = 1024,
        relative_time: bool = True,
        short_ids: bool = True,
        profile: FlowProfile | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.labels = labels
        self.max_prompt_tokens = max_prompt_tokens
        self.relative_time = relative_time
        self.short_ids = short_ids
        self.profile = profile
        self._overhead: dict[tuple[str, str], int] = {}

    def count(self, text: str) -> int:
        """Tokens in ``text`` (no special tokens added)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render(self, messages: list[dict[str, str]]) -> str:
        """The chat template applied, with the assistant's generation prompt."""
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def messages(
        self,
        log_entries: Sequence[str | bytes],
        lang: str = "en",
        context: Mapping[str, Any] | None = None,
        reserve: int = 0,
        max_tokens: int | None = None,
    ) -> tuple[list[dict[str, str]], int]:
        """Chat messages for a sequence fitted to ``max_tokens - reserve``; returns them and the lines cut."""
        lang = prompts.check_lang(lang)
        lines = prompts.clean_lines(log_entries)
        context = self.context_with_evidence(lines, lang, context)
        if self.relative_time:
            lines = prompts.relative_timestamps(lines)
        if self.short_ids:
            lines = [prompts.shorten_ids(line) for line in lines]
        key = (lang, prompts.format_context(context, lang))
        if key not in self._overhead:
            if len(self._overhead) >= OVERHEAD_CACHE:  # the evidence makes most contexts distinct
                self._overhead.clear()
            bare = prompts.build_messages([], lang, self.labels.categories, self.labels.severities, context)
            self._overhead[key] = self.count(self.render(bare))
        limit = (max_tokens if max_tokens is not None else self.max_prompt_tokens) - reserve
        budget = limit - self._overhead[key] - 8
        if budget <= 0:
            raise DataError(
                f"the prompt does not fit the context: the instructions alone take {self._overhead[key]} "
                f"tokens, {limit} are available"
            )
        fitted, omitted = prompts.fit_lines(lines, budget, self.count, lang)
        if omitted:
            log.info("sequence of %d lines cut to fit %d tokens: %d lines omitted", len(lines), budget, omitted)
        msgs = prompts.build_messages(
            fitted, lang, self.labels.categories, self.labels.severities, context, total=len(lines)
        )
        return msgs, omitted

    def context_with_evidence(
        self, lines: Sequence[str], lang: str, context: Mapping[str, Any] | None = None
    ) -> Mapping[str, Any] | None:
        """The caller's context with the flow comparison of ``lines`` first (the caller's keys win)."""
        if context is not None and not isinstance(context, Mapping):
            raise DataError("context must be an object of key/value pairs")
        if self.profile is None:
            return context
        return {**self.profile.context_for(lines, lang), **(context or {})}

    def prompt_text(
        self,
        log_entries: Sequence[str | bytes],
        lang: str = "en",
        context: Mapping[str, Any] | None = None,
        reserve: int = 0,
    ) -> str:
        """The rendered prompt (template applied) for a sequence."""
        return self.render(self.messages(log_entries, lang, context, reserve)[0])

    def encode_example(self, example: Example, max_seq_len: int) -> tuple[list[int], list[int]]:
        """``(input_ids, labels)`` with labels -100 everywhere but the assistant's answer and end token."""
        ids, labels, _ = self.encode_weighted(example, max_seq_len)
        return ids, labels

    def encode_weighted(
        self, example: Example, max_seq_len: int, label_weight: float = 1.0, labels_only: bool = False
    ) -> tuple[list[int], list[int], list[float]]:
        """``(input_ids, labels, weights)``: weights 0 on the prompt, 1 on the answer, ``label_weight`` on
        the tokens of the category and severity values (and the quote closing them).

        ``labels_only``: the answer stops after the severity (``{"category": "..", "severity": "..",``),
        with no end of turn: the example teaches the labels at a fraction of the tokens.
        """
        target = prompts.labels_target(example.category, example.severity) if labels_only else example.target
        answer_ids = self.tokenizer(target, add_special_tokens=False)["input_ids"]
        eot = end_of_turn_id(self.tokenizer)
        if example.log_entries is not None:
            messages, _ = self.messages(
                example.log_entries,
                example.lang,
                max_tokens=min(max_seq_len, self.max_prompt_tokens + len(answer_ids)) - len(answer_ids) - 1,
            )
        else:
            messages = example.messages
        prompt = self.render(messages)
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full = self.tokenizer(prompt + target, add_special_tokens=False, return_offsets_mapping=True)
        full_ids = list(full["input_ids"])
        offsets = list(full.get("offset_mapping") or [])
        if full_ids[: len(prompt_ids)] != prompt_ids:  # a merge across the boundary: keep the two parts apart
            full_ids, offsets = prompt_ids + answer_ids, []
        weights = [0.0] * len(prompt_ids) + [1.0] * (len(full_ids) - len(prompt_ids)) + ([] if labels_only else [1.0])
        if label_weight != 1.0 and offsets:
            start = len(prompt)
            spans = [
                (
                    start + len(prompts.category_prefix()),
                    start + len(prompts.category_prefix()) + len(example.category) + 1,
                ),
                (
                    start + len(prompts.severity_prefix(example.category)),
                    start + len(prompts.severity_prefix(example.category)) + len(example.severity) + 1,
                ),
            ]
            for i in range(len(prompt_ids), len(full_ids)):
                lo, hi = offsets[i]
                if any(lo < b and hi > a for a, b in spans):
                    weights[i] = label_weight
        if not labels_only:
            full_ids = [*full_ids, eot]
        labels = [-100] * len(prompt_ids) + full_ids[len(prompt_ids) :]
        if len(full_ids) > max_seq_len:
            raise DataError(f"example {example.sequence_id} needs {len(full_ids)} tokens, more than {max_seq_len}")
        return full_ids, labels, weights


def _holdout(sequence_id: str, fraction: float, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}:{sequence_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def keeps_text(sequence_id: str, fraction: float, seed: int) -> bool:
    """Whether a training example keeps its whole answer (else labels only): a hash of its id below ``fraction``."""
    return fraction >= 1.0 or _holdout(sequence_id, fraction, seed + 1)


def split_examples(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Train and held-out parts by a hash of the sequence id (every language version on one side)."""
    if fraction <= 0:
        return examples, []
    train = [e for e in examples if not _holdout(_base_id(e.sequence_id), fraction, seed)]
    held = [e for e in examples if _holdout(_base_id(e.sequence_id), fraction, seed)]
    return train, held


def _base_id(sequence_id: str) -> str:
    for suffix in ("-zh", "_zh", "-en", "_en"):
        if sequence_id.endswith(suffix):
            return sequence_id[: -len(suffix)]
    return sequence_id


def iter_json_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file (or a JSON list), each an object; DataError names the file and line."""
    p = Path(path)
    if not p.is_file():
        raise DataError("no such file", p)
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError("invalid UTF-8", p, raw[: exc.start].count(b"\n") + 1) from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON ({exc.msg})", p, exc.lineno) from None
        for i, row in enumerate(data):
            if not isinstance(row, dict):
                raise DataError(f"record #{i + 1} is not an object", p)
            yield row
        return
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON ({exc.msg})", p, number) from None
        if not isinstance(row, dict):
            raise DataError("not a JSON object", p, number)
        yield row


def _answer_fields(messages: list[dict[str, Any]]) -> dict[str, Any]:
    for message in reversed(messages):
        if message.get("role") == "assistant":
            content = message.get("content")
            if isinstance(content, dict):
                return content
            try:
                obj = json.loads(str(content))
            except json.JSONDecodeError:
                return {}
            return obj if isinstance(obj, dict) else {}
    return {}


def _summary_from(row: Mapping[str, Any], category: str) -> str:
    if isinstance(row.get("summary"), str) and row["summary"].strip():
        return str(row["summary"]).strip()
    service = row.get("root_cause_service")
    what = category.replace("_", " ")
    return f"{what} in {service}" if service else what


def row_to_example(row: Mapping[str, Any], labels: LabelSet, where: str = "") -> Example:
    """An :class:`Example` from a classification record or a chat record (``messages``)."""
    messages = row.get("messages")
    answer = _answer_fields(messages) if isinstance(messages, list) else {}
    merged: dict[str, Any] = {**answer, **{k: v for k, v in row.items() if v not in (None, "")}}
    category = merged.get("category") or merged.get("anomaly_type")
    severity = merged.get("severity")
    sid = str(merged.get("sequence_id") or merged.get("id") or where)
    if category not in labels.categories:
        raise DataError(f"{where}: category {category!r} is not one of the known labels")
    if severity not in labels.severities:
        raise DataError(f"{where}: severity {severity!r} is not one of the known labels")
    lang = str(merged.get("lang") or "en")
    ref = {
        "summary": str(answer.get("summary") or _summary_from(merged, category)),
        "root_cause": str(answer.get("root_cause") or merged.get("root_cause") or ""),
        "suggested_response": str(answer.get("suggested_response") or merged.get("suggested_response") or ""),
    }
    if not ref["root_cause"] or not ref["suggested_response"]:
        raise DataError(f"{where}: a record needs root_cause and suggested_response")
    target = prompts.format_target(category, severity, ref["summary"], ref["root_cause"], ref["suggested_response"])
    log_entries = merged.get("log_entries")
    chat: list[dict[str, str]] = []
    if isinstance(messages, list):
        chat = [
            {"role": str(m.get("role")), "content": str(m.get("content"))}
            for m in messages
            if m.get("role") in ("system", "user")
        ]
    if not isinstance(log_entries, list) and not chat:
        raise DataError(f"{where}: a record needs log_entries or chat messages")
    return Example(
        sequence_id=sid,
        messages=chat,
        target=target,
        category=category,
        severity=severity,
        lang=lang if lang in prompts.LANGS else "en",
        log_entries=[str(x) for x in log_entries] if isinstance(log_entries, list) else None,
        reference=ref,
    )


def load_examples(path: str | Path, labels: LabelSet, limit: int | None = None) -> list[Example]:
    """Instruction examples from a JSONL/JSON file of classification or chat records."""
    examples = []
    for number, row in enumerate(iter_json_rows(path), 1):
        examples.append(row_to_example(row, labels, f"{path}:{number}"))
        if limit and len(examples) >= limit:
            break
    if not examples:
        raise DataError("no examples in file", path)
    if any(e.log_entries is None for e in examples):
        log.warning(
            "%s: some records have chat messages but no log_entries: their prompts are used as written, "
            "so inference prompts may differ from them",
            path,
        )
    return examples
