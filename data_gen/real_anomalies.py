"""Real anomalies for the explainer: loghub logs as a second domain, category ``other``, grounded texts.

    python data_gen/real_anomalies.py                      # data/real_anomalies_train.jsonl + data/real_anomalies.jsonl
    logtriage train-large --data data/instructions_chat.jsonl          # picks up real_anomalies_train.jsonl beside it
    logtriage evaluate-large --model artifacts/explainer --data data/real_anomalies.jsonl

The generator's taxonomy (timeout, missing_step, ...) describes its own microservice flows; a real
anomaly of HDFS or BGL is none of them. These records teach the explainer what such an anomaly
looks like and what a grounded explanation of it says: category ``other``, and texts that quote
only the sequence's own lines (the first line that reports a failure, else the last line; its
component). No text names a service, flow or figure the lines do not hold.

Where the records come from (``--loghub``, default ``$LOGTRIAGE_LOGHUB`` or
``../shared/datasets/loghub``; ``--hdfs-sessions``, default ``hdfs_sessions`` beside it):

- HDFS: block sessions the labels call anomalous, whole lifecycles (``hdfs_sessions``), alternately
  one that stops within 5 lines and one that does not: training from ``val.jsonl.gz``, evaluation
  from ``test.jsonl.gz``;
- BGL: the 10-line windows of ``BGL_2k.log`` that hold an alert line: the first half train, the
  second half evaluate;
- OpenStack, OpenSSH, Thunderbird: the 10-line windows of their 2k samples with a failure-looking
  line (a level of ERROR/WARN/FATAL or a word such as error, failed, refused, denied, exception):
  evaluation only, so three systems the explainer never saw test how it does on new systems.

Severity (the explainer needs one; nothing labels it in these logs): ``high`` where a line has a
fatal/critical/panic level, ``medium`` where one reports a failure, ``low`` otherwise.
Training records are English; ``--per-system`` caps each system's records (default 30 to train,
10 to evaluate). The same inputs give byte-identical files.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.cli_args import run_cli
from core.errors import DataError
from core.io import read_records, write_records
from core.labels import OTHER
from core.loghub import iter_loghub, labelled_windows
from data_gen.cli_utils import setup_logging

log = logging.getLogger(__name__)

TRAIN_FILE = "real_anomalies_train.jsonl"
EVAL_FILE = "real_anomalies.jsonl"
WINDOW = 10
SHORT_SESSION = 5  # an HDFS session of at most this many lines "stops early"
QUOTE_CHARS = 100

FAILURE = re.compile(
    r"(?i)\b(error|errors|fail|failed|failure|fatal|invalid|refused|denied|exception|time ?out|timed out|panic|"
    r"unable|cannot|can't|corrupt(ed)?|abort(ed)?|lost|unreachable|severe|critical)\b"
)
FATAL_LEVELS = {"FATAL", "CRITICAL", "CRIT", "PANIC", "SEVERE", "EMERG", "ALERT"}
FAILURE_LEVELS = FATAL_LEVELS | {"ERROR", "ERR", "WARN", "WARNING", "FAILURE"}
LEVELS = FAILURE_LEVELS | {"INFO", "DEBUG", "TRACE", "NOTICE", "NOTE"}
# the component after the level, as most formats write it: "INFO dfs.DataNode$PacketResponder: ...",
# "WARNING nova.compute.manager [...]", "RAS FATAL KERNEL ..."; or a "program[pid]:" tag
_AFTER_LEVEL = re.compile(r"\b(?:" + "|".join(sorted(LEVELS)) + r")\s+([A-Za-z][\w.$-]*)")
_PROGRAM = re.compile(r"(?<![\w.])([A-Za-z][\w.-]*)\[\d+\]:")


def default_loghub() -> Path:
    """``$LOGTRIAGE_LOGHUB``, else ``../shared/datasets/loghub`` beside the project."""
    env = os.environ.get("LOGTRIAGE_LOGHUB")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "datasets" / "loghub"


def _levels(line: str) -> set[str]:
    return {w for w in re.findall(r"[A-Z]{3,}", line) if w in FAILURE_LEVELS}


def failure_line(lines: Sequence[str]) -> int | None:
    """The index of the first line that reports a failure (a failure level or word), None when none does."""
    for index, line in enumerate(lines):
        if _levels(line) or FAILURE.search(line):
            return index
    return None


def severity_of(lines: Sequence[str]) -> str:
    """``high`` (a fatal level), ``medium`` (a failure reported), ``low`` (nothing reports one)."""
    if any(_levels(line) & FATAL_LEVELS for line in lines):
        return "high"
    return "medium" if failure_line(lines) is not None else "low"


def component_of(line: str) -> str | None:
    """The component a line names, as the common formats write it (None when none is seen)."""
    match = _AFTER_LEVEL.search(line) or _PROGRAM.search(line)
    return match.group(1).rstrip(":.") if match else None


def _lines(n: int) -> str:
    """``n`` lines, in words below ten (``one line``, ``12 lines``: the prompt states the count)."""
    words = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    return (words[n] if n < len(words) else str(n)) + (" line" if n == 1 else " lines")


def _quote(line: str) -> str:
    text = " ".join(line.split())
    return text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 3].rstrip() + "..."


def grounded_texts(lines: Sequence[str]) -> dict[str, str]:
    """Summary, root cause and suggested response that quote only the lines (see the module docstring)."""
    if not lines:
        raise DataError("an anomaly needs at least one line")
    at = failure_line(lines)
    if at is not None:
        quote = _quote(lines[at])
        component = component_of(lines[at])
        who = component or "the component that wrote it"
        return {
            "summary": f'A line reports a failure: "{quote}".',
            "root_cause": (
                f"Not one of the known categories. {component or 'A component'} logged "
                f'"{quote}"; these lines do not show what caused it.'
            ),
            "suggested_response": (
                f"Read the log of {who} around that line, check that process and its host, and escalate "
                "to its owner if the failure repeats."
            ),
        }
    quote = _quote(lines[-1])
    n = len(lines)
    return {
        "summary": f'No line reports a failure; the sequence ends after {_lines(n)} with "{quote}".',
        "root_cause": (
            "Not one of the known categories: the anomaly is in which lines occur and in what order, not "
            f'in an error message. The last line is "{quote}".'
        ),
        "suggested_response": (
            "Compare this sequence with normal ones of the same kind, find the step that is missing or extra, "
            "and check the component that should have written it."
        ),
    }


def record(sequence_id: str, lines: Sequence[str], source: str, **extra: Any) -> dict[str, Any]:
    """One explainer record: category ``other``, the severity rule, the grounded texts."""
    return {
        "sequence_id": sequence_id,
        "log_entries": list(lines),
        "category": OTHER,
        "severity": severity_of(lines),
        "lang": "en",
        "source": source,
        **grounded_texts(lines),
        **extra,
    }


def hdfs_records(path: Path, n: int) -> list[dict[str, Any]]:
    """Anomalous HDFS sessions of a session file, short (stopped early) and long alternately."""
    anomalies = [r for r in read_records(path) if r.label == 1]
    short = [r for r in anomalies if len(r.log_entries) <= SHORT_SESSION]
    long = [r for r in anomalies if len(r.log_entries) > SHORT_SESSION]
    picked = [r for pair in zip(short, long, strict=False) for r in pair][:n]
    return [record(r.sequence_id, r.log_entries, "HDFS") for r in picked]


def alert_records(path: Path, half: str, n: int) -> list[dict[str, Any]]:
    """The alert windows of a labelled loghub log: its first or second half (``half``: first/second)."""
    windows = [r for r in labelled_windows(path, WINDOW) if r.label == 1]
    middle = len(windows) // 2
    chosen = windows[:middle] if half == "first" else windows[middle:]
    return [
        record(r.sequence_id, r.log_entries, path.name.split("_")[0], alert=r.anomaly_type) for r in chosen[:n]
    ]  # the alert tag is kept as ``alert``: BGL's tags are not the explainer's taxonomy


def failure_windows(path: Path, n: int) -> list[dict[str, Any]]:
    """The first ``n`` 10-line windows of a loghub log that hold a line reporting a failure."""
    system = path.name.split("_")[0]
    lines = [x.message for x in iter_loghub(path, system)]
    rows = []
    for start in range(0, len(lines) - WINDOW + 1, WINDOW):
        window = lines[start : start + WINDOW]
        if failure_line(window) is not None:
            rows.append(record(f"{system}-{start + 1}", window, system))
        if len(rows) >= n:
            break
    return rows


def build(
    loghub: Path, sessions: Path | None, train_n: int, eval_n: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The training and evaluation records (see the module docstring)."""
    if not loghub.is_dir():
        raise DataError("no loghub folder (pass --loghub or set LOGTRIAGE_LOGHUB)", loghub)
    train: list[dict[str, Any]] = []
    evaluate: list[dict[str, Any]] = []
    if sessions is not None and sessions.is_dir():
        train += hdfs_records(sessions / "val.jsonl.gz", train_n)
        evaluate += hdfs_records(sessions / "test.jsonl.gz", eval_n)
    else:
        log.warning("no HDFS block sessions at %s: no HDFS records", sessions)
    bgl = loghub / "BGL" / "BGL_2k.log"
    train += alert_records(bgl, "first", train_n)
    evaluate += alert_records(bgl, "second", eval_n)
    for system in ("OpenStack", "OpenSSH", "Thunderbird"):
        evaluate += failure_windows(loghub / system / f"{system}_2k.log", eval_n)
    return train, evaluate


