"""Simulated microservice request flows as labelled log sequences (JSON plus a CSV beside it).

    python data_gen/log_sequence_generator.py --num-sequences 8000 --anomaly-ratio 0.3 \
        --difficulty hard --noise 0.05 --lang en --seed 42 --output data/log_sequences_strings.json

Each sequence is one request (or background job) through 10 services, 6-15 lines, normal or
anomalous as a whole. The same seed gives byte-identical files.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.cli_args import run_cli
from core.errors import LogTriageError
from core.io import record_format, write_records
from core.labels import ANOMALY_TYPES
from core.schema import SequenceRecord
from data_gen.anomalies import (
    BUILDERS,
    Anomaly,
    Event,
    PlanItem,
    Situation,
    retry_events,
)
from data_gen.catalog import (
    FLOWS,
    HARMLESS_WARNINGS,
    NOISE_LINES,
    SERVICE_STYLE,
    SERVICES,
    SYSLOG_HOSTS,
    Benign,
    Flow,
    format_line,
    lang_index,
)
from data_gen.cli_utils import derive_seed, setup_logging

log = logging.getLogger(__name__)

MIN_LINES, MAX_LINES = 6, 15
RARE_PATH_RATE = 0.05  # hard: share of sequences on a rare but normal path
TRANSIENT_RETRY_RATE = 0.04  # hard: share of sequences with one retry that succeeds
HARMLESS_WARN_RATE = 0.15  # hard: share of sequences with a harmless WARN line
DIFFICULTIES = ("easy", "hard")
LANGS = ("en", "zh", "both")
DEFAULT_OUTPUT = Path("data/log_sequences_strings.json")
_BASE_TIME = datetime(2024, 5, 1)
_USERS = (
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "oscar",
    "peggy", "rupert", "sybil", "trent", "victor", "walter", "chen.wei", "li_na", "wang.fang", "zhang_wei",
    "liu.yang", "zhao.min", "sun_li", "maria.g", "james_k", "priya.s",
)  # fmt: skip


@dataclass(frozen=True)
class GeneratorConfig:
    """The knobs of one generated data set."""

    num_sequences: int = 8000
    anomaly_ratio: float = 0.3
    difficulty: str = "hard"
    noise: float = 0.05
    lang: str = "en"  # en, zh, or both (about half each)
    seed: int = 42
    id_prefix: str = "seq"

    def validate(self) -> None:
        """Raise a one-line error for values out of range."""
        if self.num_sequences < 1:
            raise LogTriageError(f"--num-sequences must be at least 1, got {self.num_sequences}")
        if not 0.0 <= self.anomaly_ratio <= 1.0:
            raise LogTriageError(f"--anomaly-ratio must be within [0, 1], got {self.anomaly_ratio}")
        if not 0.0 <= self.noise <= 1.0:
            raise LogTriageError(f"--noise must be within [0, 1], got {self.noise}")
        if self.difficulty not in DIFFICULTIES:
            raise LogTriageError(f"--difficulty must be one of {', '.join(DIFFICULTIES)}, got {self.difficulty!r}")
        if self.lang not in LANGS:
            raise LogTriageError(f"--lang must be one of {', '.join(LANGS)}, got {self.lang!r}")


@dataclass(frozen=True)
class SequenceSpec:
    """What one sequence will be: its label, anomaly type, flow and language."""

    index: int
    anomaly_type: str | None
    flow: str
    lang: str


def _hexid(rng: random.Random, n: int) -> str:
    """A hex id that starts with a digit and ends with a letter (masked the same way every time)."""
    middle = "".join(rng.choice("0123456789abcdef") for _ in range(n - 2))
    return rng.choice("123456789") + middle + rng.choice("abcdef")


def _client_ip(rng: random.Random) -> str:
    if rng.random() < 0.15:
        groups = [f"{rng.randint(1, 0xFFFF):x}" for _ in range(3)]
        return f"2001:db8:{groups[0]}:{groups[1]}::{groups[2]}"
    return f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def _context(rng: random.Random, flow: Flow, lang: str) -> dict[str, Any]:
    """The variable values of one sequence."""
    rid = "req-" + _hexid(rng, 10)
    job = "job-" + _hexid(rng, 8)
    sku = f"SKU-{rng.randint(10000, 99999)}"
    zh = lang == "zh"
    ctx: dict[str, Any] = {
        "rid": rid,
        "tid": _hexid(rng, 16),
        "user": rng.choice(_USERS),
        "ip": _client_ip(rng),
        "cport": rng.randint(1024, 65535),
        "oid": "ord-" + _hexid(rng, 8),
        "items": rng.randint(1, 5),
        "amount": f"{rng.uniform(5, 500):.2f}",
        "cur": rng.choice(["CNY", "CNY", "USD"] if zh else ["EUR", "USD", "GBP"]),
        "wh": f"wh-{rng.randint(1, 9):02d}",
        "provider": rng.choice(["alipay", "wechatpay", "stripe"] if zh else ["stripe", "adyen", "paypal"]),
        "part": rng.randint(0, 11),
        "off": rng.randint(1000, 999999),
        "sid": "sess-" + _hexid(rng, 10),
        "pi": "pi_" + _hexid(rng, 10),
        "txn": "txn_" + _hexid(rng, 10),
        "score": f"0.{rng.randint(1, 35):02d}",
        "sku": sku,
        "delta": f"{rng.choice('+-')}{rng.randint(1, 50)}",
        "qty": rng.randint(0, 19),
        "qhash": _hexid(rng, 8),
        "terms": rng.randint(1, 4),
        "filters": rng.randint(0, 3),
        "hits": rng.randint(1, 480),
        "rows": rng.randint(20, 500),
        "rows2": rng.randint(1, 500),
        "k": rng.randint(1, 24),
        "job": job,
        "ks": rng.choice(["products", "prices", "promotions"]),
        "warm": rng.randint(10, 200),
        "coupon": "cpn-" + _hexid(rng, 6),
        "disc": rng.choice([5, 10, 15, 20]),
        "method": flow.method or "",
        "path": flow.path.format(sku=sku),
        "status": flow.status,
        "svc_ip": {s: f"10.{rng.randint(0, 31)}.{rng.randint(0, 255)}.{rng.randint(2, 254)}" for s in SERVICES},
        "hosts": {s: f"{SYSLOG_HOSTS.get(s, s)}-{rng.randint(1, 3):02d}" for s in SERVICES},
        "pids": {s: rng.randint(100, 65000) for s in SERVICES},
    }
    if flow.method is None:
        ctx["ref"] = f"任务 {job}" if zh else f"job {job}"
    else:
        ctx["ref"] = f"请求 {rid}" if zh else f"request {rid}"
    return ctx


def _benign_values(rng: random.Random, service: str) -> dict[str, Any]:
    return {
        "rps": rng.randint(80, 950),
        "p99": rng.randint(20, 95),
        "conns": rng.randint(50, 900),
        "inst": f"{service}-{_hexid(rng, 5)}",
        "group": rng.choice(["notifier", "indexer", "audit"]),
        "lag": rng.randint(0, 40),
        "buffers": rng.randint(100, 9000),
        "bgpid": rng.randint(100, 65000),
        "nkeys": rng.randint(2, 4),
        "segs": rng.randint(3, 60),
        "gc": rng.randint(110, 900),
        "heap": rng.randint(40, 75),
        "secs": rng.randint(12, 29),
    }


def _benign_event(
    rng: random.Random, pool: tuple[Benign, ...], services: set[str], ctx: dict[str, Any], li: int
) -> Event:
    fitting = [b for b in pool if services.intersection(b.services)]
    line = rng.choice(fitting)
    service = rng.choice([s for s in line.services if s in services])
    values = {**ctx, **_benign_values(rng, service)}
    return Event(service, line.level, line.text[li].format(**values))


def normal_plan(
    flow: Flow, rng: random.Random, ctx: dict[str, Any], lang: str, rare: bool = False, retry: bool = False
) -> list[PlanItem]:
    """The normal plan of a flow: its skeleton, plus its rare path and one transient retry if asked."""
    plan = [PlanItem(step=step, base=True) for step in flow.steps]
    if rare:
        path = flow.rare
        at = next(i for i, item in enumerate(plan) if item.step is not None and item.step.key == path.anchor)
        extra = [PlanItem(step=step) for step in path.steps]
        if path.kind == "insert_before":
            plan = [*plan[:at], *extra, *plan[at:]]
        elif path.kind == "insert_after":
            plan = [*plan[: at + 1], *extra, *plan[at + 1 :]]
        else:
            plan = [*plan[:at], *extra, *plan[at + 1 :]]
    if retry:  # one retry that succeeds: normal, and the reason a retry storm needs counting
        spots = [i for i, item in enumerate(plan) if item.base and item.step is not None and item.step.caller]
        at = rng.choice(spots)
        step = plan[at].step
        assert step is not None and step.caller is not None
        situation = Situation(flow, plan, ctx, rng, lang, "hard")
        extra = [PlanItem(event=e) for e in retry_events(situation, step.caller, step.service, 1, 3)]
        plan = [*plan[:at], *extra, *plan[at:]]
    return plan


def _render(plan: list[PlanItem], ctx: dict[str, Any], rng: random.Random, li: int) -> list[Event]:
    """Fill each step's text with the sequence values and its latency."""
    events: list[Event] = []
    total = 0
    for item in plan:
        if item.event is not None:
            events.append(item.event)
            total += item.event.advance_ms
            continue
        step = item.step
        assert step is not None
        lat = item.lat if item.lat is not None else (rng.randint(*step.lat) if step.lat else 0)
        text = step.text[li]
        values = {**ctx, **item.overrides, "lat": lat}
        if "{total}" in text:
            values["total"] = total + lat + rng.randint(2, 9)
        events.append(Event(step.service, step.level, text.format(**values), lat))
        total += lat
    return events


