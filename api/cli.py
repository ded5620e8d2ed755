"""The ``logtriage`` command line: one entry point, one subcommand per job.

Each part registers its own subcommands (``add_commands(subparsers)``); handlers import heavy
libraries only when they run, so ``logtriage --help`` stays fast. Errors meant for users print
as one line (``error: ...``) with exit code 2; no traceback unless ``LOGTRIAGE_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from core.cli_args import add_window_arguments
from core.errors import LogTriageError

Handler = Callable[[argparse.Namespace], int]
log = logging.getLogger("logtriage")


def _prepare(args: argparse.Namespace) -> int:
    import itertools

    from core.io import write_records
    from core.prepare import records_from_file

    records = records_from_file(
        args.input, args.input_format, args.window_type, args.window_size, args.step, args.session_key, args.field
    )
    first = next(records, None)
    if first is None:  # checked before anything is written
        raise LogTriageError(f"{args.input}: no log lines to window")
    count = write_records(args.output, itertools.chain([first], records))
    print(f"{count} sequences -> {args.output}")
    return 0


def _add_core_commands(sub: Any) -> None:
    p = sub.add_parser(
        "prepare",
        help="turn raw logs (text, JSON events, loghub) into sequence records",
        description="Window a raw log into sequence records (JSON/JSONL/CSV by the output suffix).",
    )
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True)
    add_window_arguments(p)
    p.set_defaults(handler=_prepare)


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every part's subcommands."""
    parser = argparse.ArgumentParser(prog="logtriage", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_core_commands(sub)
    for module_name in (
        "small_model.cli",
        "large_model.cli",
        "small_model.clusters.cli",
        "api.detect_cli",
        "api.tail_cli",
        "api.serve_cli",
    ):
        try:
            module = __import__(module_name, fromlist=["add_commands"])
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # that part is not installed in this build
            raise
        module.add_commands(sub)
    return parser


# HTTP clients that log every request at INFO (an LLM explanation is 5 requests): shown only with -v.
CHATTY_LOGGERS = ("httpx", "httpcore", "openai")


def configure_logging(verbose: bool = False) -> None:
    """INFO (DEBUG with ``-v``) on stderr; the HTTP clients' per-request lines only with ``-v``."""
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger().setLevel(level)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 1
    try:
        return handler(args)
    except LogTriageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the last line of defence: one line, never a traceback
        if os.environ.get("LOGTRIAGE_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (LOGTRIAGE_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
