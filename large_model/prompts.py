"""Prompts of the explainer: system and user messages (English, Chinese), the answer's JSON form.

The answer is one JSON object with its keys in a fixed order: category, severity, summary,
root_cause, suggested_response (:func:`format_target`). Training teaches exactly that text, so
inference can score each known label as the continuation of a fixed prefix
(``{"category": "``), then score the severity after ``{"category": "<chosen>", "severity": "``,
then generate the three texts after ``..., "summary": "``.

Input cleaning (:func:`clean_lines`): byte strings are decoded as UTF-8 with invalid bytes
replaced by U+FFFD, lone surrogates likewise; control characters other than tab are dropped;
blank lines are dropped; an empty sequence is a :class:`DataError`.

Relative time (:func:`relative_timestamps`): a timestamp at the head of a line (ISO 8601,
``2024/05/26 02:07:33,631``, syslog ``May 26 02:07:30``) becomes the offset from the sequence's
first timestamp, ``+3061ms`` (whole-second timestamps: ``+3s``). Order and gaps stay visible
while a line costs ~20 fewer tokens (digits are single tokens in these tokenizers). Lines
without a known timestamp are unchanged. Hexadecimal ids are cut to 4 digits
(:func:`shorten_ids`). Both are prompt settings the explainer folder records.

Truncation (:func:`fit_lines`): a line longer than ``max_line_chars`` keeps its head and ends
with ``…``. When the lines still need more tokens than the budget, the head and the tail of the
sequence are kept (half the budget each: the first lines show what was going on, the last ones
how it ended) and one marker line ``... [N lines omitted] ...`` stands for the middle.

Context (:func:`format_context`): at most 12 ``key: value`` lines after the log, each value cut
to 200 characters, except the comparison with normal runs of :mod:`large_model.evidence`
(key :data:`EVIDENCE_KEYS`), which may take 900.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from core.errors import DataError

LANGS = ("en", "zh")
LABEL_END = '",'  # what follows a label in the canonical JSON (tokenizers merge `",` into one token)
MAX_LINE_CHARS = 400
MAX_CONTEXT_ITEMS = 12
MAX_CONTEXT_CHARS = 200
MAX_EVIDENCE_CHARS = 900  # the comparison with normal runs (large_model.evidence): up to 6 findings
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

SYSTEM_PROMPTS = {
    "en": (
        "Classify the flagged microservice log sequence and explain it as JSON.\n"
        "category: {categories}\nseverity: {severities}"
    ),
    # the bundled tokenizer spends 2-3 tokens on a Chinese character: the instruction stays short
    "zh": (
        "Classify the flagged microservice log sequence and explain it as JSON, the texts in Chinese (用中文).\n"
        "category: {categories}\nseverity: {severities}"
    ),
}
USER_HEADERS = {"en": "Log ({n} lines):", "zh": "日志（{n} 行）："}
CONTEXT_HEADERS = {"en": "Context:", "zh": "上下文："}
OMITTED = {"en": "... [{n} lines omitted] ...", "zh": "... [省略 {n} 行] ..."}
# the context key of the flow comparison (large_model.evidence); its value may run to MAX_EVIDENCE_CHARS
EVIDENCE_KEYS = {"en": "compared with normal runs", "zh": "与正常运行对比"}


def check_lang(lang: str) -> str:
    """The language code, validated (``en`` or ``zh``)."""
    if lang not in LANGS:
        raise DataError(f"unknown language {lang!r} (use one of {', '.join(LANGS)})")
    return lang


def _clean_text(value: Any, index: int) -> str:
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("utf-8", errors="replace")
    elif isinstance(value, str):
        text = value.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
    else:
        raise DataError(f"log line {index + 1} is {type(value).__name__}, not text")
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n")).strip()


def clean_lines(log_entries: Sequence[str | bytes] | str | bytes) -> list[str]:
    """Validated, cleaned log lines: text or UTF-8 bytes (invalid bytes become U+FFFD), blanks dropped."""
    if isinstance(log_entries, str | bytes | bytearray):
        raise DataError("log_entries must be a list of lines, not one string")
    if log_entries is None or not isinstance(log_entries, Sequence):
        raise DataError("log_entries must be a list of lines")
    lines: list[str] = []
    for index, value in enumerate(log_entries):
        text = _clean_text(value, index)
        lines.extend(part for part in (p.strip() for p in text.split("\n")) if part)
    if not lines:
        raise DataError("empty log sequence: nothing to explain")
    return lines


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_FULL_TS = re.compile(
    r"^\[?(\d{4})[-/](\d{2})[-/](\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,6}))?(?:Z|[+-]\d{2}:?\d{2})?\]?(?=\s)"
)
_SYSLOG_TS = re.compile(r"^(" + "|".join(_MONTHS) + r") {1,2}(\d{1,2}) (\d{2}):(\d{2}):(\d{2})(?=\s)")


def _parse_head_time(line: str, year: int) -> tuple[datetime, int, bool] | None:
    """The timestamp at the head of ``line``, its length and whether it has a fraction of a second."""
    match = _FULL_TS.match(line)
    try:
        if match:
            y, mo, d, h, mi, sec, frac = match.groups()
            micro = int((frac or "0").ljust(6, "0"))
            return datetime(int(y), int(mo), int(d), int(h), int(mi), int(sec), micro), match.end(), bool(frac)
        match = _SYSLOG_TS.match(line)
        if match:
            mon, d, h, mi, sec = match.groups()
            return datetime(year, _MONTHS.index(mon) + 1, int(d), int(h), int(mi), int(sec)), match.end(), False
    except ValueError:  # 2024-13-45: not a date after all
        return None
    return None


def relative_timestamps(lines: Sequence[str]) -> list[str]:
    """Head-of-line timestamps replaced by their offset from the first one (``+3.061s``)."""
    year = 2000
    for line in lines:
        full = _FULL_TS.match(line)
        if full:
            year = int(full.group(1))
            break
    first: datetime | None = None
    out = []
    for line in lines:
        parsed = _parse_head_time(line, year)
        if parsed is None:
            out.append(line)
            continue
        when, end, fraction = parsed
        if first is None:
            first = when
        if fraction:
            offset = (when - first).total_seconds()
            text = f"{abs(offset) * 1000:.0f}ms"
        else:  # a whole-second timestamp: compare whole seconds, or it seems to go back in time
            offset = (when - first.replace(microsecond=0)).total_seconds()
            text = f"{abs(offset):.0f}s"
        out.append(f"{'+' if offset >= 0 else '-'}{text}{line[end:]}")
    return out


# a hexadecimal id of 8+ digits with both digits and letters (request, trace, order, session ids)
_HEX_ID = re.compile(r"(?<![0-9A-Za-z])(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])([0-9a-f]{4})[0-9a-f]{4,}(?![0-9A-Za-z])")


def shorten_ids(line: str) -> str:
    """Hexadecimal ids cut to their first 4 digits (``req-9920fbc02a`` -> ``req-9920``).

    Each hex digit is a token of its own in these tokenizers; 4 digits still tell the ids of one
    sequence apart, at a third of the cost.
    """
    return _HEX_ID.sub(r"\1", line)


def _cap_line(line: str, max_chars: int) -> str:
    return line if len(line) <= max_chars else line[: max_chars - 1] + "…"


def fit_lines(
    lines: Sequence[str],
    budget_tokens: int,
    count_tokens: Callable[[str], int],
    lang: str = "en",
    max_line_chars: int = MAX_LINE_CHARS,
) -> tuple[list[str], int]:
    """Lines that fit ``budget_tokens`` (head and tail kept, a marker between); returns them and how many were cut."""
    if budget_tokens <= 0:
        raise DataError("the model's context has no room for log lines")
    capped = [_cap_line(line, max_line_chars) for line in lines]
    costs: dict[int, int] = {}

    def cost(i: int) -> int:
        if i not in costs:
            costs[i] = count_tokens(capped[i]) + 1  # + the newline
        return costs[i]

    total = 0
    for i in range(len(capped)):
        total += cost(i)
        if total > budget_tokens:
            break
    else:
        return capped, 0
    marker_cost = count_tokens(OMITTED[lang].format(n=len(capped))) + 1
    room = budget_tokens - marker_cost
    head: list[int] = []
    tail: list[int] = []
    used_head = used_tail = 0
    lo, hi = 0, len(capped) - 1
    # alternate head and tail so neither end starves; each side may use up to half the room first
    while lo <= hi:
        progressed = False
        if used_head + cost(lo) <= room // 2 or (not tail and used_head + cost(lo) <= room - used_tail):
            used_head += cost(lo)
            head.append(lo)
            lo += 1
            progressed = True
        if lo <= hi and used_tail + cost(hi) <= room - used_head and used_tail + cost(hi) <= room - room // 2:
            used_tail += cost(hi)
            tail.append(hi)
            hi -= 1
            progressed = True
        if not progressed:
            break
    if not head and not tail:
        raise DataError("a single log line does not fit the model's context, even truncated")
    omitted = len(capped) - len(head) - len(tail)
    kept = [capped[i] for i in head] + [OMITTED[lang].format(n=omitted)] + [capped[i] for i in reversed(tail)]
    return kept, omitted


def format_context(context: Mapping[str, Any] | None, lang: str) -> str:
    """The optional context (service, host, detector score...) as ``key: value`` lines, bounded."""
    if not context:
        return ""
    if not isinstance(context, Mapping):
        raise DataError("context must be an object of key/value pairs")
    items = []
    for key, value in list(context.items())[:MAX_CONTEXT_ITEMS]:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
        cap = MAX_EVIDENCE_CHARS if key in _EVIDENCE_KEY_SET else MAX_CONTEXT_CHARS
        items.append(f"{_clean_text(str(key), 0)[:60]}: {_cap_line(_clean_text(text, 0), cap)}")
    return CONTEXT_HEADERS[lang] + "\n" + "\n".join(items)


_EVIDENCE_KEY_SET = frozenset(EVIDENCE_KEYS.values())


def system_prompt(lang: str, categories: Sequence[str], severities: Sequence[str]) -> str:
    """The system message naming the labels to choose among."""
    return SYSTEM_PROMPTS[check_lang(lang)].format(categories=", ".join(categories), severities=", ".join(severities))


def user_prompt(lines: Sequence[str], lang: str, context: Mapping[str, Any] | None = None, total: int = 0) -> str:
    """The user message: the (already fitted) log lines and the optional context."""
    header = USER_HEADERS[check_lang(lang)].format(n=total or len(lines))
    parts = [header, "\n".join(lines)]
    ctx = format_context(context, lang)
    if ctx:
        parts.append(ctx)
    return "\n".join(parts)


def build_messages(
    lines: Sequence[str],
    lang: str,
    categories: Sequence[str],
    severities: Sequence[str],
    context: Mapping[str, Any] | None = None,
    total: int = 0,
) -> list[dict[str, str]]:
    """System and user chat messages for one sequence."""
    return [
        {"role": "system", "content": system_prompt(lang, categories, severities)},
        {"role": "user", "content": user_prompt(lines, lang, context, total)},
    ]


def format_target(category: str, severity: str, summary: str, root_cause: str, suggested_response: str) -> str:
    """The assistant's answer in canonical form: one JSON object, fixed key order."""
    return json.dumps(
        {
            "category": category,
            "severity": severity,
            "summary": summary,
            "root_cause": root_cause,
            "suggested_response": suggested_response,
        },
        ensure_ascii=False,
    )


