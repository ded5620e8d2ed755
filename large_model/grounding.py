"""Checks on the generated texts of an explanation: loops and grounding.

A *loop* is a sequence of 4 words that occurs 3 times in one field ("consistent and consistent and
consistent ..."): :func:`has_loop`, which generation also uses to refuse a token that would make one.
*Grounding*: the names and numbers a text mentions (identifiers such as ``dfs.DataNode``, ``blk_38``
or ``10.0.0.1``, a bracketed ``[orders]``, the X of "the X service / flow / step / host", numbers of
two or more digits) must occur in what the model was shown (the sequence's lines and the evidence);
:func:`ungrounded` lists those that do not. The extraction is a heuristic: it sees invented
identifiers, numbers and named services or flows, not an invented plain-word claim.

Generation enforces it on the summary and the root cause (:data:`GROUNDED_FIELDS`; the suggested
response may name generic actions): :class:`Grounding` refuses a token once the name or number it
extends is no longer a substring of the source, so names and numbers are copied, not invented; when no
likely token passes, the field ends at its last sentence (:func:`cut_to_sentence`).
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterable

LOOP_WORDS = 4  # a sequence of this many words ...
LOOP_TIMES = 3  # ... this many times in one field is a loop
GROUNDED_FIELDS = ("summary", "root_cause")  # the fields that may name only what the source shows

_WORD = re.compile(r"[a-z0-9]+|[\u3400-\u9fff\uf900-\ufaff]")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,:]\d+)*")
_IDENTIFIER = re.compile(r"(?<![\w/])[A-Za-z][\w.:/-]*\w")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d)")
_BRACKETED = re.compile(r"\[([^\]\s]{1,60})\]")
_NAMED = re.compile(
    r"\b([A-Za-z][\w.-]*)\s+(?:service|flow|step|host|node|component|server|cluster|queue|table|endpoint)s?\b",
    re.IGNORECASE,
)
# words that name no particular thing before "service", "flow", ... ("the same service")
_GENERIC_WORDS = (
    "a an the this that these those its their same other another each every any all some one two affected "
    "failing failed slow slower healthy unhealthy upstream downstream dependent calling called next previous "
    "first last following preceding main whole entire normal usual expected remote local backend frontend "
    "external internal target source current new old given single multiple several many few which what whose "
    "of for to in on at by with from and or not no"
)
_GENERIC = frozenset(_GENERIC_WORDS.split())


def words(text: str) -> list[str]:
    """Lower-cased ASCII words and single CJK characters."""
    return _WORD.findall(text.lower())


def has_loop(text: str, size: int = LOOP_WORDS, times: int = LOOP_TIMES) -> bool:
    """Whether some sequence of ``size`` words occurs ``times`` times or more in ``text``."""
    w = words(text)
    if len(w) < size + times - 1:
        return False
    counts = Counter(tuple(w[i : i + size]) for i in range(len(w) - size + 1))
    return max(counts.values()) >= times


def _is_identifier(token: str) -> bool:
    inner = token[1:-1]
    return (
        any(c.isdigit() for c in token)
        or "_" in token
        or any(c in inner for c in "./:")
        or any(a.islower() and b.isupper() for a, b in itertools.pairwise(token))
    )


def mentioned(text: str) -> list[str]:
    """The names and numbers ``text`` mentions (see the module docstring), in order, once each."""
    found: list[str] = []
    found += [m for m in _NUMBER.findall(text) if len(re.sub(r"\D", "", m)) >= 2]
    found += [t.rstrip(".:") for t in _IDENTIFIER.findall(text) if _is_identifier(t.rstrip(".:"))]
    found += _BRACKETED.findall(text)
    found += [m for m in _NAMED.findall(text) if m.lower() not in _GENERIC]
    return list(dict.fromkeys(x for x in found if x))


def ungrounded(texts: Iterable[str], source: str) -> list[str]:
    """What ``texts`` mention that does not occur (case-insensitively) in ``source``."""
    check = Grounding(source)
    return list(dict.fromkeys(item for text in texts for item in mentioned(text) if not check.grounded(item)))


class Grounding:
    """What one explanation may name: :func:`ungrounded` against one source, for generation's checks.

    Generation (:meth:`inference.PrefixScorer.generate_string`) asks :meth:`adds_ungrounded` of every
    candidate token: a name or number is written by *copying* it from the source, since the moment
    its partial form stops being a substring of the source, no token that extends it is taken.
    """

    def __init__(self, source: str) -> None:
        self.haystack = source.lower()
        self.plain = _THOUSANDS.sub("", self.haystack)

    def grounded(self, item: str) -> bool:
        """Whether ``item`` occurs (case-insensitively, thousands separators aside) in the source."""
        needle = item.lower()
        return needle in self.haystack or _THOUSANDS.sub("", needle) in self.plain

    def missing(self, text: str) -> set[str]:
        """What ``text`` mentions that the source does not hold."""
        return {item for item in mentioned(text) if not self.grounded(item)}

    def adds_ungrounded(self, text: str, before: set[str]) -> bool:
        """Whether ``text`` mentions something ungrounded beyond ``before`` (the previous text's :meth:`missing`)."""
        return any(item not in before for item in self.missing(text))


_SENTENCE_END = re.compile(r"[.!?。！？](?=\s|$)")


def cut_to_sentence(text: str) -> str:
    """``text`` up to its last sentence end (itself when it has none): a field closed early ends cleanly."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]] if ends else text
