"""What the data_gen scripts share on the command line: logging setup and one-line errors."""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Callable

from core.errors import LogTriageError


def setup_logging(quiet: bool = False) -> None:
    """Plain INFO messages on stderr (WARNING only with ``quiet``)."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr)


def run_cli(body: Callable[[], int]) -> int:
    """Run a script body; a user-facing error becomes ``error: <msg>`` on stderr and exit code 2."""
    try:
        return body()
    except LogTriageError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
    return 2


def derive_seed(seed: int, tag: str) -> int:
    """A stable 64-bit seed for one named stream of randomness (independent of PYTHONHASHSEED)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{tag}".encode()).digest()[:8], "big")