def _format(events: list[Event], ctx: dict[str, Any], rng: random.Random) -> list[str]:
    """Timestamps (advancing with each step's latency) and each service's line layout."""
    ts = _BASE_TIME + timedelta(milliseconds=rng.randint(0, 30 * 86_400_000 - 1))
    lines = []
    for event in events:
        ts += timedelta(milliseconds=event.advance_ms + rng.randint(1, 12))
        style = SERVICE_STYLE[event.service]
        host, pid = ctx["hosts"][event.service], ctx["pids"][event.service]
        lines.append(format_line(style, ts, event.level, event.service, event.message, host, pid))
    return lines


def build_sequence(spec: SequenceSpec, config: GeneratorConfig) -> SequenceRecord:
    """Generate one sequence from its spec (its own random stream: independent of the others)."""
    rng = random.Random(derive_seed(config.seed, f"{config.id_prefix}:{spec.index}"))
    flow = FLOWS[spec.flow]
    li = lang_index(spec.lang)
    hard = config.difficulty == "hard"
    ctx = _context(rng, flow, spec.lang)
    rare = hard and rng.random() < RARE_PATH_RATE
    retry = hard and rng.random() < TRANSIENT_RETRY_RATE
    plan = normal_plan(flow, rng, ctx, spec.lang, rare, retry)
    anomaly: Anomaly | None = None
    if spec.anomaly_type is not None:
        builder = BUILDERS[spec.anomaly_type]
        anomaly = builder(Situation(flow, plan, ctx, rng, spec.lang, config.difficulty))
        if anomaly is None and (rare or retry):  # the extras left no room for this anomaly: use the skeleton
            plan = normal_plan(flow, rng, ctx, spec.lang)
            anomaly = builder(Situation(flow, plan, ctx, rng, spec.lang, config.difficulty))
        if anomaly is None:
            raise RuntimeError(f"flow {flow.key} cannot host a {spec.anomaly_type} anomaly")
        plan = anomaly.plan
    events = _render(plan, ctx, rng, li)
    services = {step.service for step in flow.steps}
    if hard and len(events) < MAX_LINES and rng.random() < HARMLESS_WARN_RATE:
        at = rng.randint(1, len(events) - 1)
        events.insert(at, _benign_event(rng, HARMLESS_WARNINGS, services, ctx, li))
    if config.noise > 0:
        noisy: list[Event] = []
        budget = MAX_LINES - len(events)
        for event in events:
            noisy.append(event)
            if budget > 0 and rng.random() < config.noise:
                noisy.append(_benign_event(rng, NOISE_LINES, set(SERVICES), ctx, li))
                budget -= 1
        events = noisy
    lines = _format(events, ctx, rng)
    if not MIN_LINES <= len(lines) <= MAX_LINES:
        raise RuntimeError(f"sequence of {len(lines)} lines ({spec}), expected {MIN_LINES}-{MAX_LINES}")
    return SequenceRecord.model_validate(
        {
            "sequence_id": f"{config.id_prefix}-{spec.index:06d}",
            "label": 0 if anomaly is None else 1,
            "length": len(lines),
            "log_entries": lines,
            "anomaly_type": spec.anomaly_type,
            "flow": flow.key,
            "root_cause_service": anomaly.root_cause_service if anomaly else None,
            "root_cause": anomaly.root_cause if anomaly else None,
            "severity": anomaly.severity if anomaly else None,
            "suggested_response": anomaly.suggested_response if anomaly else None,
            "difficulty": config.difficulty,
            "lang": spec.lang,
        }
    )


