"""What the data_gen scripts share on the command line: logging setup and seeds (one-line errors: core.cli_args)."""

from __future__ import annotations

import hashlib
import logging
import sys


def setup_logging(quiet: bool = False) -> None:
    """Plain INFO messages on stderr (WARNING only with ``quiet``)."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr)


def derive_seed(seed: int, tag: str) -> int:
    """A stable 64-bit seed for one named stream of randomness (independent of PYTHONHASHSEED)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{tag}".encode()).digest()[:8], "big")
