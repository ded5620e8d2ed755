"""The explainer's commands: ``train-large``, ``explain``, ``evaluate-large``.

The ``logtriage`` command registers them with :func:`add_commands`, e.g.
``logtriage explain --model artifacts/explainer --input seq.jsonl``. Each handler takes the parsed
Namespace and returns an exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from core.errors import DataError
from large_model import evaluate, train, train_args
from large_model.answer import DEFAULT_MAX_NEW_TOKENS

log = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace], int]
TEXT_SUFFIXES = {".txt", ".log", ""}


def _parse_context(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    context = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DataError(f"--context takes key=value, got {item!r}")
        context[key] = value
    return context


def _sequences(ns: argparse.Namespace) -> Iterator[tuple[str, list[Any]]]:
    """(sequence_id, lines) from --line, --input (records or plain text) or stdin."""
    if ns.line:
        yield "cli", list(ns.line)
        return
    if ns.input is None or str(ns.input) == "-":
        data = sys.stdin.buffer.read()
        lines: list[Any] = [raw for raw in data.splitlines() if raw.strip()]
        yield "stdin", lines
        return
    path = Path(ns.input)
    if path.suffix.lower() in TEXT_SUFFIXES:
        if not path.is_file():
            raise DataError("no such file", path)
        yield path.name, [raw for raw in path.read_bytes().splitlines() if raw.strip()]
        return
    from core.io import iter_records

    for record in iter_records(path):
        yield record.sequence_id, list(record.log_entries)


def run_explain(ns: argparse.Namespace) -> int:
    """The ``explain`` handler: one JSON explanation per sequence on stdout (JSON lines)."""
    from large_model.loader import load_explainer

    explainer = load_explainer(
        ns.model, backend=ns.backend, device=ns.device, dtype=ns.dtype, max_new_tokens=ns.max_new_tokens
    )
    context = _parse_context(ns.context)
    out = open(ns.output, "w", encoding="utf-8") if ns.output else sys.stdout  # noqa: SIM115
    try:
        for sequence_id, lines in _sequences(ns):
            explanation = explainer.explain(lines, lang=ns.lang, context=context)
            out.write(json.dumps({"sequence_id": sequence_id, **explanation.model_dump()}, ensure_ascii=False) + "\n")
            out.flush()
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def add_explain_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``explain`` flags."""
    parser.add_argument("--model", type=Path, default=None, help="explainer folder (default settings.explainer_path)")
    parser.add_argument("--input", default=None, help="records (.jsonl/.json/.csv), a plain log file, or - for stdin")
    parser.add_argument("--line", action="append", help="a log line (repeat for a sequence)")
    parser.add_argument("--lang", choices=("en", "zh"), default="en")
    parser.add_argument("--context", action="append", metavar="KEY=VALUE", help="extra context for the prompt")
    parser.add_argument("--backend", choices=("inprocess", "openai"), default=None, help="default settings.llm_backend")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--output", default=None, help="write JSON lines here instead of stdout")
    return parser


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], argparse.ArgumentParser], Handler]] = {
    "train-large": ("QLoRA fine-tune the LLM explainer", train_args.add_arguments, train.run),
    "explain": (
        "explain anomalous log sequences (category, severity, root cause, response)",
        add_explain_arguments,
        run_explain,
    ),
    "evaluate-large": ("evaluate the explainer (and the untuned base beside it)", evaluate.add_arguments, evaluate.run),
}


def add_commands(subparsers: Any) -> dict[str, Handler]:
    """Register the three commands on an argparse subparsers object; each sets ``handler``."""
    handlers = {}
    for name, (help_text, add_args, handler) in COMMANDS.items():
        parser = subparsers.add_parser(name, help=help_text, description=help_text)
        add_args(parser)
        parser.set_defaults(handler=handler)
        handlers[name] = handler
    return handlers