def category_prefix() -> str:
    """The fixed text after which each category is scored."""
    return '{"category": "'


def severity_prefix(category: str) -> str:
    """The fixed text after which each severity is scored, given the chosen category."""
    return '{"category": ' + json.dumps(category, ensure_ascii=False) + ', "severity": "'


def labels_target(category: str, severity: str) -> str:
    """The answer's head up to the severity's closing ``",`` (a prefix of :func:`format_target`)."""
    return severity_prefix(category) + json.dumps(severity, ensure_ascii=False)[1:] + ","


def text_prefix(category: str, severity: str) -> str:
    """The text after which summary, root cause and suggested response are generated."""
    return (
        '{"category": '
        + json.dumps(category, ensure_ascii=False)
        + ', "severity": '
        + json.dumps(severity, ensure_ascii=False)
        + ', "summary": "'
    )


TEXT_KEYS = ("summary", "root_cause", "suggested_response")  # generated in this order
# token budget of each text field: above the longest reference answer of the generator's data in
# the bundled tokenizer (English 18/42/87, Chinese 56/84/211 tokens: 2-3 tokens per character)
FIELD_TOKENS = {"summary": 96, "root_cause": 128, "suggested_response": 256}


def _joint(key: str) -> str:
    """What :func:`format_target` writes between a closed text field and the next key's string."""
    return '", ' + json.dumps(key) + ': "'


