"""Evidence for the explainer: a flagged sequence compared with normal runs of the same flow.

A keyword anomaly (a timeout, a database error) shows in its own lines; a structural one does
not: a required step that is absent, two steps swapped, a call retried five times, one step a
hundred times slower. :class:`FlowProfile` learns, from normal sequences only, what the runs of
each flow look like, and :meth:`FlowProfile.compare` states how a sequence differs, in short
sentences that go into the prompt's context (:meth:`FlowProfile.context_for`). The same profile,
saved in the explainer folder as ``flow_profile.json``, serves training, evaluation and
inference; it is computed from the log lines alone, never from labels.

Line key: the line normalized by :class:`core.normalize.Normalizer` (paths kept: the endpoint
tells the flows apart) with every duration bucket ``<dur:1eNms>`` replaced by ``<dur>``; the
largest bucket exponent ``N`` of the line is kept beside it. Flow group: the key of the first
line (the gateway's ``received POST /api/v1/orders ...``, a queue's ``consumed job ...``). The
keys of one flow that differ in a single token are one step (:func:`merge_variants`:
``keyspace=prices`` / ``keyspace=products``, ``EUR`` / ``USD``, values the normalizer leaves).
Per group: the number of runs; the *required* steps (present in at least ``required_share`` of
the runs) in their usual order (median position of their first occurrence); the most times
each step occurred in one run; the largest duration exponent of each step; and the pairs of
required steps whose order varies in normal runs (reversed in more than 5% of the runs holding
both), which are never called out of order. A group of fewer than ``min_runs`` runs gives no
evidence.

Findings, at most :data:`MAX_FINDINGS`, each line cut to :data:`MAX_FINDING_LINE` characters,
in this order: ``missing`` (required steps absent: the first named, then a count of the
others), ``out of order`` (each names a pair of required steps seen in the reverse of their
usual order, the farthest-apart pair first, each step in one finding at most; at most 2),
``repeated`` (a line more often than in any normal run; at most 2), ``slower`` (a duration
bucket at least one order of magnitude above any normal run's; at most 2), ``not seen in normal
runs`` (at most 2); past :data:`MAX_FINDINGS`, one of each kind in turn. A line seen in the
normal runs of other flows only (background lines: heartbeats, metrics, harmless warnings) is
not "not seen"; its duration is compared with the largest of any flow, and it is "repeated"
from two more than the most of any flow (a background line twice in a window is common).
Findings name the sequence's own (normalized) lines; a missing step, its template. No
difference: "matches the normal runs of this flow"; a flow without (enough) normal runs: "no
normal runs of this flow to compare with".

Input: lines as text or UTF-8 bytes, cleaned as the prompts clean them
(:func:`prompts.clean_lines`: invalid bytes become U+FFFD); an empty sequence is a
:class:`DataError`.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from core.errors import DataError
from core.io import write_json
from core.normalize import Normalizer, NormalizerConfig
from large_model import prompts

log = logging.getLogger(__name__)

FLOW_PROFILE_FILE = "flow_profile.json"  # in an explainer folder
REFERENCE_FILE = "normal_reference.jsonl"  # what data_gen writes beside the instruction sets
PROFILE_VERSION = 1
MIN_RUNS = 5
REQUIRED_SHARE = 0.95
FLEXIBLE_SHARE = 0.05  # a pair of required keys reversed in more runs than this has no fixed order
MAX_FINDINGS = 6
MAX_FINDING_LINE = 90
PAIR_LINE = 60  # each of the two lines of an out-of-order finding
MAX_NAMED = {"missing": 1, "out_of_order": 2, "repeated": 2, "slower": 2, "unseen": 2}
KIND_ORDER = ("missing", "out_of_order", "repeated", "slower", "unseen")

_BUCKET = re.compile(r"<dur:(?:1e(-?\d+)ms|0)>")

WORDING: dict[str, dict[str, str]] = {
    "en": {
        "missing": "missing: {line}",
        "missing_more": "{n} more required steps missing",
        "missing_one": "1 more required step missing",
        "out_of_order": "out of order: {a} came before {b}",
        "repeated": "repeated {n} times (normal runs: at most {m}): {line}",
        "repeated_new": "repeated {n} times (never in normal runs): {line}",
        "slower": "slower than any normal run: {line} (1e{x} ms, normal at most 1e{y} ms)",
        "unseen": "not seen in normal runs: {line}",
        "matches": "matches the normal runs of this flow",
        "no_profile": "no normal runs of this flow to compare with",
    },
    "zh": {
        "missing": "缺少：{line}",
        "missing_more": "另有 {n} 个必需步骤缺失",
        "missing_one": "另有 1 个必需步骤缺失",
        "out_of_order": "顺序异常：{a} 出现在 {b} 之前",
        "repeated": "重复 {n} 次（正常运行最多 {m} 次）：{line}",
        "repeated_new": "重复 {n} 次（正常运行中从未出现）：{line}",
        "slower": "比所有正常运行都慢：{line}（1e{x} ms，正常最多 1e{y} ms）",
        "unseen": "正常运行中未见：{line}",
        "matches": "与该流程的正常运行一致",
        "no_profile": "没有该流程的正常运行可供对比",
    },
}


class Finding(NamedTuple):
    """One difference from the normal runs: its kind and the sentence that states it."""

    kind: str  # missing, out_of_order, repeated, slower, unseen, matches, no_profile
    text: str


def default_normalizer() -> Normalizer:
    """The normalizer of line keys: the defaults, paths kept (``/api/v1/orders`` names the flow)."""
    return Normalizer(NormalizerConfig(mask_paths=False))


def split_bucket(normalized: str) -> tuple[str, int | None]:
    """A normalized line's key (``<dur>`` for every duration bucket) and its largest bucket exponent."""
    exponents = [int(m.group(1)) for m in _BUCKET.finditer(normalized) if m.group(1) is not None]
    return _BUCKET.sub("<dur>", normalized), max(exponents) if exponents else None