def _compatible_flows() -> dict[str, list[str]]:
    """For each anomaly type, the flows whose skeleton can host it."""
    out: dict[str, list[str]] = {}
    for anomaly_type, builder in BUILDERS.items():
        out[anomaly_type] = []
        for key, flow in FLOWS.items():
            rng = random.Random(0)
            ctx = _context(rng, flow, "en")
            if builder(Situation(flow, normal_plan(flow, rng, ctx, "en"), ctx, rng, "en", "hard")) is not None:
                out[anomaly_type].append(key)
    return out


COMPATIBLE_FLOWS = _compatible_flows()


def plan_specs(config: GeneratorConfig) -> list[SequenceSpec]:
    """Labels, types, flows and languages of all sequences: exact anomaly ratio, types balanced."""
    rng = random.Random(derive_seed(config.seed, f"{config.id_prefix}:plan"))
    n = config.num_sequences
    n_anomalous = round(n * config.anomaly_ratio)
    type_order = list(ANOMALY_TYPES)
    rng.shuffle(type_order)  # which types get the one extra sequence when n does not divide evenly
    kinds: list[str | None] = [type_order[i % len(type_order)] for i in range(n_anomalous)]
    kinds += [None] * (n - n_anomalous)
    rng.shuffle(kinds)
    if config.lang == "both":
        langs = ["en"] * ((n + 1) // 2) + ["zh"] * (n // 2)
        rng.shuffle(langs)
    else:
        langs = [config.lang] * n
    flow_keys = list(FLOWS)
    specs = []
    for i, kind in enumerate(kinds):
        flow = rng.choice(flow_keys if kind is None else COMPATIBLE_FLOWS[kind])
        specs.append(SequenceSpec(i, kind, flow, langs[i]))
    return specs


def iter_sequences(config: GeneratorConfig, progress: bool = True) -> Iterator[SequenceRecord]:
    """Generate the sequences of a config in order, with a progress bar on a terminal."""
    config.validate()
    specs = plan_specs(config)
    bar = tqdm(specs, desc="sequences", unit="seq", disable=None if progress else True)
    for spec in bar:
        yield build_sequence(spec, config)


def generate_sequences(config: GeneratorConfig, progress: bool = True) -> list[SequenceRecord]:
    """All sequences of a config."""
    return list(iter_sequences(config, progress))


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script."""
    parser = argparse.ArgumentParser(
        prog="log_sequence_generator.py",
        description="Generate labelled microservice log sequences (JSON, plus a CSV with the same stem).",
    )
    parser.add_argument("--num-sequences", type=int, default=8000, help="sequences to generate (default 8000)")
    parser.add_argument("--anomaly-ratio", type=float, default=0.3, help="share of anomalous sequences (default 0.3)")
    parser.add_argument(
        "--difficulty",
        choices=DIFFICULTIES,
        default="hard",
        help="easy: obvious ERROR lines; hard (default): WARN/INFO phrasing, rare normal paths, harmless warnings",
    )
    parser.add_argument(
        "--noise", type=float, default=0.05, help="chance of a background line after each line (default 0.05)"
    )
    parser.add_argument("--lang", choices=LANGS, default="en", help="message language (both: about half each)")
    parser.add_argument("--seed", type=int, default=42, help="random seed; same seed, same bytes (default 42)")
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help=f"output .json/.jsonl/.csv (default {DEFAULT_OUTPUT})"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar, warnings only")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Generate the data set and write it (JSON and CSV)."""
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)

    def body() -> int:
        config = GeneratorConfig(
            num_sequences=args.num_sequences,
            anomaly_ratio=args.anomaly_ratio,
            difficulty=args.difficulty,
            noise=args.noise,
            lang=args.lang,
            seed=args.seed,
        )
        config.validate()
        output: Path = args.output
        record_format(output)
        records = generate_sequences(config, progress=not args.quiet)
        write_records(output, records)
        written = [output]
        csv_path = output.with_suffix(".csv")
        if csv_path != output:
            write_records(csv_path, records)
            written.append(csv_path)
        types = Counter(r.anomaly_type for r in records if r.label == 1)
        n_anomalous = sum(types.values())
        log.info(
            "%d sequences (%d anomalous: %s) -> %s",
            len(records),
            n_anomalous,
            ", ".join(f"{k}={types[k]}" for k in ANOMALY_TYPES if types[k]),
            ", ".join(str(p) for p in written),
        )
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