def field_prefix(category: str, severity: str, done: Sequence[str]) -> str:
    """The answer up to the opening quote of the next text field, the raw texts of the fields before it given.

    ``done``: the raw JSON-string contents (escapes kept) of the first ``len(done)`` fields of
    :data:`TEXT_KEYS`; each is closed here with ``"`` (a dangling backslash dropped) and the
    next key opened, exactly as :func:`format_target` writes the answer.
    """
    if len(done) >= len(TEXT_KEYS):
        raise ValueError("every text field is done")
    text = text_prefix(category, severity)
    for key, raw in zip(TEXT_KEYS[1:], done, strict=False):
        text += _drop_dangling_escape(raw) + _joint(key)
    return text


def _drop_dangling_escape(raw: str) -> str:
    trailing = len(raw) - len(raw.rstrip("\\"))
    return raw[:-1] if trailing % 2 else raw


_ESCAPES = frozenset('"\\/bfnrtu')
_HEX = frozenset("0123456789abcdefABCDEF")


def _scan_string(generated: str) -> tuple[int, bool]:
    """Generated JSON-string content read up to its first unescaped ``"``: that index (-1: none) and validity.

    Valid: no control character, every backslash starts a JSON escape (``\\uXXXX`` with hex
    digits); an escape cut at the end is still pending, so fine. An invalid escape still escapes
    the character after it (as far as finding the end goes).
    """
    valid = True
    index = 0
    while index < len(generated):
        char = generated[index]
        if char == '"':
            return index, valid
        if char == "\\":
            escape = generated[index + 1 : index + 2]
            hex_digits = generated[index + 2 : index + 6]
            if escape and (escape not in _ESCAPES or (escape == "u" and any(d not in _HEX for d in hex_digits))):
                valid = False
            index += 2
            continue
        if char < " ":
            valid = False
        index += 1
    return -1, valid