def _short(line: str, limit: int = MAX_FINDING_LINE) -> str:
    return line if len(line) <= limit else line[: limit - 1] + "…"


@dataclass
class GroupProfile:
    """What the normal runs of one flow hold."""

    runs: int
    required: list[str]  # in their usual order
    max_count: dict[str, int]  # every key seen, with the most times it occurred in one run
    max_exp: dict[str, int] = field(default_factory=dict)  # largest duration bucket exponent per key
    flexible: set[frozenset[str]] = field(default_factory=set)  # required pairs without a fixed order
    matcher: _Matcher = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.matcher = _Matcher(self.max_count)

    def match(self, key: str) -> str | None:
        """The template of this flow that ``key`` belongs to, if any."""
        return self.matcher.match(key)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "runs": self.runs,
            "required": list(self.required),
            "max_count": dict(sorted(self.max_count.items())),
            "max_exp": dict(sorted(self.max_exp.items())),
            "flexible": sorted(sorted(pair) for pair in self.flexible),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GroupProfile:
        """Rebuild from :meth:`to_dict`."""
        return cls(
            runs=int(data["runs"]),
            required=[str(k) for k in data["required"]],
            max_count={str(k): int(v) for k, v in dict(data["max_count"]).items()},
            max_exp={str(k): int(v) for k, v in dict(data.get("max_exp", {})).items()},
            flexible={frozenset(str(k) for k in pair) for pair in data.get("flexible", [])},
        )


WILDCARD = "<*>"


