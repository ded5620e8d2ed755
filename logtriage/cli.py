"""The ``logtriage`` command line: one entry point, one subcommand per job.

Each part registers its own subcommands (``add_commands(subparsers)``); handlers import heavy
libraries only when they run, so ``logtriage --help`` stays fast. Errors meant for users print
as one line (``error: ...``) with exit code 2; no traceback unless ``LOGTRIAGE_DEBUG=1``.
This is the one module outside ``api/`` that imports it (to register its commands).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from core.cli_args import run_cli

Handler = Callable[[argparse.Namespace], int]
log = logging.getLogger("logtriage")
OWN_PACKAGES = ("core", "data_gen", "small_model", "large_model", "db", "api", "logtriage")

# the modules whose ``add_commands(subparsers)`` register the subcommands, in --help's order
COMMAND_MODULES = (
    "core.prepare",  # prepare
    "small_model.cli",  # train-small, evaluate-small
    "large_model.cli",  # train-large, explain, evaluate-large
    "small_model.clusters.cli",  # cluster, analyze-clusters
    "api.detect_cli",  # detect
    "api.tail_cli",  # tail
    "api.serve_cli",  # serve, worker, jobs
)


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every part's subcommands."""
    parser = argparse.ArgumentParser(prog="logtriage", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = __import__(module_name, fromlist=["add_commands"])
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] in OWN_PACKAGES and not module_name.startswith(exc.name or "-"):
                raise  # a module of ours is missing: a bug, not a partial install
            log.debug("no %s commands: %s is not installed", module_name, exc.name)
            continue  # that part, or a library only it needs, is not installed in this build (a GPU box)
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
    return run_cli(lambda: handler(args))


if __name__ == "__main__":
    sys.exit(main())
