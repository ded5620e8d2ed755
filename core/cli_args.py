"""Command-line options shared by every part that reads raw logs."""

from __future__ import annotations

import argparse

DEVICE_HELP = "where the detector runs: cpu, cuda, cuda:N, or auto (CUDA where a GPU is there)"


def add_window_arguments(parser: argparse.ArgumentParser) -> None:
    """The input-format and windowing options (fixed, sliding, session)."""
    parser.add_argument(
        "--input-format",
        default="auto",
        help="auto (records by suffix, .jsonl events, else text), text, events, or a loghub system "
        "(HDFS, BGL, Thunderbird, OpenSSH, Linux, Apache, OpenStack)",
    )
    parser.add_argument("--window-type", choices=["fixed", "sliding", "session"], default="fixed")
    parser.add_argument("--window-size", type=int, default=10, help="lines per window (fixed, sliding; default 10)")
    parser.add_argument("--step", type=int, default=None, help="sliding step (default: half the size)")
    parser.add_argument(
        "--session-key", default=None, help=r"regex whose first group is the session key, e.g. 'blk_-?\d+'"
    )
    parser.add_argument("--field", default=None, help="message field of JSON events (default: message/msg/log/...)")