def string_end(generated: str) -> int:
    """Index of the first unescaped ``"`` in generated JSON-string content (-1: the string is not closed)."""
    return _scan_string(generated)[0]


def valid_string_prefix(generated: str) -> bool:
    """Whether generated JSON-string content can still be valid JSON, up to its closing quote if any.

    What follows the closing quote is not looked at.
    """
    return _scan_string(generated)[1]


def decode_string(raw: str) -> str | None:
    """The text of raw JSON-string content (``\\n``, ``\\"``, ``\\uXXXX`` decoded); None if it is not valid JSON."""
    try:
        value = json.loads('"' + raw + '"')
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, str) else None


def decode_partial(raw: str) -> str:
    """The text of generated JSON-string content so far: up to its closing quote, escapes decoded
    where they are complete (a trailing partial escape is left out)."""
    end = string_end(raw)
    content = raw[:end] if end >= 0 else raw
    for cut in range(min(6, len(content)) + 1):  # \\uXXXX is the longest escape: 6 characters
        decoded = decode_string(content[: len(content) - cut])
        if decoded is not None:
            return decoded
    return content.replace('\\"', '"')


def assemble_answer(category: str, severity: str, raws: Sequence[str], closed: Sequence[bool]) -> str:
    """The whole answer as the model wrote it: the fixed prefix and joints, each field's raw text.

    A field the model did not close stays open (the text is then not valid JSON), so the
    assembled answer parses as JSON exactly when every field was closed with valid content.
    """
    text = text_prefix(category, severity)
    for index, (raw, done) in enumerate(zip(raws, closed, strict=True)):
        text += raw
        if not done:
            return text
        text += '"}' if index == len(TEXT_KEYS) - 1 else _joint(TEXT_KEYS[index + 1])
    return text