def _counts(rows: Sequence[dict[str, Any]]) -> str:
    seen: dict[str, int] = {}
    for row in rows:
        seen[row["source"]] = seen.get(row["source"], 0) + 1
    return ", ".join(f"{k} {v}" for k, v in seen.items())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--loghub", type=Path, default=None, help="the loghub samples (default $LOGTRIAGE_LOGHUB)")
    p.add_argument("--hdfs-sessions", type=Path, default=None, help="HDFS block sessions (default: beside --loghub)")
    p.add_argument("--output-dir", type=Path, default=Path("data"))
    p.add_argument("--per-system", type=int, default=None, help="records per system (default 30 train, 10 eval)")
    ns = p.parse_args(argv)
    setup_logging()

    def go() -> int:
        loghub = ns.loghub or default_loghub()
        sessions = ns.hdfs_sessions or loghub.parent / "hdfs_sessions"
        train, evaluate = build(loghub, sessions, ns.per_system or 30, ns.per_system or 10)
        ns.output_dir.mkdir(parents=True, exist_ok=True)
        write_records(ns.output_dir / TRAIN_FILE, train)
        write_records(ns.output_dir / EVAL_FILE, evaluate)
        print(f"{len(train)} training records ({_counts(train)}) -> {ns.output_dir / TRAIN_FILE}")
        print(f"{len(evaluate)} evaluation records ({_counts(evaluate)}) -> {ns.output_dir / EVAL_FILE}")
        return 0

    return run_cli(go)


if __name__ == "__main__":
    raise SystemExit(main())