def merge_variants(keys: Iterable[str]) -> dict[str, str]:
    """Each key's template: keys of one flow that differ in a single token are one line with ``<*>`` there.

    ``refresh started keyspace=prices`` and ``... keyspace=products`` (or ``amount=<num> EUR`` and
    ``... USD``) are one step whose value the normalizer does not mask. Keys are linked when they
    differ in exactly one space-separated token, and every token on which the linked keys differ
    becomes ``<*>``.
    """
    unique = sorted(set(keys))
    parent = {k: k for k in unique}

    def root(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    split = {k: k.split(" ") for k in unique}
    buckets: dict[tuple[int, int, tuple[str, ...]], str] = {}
    for k in unique:
        tokens = split[k]
        for i in range(len(tokens)):
            signature = (len(tokens), i, (*tokens[:i], *tokens[i + 1 :]))
            other = buckets.setdefault(signature, k)
            if other != k:
                parent[root(k)] = root(other)
    members: dict[str, list[str]] = {}
    for k in unique:
        members.setdefault(root(k), []).append(k)
    out: dict[str, str] = {}
    for group in members.values():
        if len(group) == 1:
            out[group[0]] = group[0]
            continue
        columns = zip(*(split[k] for k in group), strict=True)
        template = " ".join(col[0] if len(set(col)) == 1 else WILDCARD for col in columns)
        out.update(dict.fromkeys(group, template))
    return out


class _Matcher:
    """Finds the template a key belongs to (an exact key, or a template with ``<*>`` tokens)."""

    def __init__(self, templates: Iterable[str]) -> None:
        self.exact: set[str] = set()
        self.wild: dict[int, list[tuple[str, list[str]]]] = {}
        for t in templates:
            if WILDCARD in t.split(" "):
                tokens = t.split(" ")
                self.wild.setdefault(len(tokens), []).append((t, tokens))
            else:
                self.exact.add(t)

    def match(self, key: str) -> str | None:
        if key in self.exact:
            return key
        tokens = key.split(" ")
        for template, pattern in self.wild.get(len(tokens), []):
            if all(p in (WILDCARD, x) for p, x in zip(pattern, tokens, strict=True)):
                return template
        return None


class _GroupBuilder:
    """Accumulates the normal runs of one flow."""

    def __init__(self) -> None:
        self.runs: list[list[tuple[str, int | None]]] = []

    def add(self, keys: list[tuple[str, int | None]]) -> None:
        self.runs.append(keys)

    def finish(self, required_share: float) -> GroupProfile:
        template = merge_variants(k for run in self.runs for k, _ in run)
        max_count: Counter[str] = Counter()
        max_exp: dict[str, int] = {}
        firsts: list[dict[str, int]] = []
        for run in self.runs:
            first, counts, exps = _summarize([(template[k], x) for k, x in run])
            firsts.append(first)
            for key, n in counts.items():
                max_count[key] = max(max_count[key], n)
            for key, x in exps.items():
                max_exp[key] = max(max_exp.get(key, x), x)
        n_runs = len(self.runs)
        present: Counter[str] = Counter()
        positions: dict[str, list[int]] = {}
        for first in firsts:
            for key, position in first.items():
                present[key] += 1
                positions.setdefault(key, []).append(position)
        required = [k for k, n in present.items() if n >= required_share * n_runs]
        required.sort(key=lambda k: (statistics.median(positions[k]), statistics.fmean(positions[k]), k))
        flexible: set[frozenset[str]] = set()
        for i, a in enumerate(required):
            for b in required[i + 1 :]:
                both = reversed_ = 0
                for first in firsts:
                    if a in first and b in first:
                        both += 1
                        reversed_ += first[b] < first[a]
                if both and reversed_ > FLEXIBLE_SHARE * both:
                    flexible.add(frozenset((a, b)))
        return GroupProfile(n_runs, required, dict(max_count), max_exp, flexible)


def _summarize(keys: Sequence[tuple[str, int | None]]) -> tuple[dict[str, int], Counter[str], dict[str, int]]:
    """Per key of a run: the position of its first line, its count, its largest duration exponent."""
    first: dict[str, int] = {}
    counts: Counter[str] = Counter()
    exps: dict[str, int] = {}
    for position, (key, exponent) in enumerate(keys):
        first.setdefault(key, position)
        counts[key] += 1
        if exponent is not None:
            exps[key] = max(exps.get(key, exponent), exponent)
    return first, counts, exps


class FlowProfile:
    """Normal runs per flow, and how a sequence differs from them (:meth:`compare`)."""

    def __init__(
        self,
        groups: Mapping[str, GroupProfile],
        normalizer: Normalizer | None = None,
        min_runs: int = MIN_RUNS,
        required_share: float = REQUIRED_SHARE,
    ) -> None:
        if min_runs < 1 or not 0.0 < required_share <= 1.0:
            raise DataError(f"min_runs must be >= 1 and required_share in (0, 1], got {min_runs}, {required_share}")
        self.groups = dict(groups)
        self.normalizer = normalizer or default_normalizer()
        self.min_runs = min_runs
        self.required_share = required_share
        # what normal runs of any flow hold (background lines show up in every flow)
        self.any_max_count: dict[str, int] = {}
        self.any_max_exp: dict[str, int] = {}
        for group in self.groups.values():
            for key, n in group.max_count.items():
                self.any_max_count[key] = max(self.any_max_count.get(key, 0), n)
            for key, x in group.max_exp.items():
                self.any_max_exp[key] = max(self.any_max_exp.get(key, x), x)
        self.any_matcher = _Matcher(self.any_max_count)

    # ------------------------------------------------------------------ building

    def line_keys(self, log_entries: Sequence[str | bytes]) -> list[tuple[str, int | None]]:
        """Each non-blank line's key and largest duration exponent (the lines cleaned as the prompts do)."""
        keys = []
        for line in prompts.clean_lines(log_entries):
            key, exponent = split_bucket(self.normalizer.normalize(line))
            if key:
                keys.append((key, exponent))
        return keys

    @classmethod
    def build(
        cls,
        sequences: Iterable[Sequence[str | bytes]],
        min_runs: int = MIN_RUNS,
        required_share: float = REQUIRED_SHARE,
        normalizer: Normalizer | None = None,
    ) -> FlowProfile:
        """A profile from normal sequences (each a list of raw log lines); an empty one is a DataError."""
        shell = cls({}, normalizer, min_runs, required_share)
        builders: dict[str, _GroupBuilder] = {}
        count = 0
        for index, lines in enumerate(sequences):
            try:
                keys = shell.line_keys(lines)
            except DataError as exc:
                raise DataError(f"normal sequence #{index + 1}: {exc}") from None
            if not keys:
                continue  # lines that normalize to nothing
            builders.setdefault(keys[0][0], _GroupBuilder()).add(keys)
            count += 1
        if not count:
            raise DataError("no normal sequences to build a flow profile from")
        groups = {key: b.finish(required_share) for key, b in builders.items()}
        return cls(groups, shell.normalizer, min_runs, required_share)

    @classmethod
    def from_records(cls, path: str | Path, min_runs: int = MIN_RUNS) -> FlowProfile:
        """A profile from the normal records (label 0 or none) of a sequence file (JSON, JSONL, CSV)."""
        from core.io import iter_records

        skipped = 0
        normal: list[list[str]] = []
        for record in iter_records(path):
            if record.label == 1:
                skipped += 1
                continue
            normal.append(list(record.log_entries))
        if not normal:
            raise DataError(f"no normal records (label 0 or none) among {skipped} records", path)
        if skipped:
            log.info("%s: %d anomalous records left out of the flow profile", path, skipped)
        return cls.build(normal, min_runs=min_runs)

    # ------------------------------------------------------------------ figures

    @property
    def runs(self) -> int:
        """Normal runs the profile was built from."""
        return sum(g.runs for g in self.groups.values())

    @property
    def usable_groups(self) -> int:
        """Flows with at least ``min_runs`` runs (the ones that give evidence)."""
        return sum(g.runs >= self.min_runs for g in self.groups.values())

    def describe(self) -> str:
        """One line: runs, flows, flows with enough runs."""
        return (
            f"{self.runs} normal runs of {len(self.groups)} flows "
            f"({self.usable_groups} with at least {self.min_runs} runs)"
        )

    # ------------------------------------------------------------------ comparing

    def group_for(self, keys: Sequence[tuple[str, int | None]]) -> GroupProfile | None:
        """The flow of a keyed sequence (its first line's key), if it has enough normal runs."""
        if not keys:
            return None
        group = self.groups.get(keys[0][0])
        return group if group is not None and group.runs >= self.min_runs else None

    def compare(self, log_entries: Sequence[str | bytes], lang: str = "en") -> list[Finding]:
        """How the sequence differs from the normal runs of its flow: at most :data:`MAX_FINDINGS` findings."""
        words = WORDING[prompts.check_lang(lang)]
        keys = self.line_keys(log_entries)
        group = self.group_for(keys)
        if group is None:
            return [Finding("no_profile", words["no_profile"])]
        # each line as the template it belongs to: of this flow, else of any flow, else itself (unseen)
        normal_most: dict[str, int] = {}
        normal_exp: dict[str, int | None] = {}
        other_flows: set[str] = set()  # known from the runs of other flows only (background lines)
        shown: dict[str, str] = {}  # the sequence's own line for each template (no <*> in findings)
        identified: list[tuple[str, int | None]] = []
        for key, exponent in keys:
            template = group.match(key)
            if template is not None:
                normal_most[template] = group.max_count[template]
                normal_exp[template] = group.max_exp.get(template)
            else:
                template = self.any_matcher.match(key)
                if template is not None:
                    normal_most[template] = self.any_max_count[template]
                    normal_exp[template] = self.any_max_exp.get(template)
                    other_flows.add(template)
                else:
                    template = key
            shown.setdefault(template, key)
            identified.append((template, exponent))
        first, counts, top_exp = _summarize(identified)
        found: dict[str, list[Finding]] = {kind: [] for kind in KIND_ORDER}

        absent = [k for k in group.required if k not in first]
        named = absent[: MAX_NAMED["missing"]]
        found["missing"] = [Finding("missing", words["missing"].format(line=_short(k))) for k in named]
        if len(absent) > len(named):
            more = len(absent) - len(named)
            found["missing"].append(
                Finding("missing", words["missing_more" if more > 1 else "missing_one"].format(n=more))
            )

        for before, after in _swapped_pairs(group, first):
            a, b = _short(shown[before], PAIR_LINE), _short(shown[after], PAIR_LINE)
            text = words["out_of_order"].format(a=a, b=b)
            found["out_of_order"].append(Finding("out_of_order", text))

        for key in sorted(counts, key=first.__getitem__):
            line = _short(shown[key])
            most = normal_most.get(key, 0)
            # a background line twice in a window is common: two more than their most, for those
            slack = 1 if key in other_flows else 0
            if counts[key] >= 2 and counts[key] > most + slack:
                template = words["repeated"] if most else words["repeated_new"]
                found["repeated"].append(Finding("repeated", template.format(n=counts[key], m=most, line=line)))
            elif key not in normal_most:
                found["unseen"].append(Finding("unseen", words["unseen"].format(line=line)))
            usual = normal_exp.get(key)
            if key in top_exp and usual is not None and top_exp[key] > usual:
                text = words["slower"].format(line=line, x=top_exp[key], y=usual)
                found["slower"].append(Finding("slower", text))

        # missing: the named keys and the count of the others; other kinds: the first few
        chosen = _pick(
            {kind: items if kind == "missing" else items[: MAX_NAMED[kind]] for kind, items in found.items()}
        )
        return chosen or [Finding("matches", words["matches"])]

    def context_for(self, log_entries: Sequence[str | bytes], lang: str = "en") -> dict[str, str]:
        """The prompt context entry stating the findings: ``{"compared with normal runs": "a; b; ..."}``."""
        findings = self.compare(log_entries, lang)
        return {prompts.EVIDENCE_KEYS[lang]: "; ".join(f.text for f in findings)}

    # ------------------------------------------------------------------ saving

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the normalizer's rules included)."""
        return {
            "version": PROFILE_VERSION,
            "min_runs": self.min_runs,
            "required_share": self.required_share,
            "normalizer": self.normalizer.to_dict(),
            "groups": {key: group.to_dict() for key, group in sorted(self.groups.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FlowProfile:
        """Rebuild from :meth:`to_dict`; a malformed one is a DataError."""
        if not isinstance(data, Mapping) or data.get("version") != PROFILE_VERSION:
            raise DataError(f"not a flow profile of version {PROFILE_VERSION}")
        try:
            groups = {str(key): GroupProfile.from_dict(value) for key, value in dict(data["groups"]).items()}
            return cls(
                groups,
                Normalizer.from_dict(dict(data["normalizer"])),
                int(data.get("min_runs", MIN_RUNS)),
                float(data.get("required_share", REQUIRED_SHARE)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"malformed flow profile ({type(exc).__name__}: {exc})") from None

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON (``flow_profile.json`` in a folder); returns the file."""
        target = Path(path)
        if target.is_dir():
            target = target / FLOW_PROFILE_FILE
        write_json(target, self.to_dict())
        return target

    @classmethod
    def load(cls, path: str | Path) -> FlowProfile:
        """Read a saved profile (a file, or a folder holding ``flow_profile.json``)."""
        source = Path(path)
        if source.is_dir():
            source = source / FLOW_PROFILE_FILE
        if not source.is_file():
            raise DataError("no such file", source)
        try:
            data = json.loads(source.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"invalid flow profile ({exc})", source) from None
        try:
            return cls.from_dict(data)
        except DataError as exc:
            raise DataError(str(exc), source) from None


def _swapped_pairs(group: GroupProfile, first: Mapping[str, int]) -> list[tuple[str, str]]:
    """Pairs of required keys seen in the reverse of their usual order, as (came first, should have).

    The inversions of the present required keys against the usual order, farthest apart (in the
    usual order) first; a key takes part in one pair at most; pairs without a fixed order in
    normal runs are left out.
    """
    present = [k for k in group.required if k in first]  # in usual order
    inversions = []
    for i, a in enumerate(present):
        for j in range(i + 1, len(present)):
            b = present[j]
            if first[b] < first[a] and frozenset((a, b)) not in group.flexible:
                inversions.append((j - i, first[b], b, a))
    inversions.sort(key=lambda t: (-t[0], t[1]))
    used: set[str] = set()
    pairs = []
    for _, _, came_first, should_have in inversions:
        if came_first in used or should_have in used:
            continue
        used.update((came_first, should_have))
        pairs.append((came_first, should_have))
    return pairs


def _pick(found: Mapping[str, list[Finding]]) -> list[Finding]:
    """At most :data:`MAX_FINDINGS` findings: one of each kind in turn, kinds in :data:`KIND_ORDER`."""
    queues = {kind: list(found.get(kind, [])) for kind in KIND_ORDER}
    taken: dict[str, list[Finding]] = {kind: [] for kind in KIND_ORDER}
    total = 0
    while total < MAX_FINDINGS and any(queues.values()):
        for kind in KIND_ORDER:
            if queues[kind] and total < MAX_FINDINGS:
                taken[kind].append(queues[kind].pop(0))
                total += 1
    return [f for kind in KIND_ORDER for f in taken[kind]]


def load_reference(path: str | Path, min_runs: int = MIN_RUNS) -> FlowProfile:
    """The flow profile of a reference file of normal runs (``normal_reference.jsonl``)."""
    return FlowProfile.from_records(path, min_runs=min_runs)
