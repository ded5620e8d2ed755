"""What every command line shares: the raw-log options, arguments built from a dataclass, and the
one-line error wrapper."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from core.errors import DataError, LogTriageError

DEVICE_HELP = "where the detector runs: cpu, cuda, cuda:N, or auto (CUDA where a GPU is there)"


def run_cli(body: Callable[[], int]) -> int:
    """Run a command; what goes wrong becomes one line on stderr and an exit code, never a traceback.

    A :class:`LogTriageError` (bad input, a missing model) or an ``OSError`` prints ``error: ...`` and
    returns 2; Ctrl-C returns 130; anything else prints one line and returns 1 (``LOGTRIAGE_DEBUG=1``
    raises it instead, traceback and all).
    """
    try:
        return body()
    except LogTriageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the last line of defence
        if os.environ.get("LOGTRIAGE_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (LOGTRIAGE_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


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


def flag(name: str) -> str:
    """The command-line flag of a dataclass field: ``top_p`` -> ``--top-p``."""
    return "--" + name.replace("_", "-")


def add_dataclass_arguments(
    parser: Any,
    cls: type,
    helps: Mapping[str, str],
    skip: Iterable[str] = (),
    choices: Mapping[str, Iterable[str]] | None = None,
    show_default: bool = True,
) -> list[str]:
    """One option per field of ``cls`` (a dataclass) but ``skip``, its type and choices from the annotation.

    Every option defaults to ``None`` (booleans: ``--x/--no-x``), so a caller tells what was given from
    what was not and the dataclass (or a profile) keeps the defaults; the help shows the dataclass
    default (unless ``show_default`` is false: ``helps`` say it). Fields whose type is not a scalar (lists, dicts) get no option. Returns the field names.
    """
    hints = typing.get_type_hints(cls)
    instance_defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    names = []
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        kind, options = _scalar_type(hints[f.name])
        if kind is None:
            continue
        if choices and f.name in choices:
            options = tuple(choices[f.name])
        default = instance_defaults.get(f.name, dataclasses.MISSING)
        text = helps.get(f.name, "")
        if show_default and default not in (dataclasses.MISSING, None):
            text = f"{text} (default {default})" if text else f"default {default}"
        if kind is bool:
            parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag(f.name), type=kind, choices=options, default=None, help=text)
        names.append(f.name)
    return names


def _scalar_type(hint: Any) -> tuple[Any, tuple[Any, ...] | None]:
    """(argparse type, choices) of an annotation: ``int | None`` -> int, ``Literal["a", "b"]`` -> (str, ...)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _scalar_type(inner[0]) if len(inner) == 1 else (None, None)
    if typing.get_origin(hint) is typing.Literal:
        return type(args[0]), args
    if hint in (int, float, str, bool, Path):
        return hint, None
    return None, None


def check_profile(profiles: Mapping[str, Any], profile: str) -> None:
    """A :class:`DataError` unless ``profile`` names one of a trainer's ``profiles`` (training budgets by name)."""
    if profile not in profiles:
        raise DataError(f"unknown profile {profile!r} (use one of {', '.join(profiles)})")


def with_profile(profiles: Mapping[str, Mapping[str, Any]], profile: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of a run: ``profile``'s budgets where ``kwargs`` set none, and the profile's name."""
    check_profile(profiles, profile)
    return {**profiles[profile], **kwargs, "profile": profile}


def given(ns: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The options among ``names`` that were given on the command line (not ``None``)."""
    return {k: getattr(ns, k) for k in names if getattr(ns, k, None) is not None}
