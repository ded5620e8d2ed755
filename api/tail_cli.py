"""``logtriage tail FILE|-``: follow a growing log (rotation and truncation too) through live sessions.

Lines are grouped into sessions by the same rules as the service's OTLP receiver (a trace id in the
line, a regex, or service + time window; closed by idle time, length or an end pattern); each
session is scored as it closes and printed, or stored (``--store``) with its explanation and alerts
queued as ``/detect`` would. ``-`` reads standard input until it ends. Ctrl-C (or SIGTERM) closes
the open sessions, scores them and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from core.cli_args import DEVICE_HELP
from core.errors import DataError
from core.sessions import ClosedSession, LogRecord, Sessionizer, SessionRules

CHUNK = 1 << 20


class Follower:
    """Reads the complete lines appended to a file since the last call; reopens it when it is rotated."""

    def __init__(self, path: Path, from_start: bool, max_line_bytes: int) -> None:
        self.path = path
        self.max_line_bytes = max_line_bytes
        self.partial = b""
        self.rotations = 0
        try:
            self.file: IO[bytes] = open(path, "rb")  # noqa: SIM115 (kept open while following)
        except OSError as exc:
            raise DataError(f"cannot open: {exc.strerror or exc}", path) from None
        self.inode = os.fstat(self.file.fileno()).st_ino
        if not from_start:
            self.file.seek(0, os.SEEK_END)

    def _split(self, data: bytes) -> list[str]:
        self.partial += data
        *complete, self.partial = self.partial.split(b"\n")
        if len(self.partial) > self.max_line_bytes:  # a line without end: cut it rather than grow without bound
            complete.append(self.partial[: self.max_line_bytes] + " …[cut: line over the limit]".encode())
            self.partial = b""
        return [c.rstrip(b"\r").decode("utf-8", errors="replace") for c in complete]

    def read(self) -> list[str]:
        """The new complete lines (empty when there are none yet)."""
        lines = self._split(self.file.read(CHUNK))
        if lines:
            return lines
        try:
            st = os.stat(self.path)
        except FileNotFoundError:  # rotated away, the new file not there yet
            return []
        if st.st_ino != self.inode:  # rotated: finish the old file, then follow the new one from its start
            lines = self._split(self.file.read())
            if self.partial:
                lines.append(self.partial.decode("utf-8", errors="replace"))
                self.partial = b""
            self.file.close()
            self.file = open(self.path, "rb")  # noqa: SIM115
            self.inode = os.fstat(self.file.fileno()).st_ino
            self.rotations += 1
        elif st.st_size < self.file.tell():  # truncated in place (copytruncate)
            self.file.seek(0)
            self.partial = b""
        return lines

    def close(self) -> None:
        """Stop following."""
        self.file.close()


def _stdin_lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
    for raw in sys.stdin.buffer:
        loop.call_soon_threadsafe(queue.put_nowait, raw.rstrip(b"\r\n").decode("utf-8", errors="replace"))
    loop.call_soon_threadsafe(queue.put_nowait, None)


def _print(item: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(item, ensure_ascii=False), flush=True)
        return
    flag = "ANOMALY" if item["is_anomaly"] else "normal "
    print(f"{item['sequence_id']:<40} {len(item['log_entries']):>5} lines  score={item['score']:.3f} {flag} "
          f"risk={item['risk_level']} (closed: {item['close_reason']})", flush=True)  # fmt: skip
    for top in item.get("top_lines") or []:
        print(f"     line {top['index'] + 1:>3} (+{top['contribution']:.3f}): {top['line'][:150]}", flush=True)


def _session_rules(args: argparse.Namespace, settings: Any) -> SessionRules:
    """The session rules: the command's options, else the LOGTRIAGE_SESSION_* settings."""
    return SessionRules(
        key=args.session_key or settings.session_key,
        key_regex=args.key_regex or settings.session_key_regex,
        window_seconds=args.window_seconds or settings.session_window_seconds,
        idle_seconds=args.idle or settings.session_idle_seconds,
        max_lines=args.max_lines or settings.session_max_lines,
        end_pattern=args.end_pattern or settings.session_end_pattern,
        max_open=args.max_open or settings.session_max_open,
        regex_timeout_seconds=settings.session_regex_timeout_ms / 1000.0,
    )


def _open_follower(args: argparse.Namespace, settings: Any) -> Follower | None:
    """The follower of the file (None for stdin); from here on every appended line is read."""
    if args.input == "-":
        return None
    follower = Follower(Path(args.input), args.from_start, settings.max_line_bytes_request)
    where = "its start" if args.from_start else "its end"
    print(f"following {args.input} from {where} (Ctrl-C stops)", file=sys.stderr, flush=True)
    return follower


async def _load_detector(args: argparse.Namespace, settings: Any) -> Any:
    """The detector service over the artifact of ``--detector`` (loaded off the event loop)."""
    from api.metrics import Metrics
    from api.services import DetectorService
    from small_model.registry import load_detector

    detector_path = Path(args.detector or settings.detector_path)
    loaded = await asyncio.to_thread(load_detector, detector_path, args.device or settings.device)
    return DetectorService(loaded, settings, Metrics(), args.top)


async def _open_database(args: argparse.Namespace, settings: Any) -> Any:
    """The database, upgraded to the current schema, with ``--store``; else None."""
    if not args.store:
        return None
    from db.session import Database

    db = Database(settings.database_url)
    await db.upgrade()
    return db


class _Reporter:
    """Scores closed sessions, stores them with ``--store``, prints them and counts them."""

    def __init__(self, args: argparse.Namespace, settings: Any, detector: Any, db: Any) -> None:
        self.args = args
        self.settings = settings
        self.detector = detector
        self.db = db
        self.sessions = 0
        self.anomalous = 0

    async def _store(self, closed: list[ClosedSession], verdicts: list[Any]) -> list[str | None]:
        from api.detecting import detect_and_store, queue_followups

        items: list[tuple[str | None, list[str], dict[str, Any] | None]] = [
            (c.key, c.lines, {"type": "session", "key": c.key, "close_reason": c.reason, "source": "tail",
                              "service": c.service}) for c in closed
        ]  # fmt: skip
        async with self.db.session() as session:
            rows = await detect_and_store(session, self.detector, self.settings, items, "tail", verdicts=verdicts)
            await queue_followups(session, self.settings, rows)
            await session.commit()
        return [r.id for r in rows]

    async def report(self, closed: list[ClosedSession]) -> None:
        """Score, store (with ``--store``) and print the closed sessions that hold a non-blank line."""
        closed = [c for c in closed if any(line.strip() for line in c.lines)]
        if not closed:
            return
        verdicts = await self.detector.detect([c.lines for c in closed])
        ids: list[str | None] = [None] * len(closed)
        if self.db is not None:
            ids = await self._store(closed, verdicts)
        for c, v, detection_id in zip(closed, verdicts, ids, strict=True):
            self.sessions += 1
            self.anomalous += v.is_anomaly
            item = {"id": detection_id, "sequence_id": c.key, "score": round(v.score, 6), "is_anomaly": v.is_anomaly,
                    "risk_level": v.risk_level, "close_reason": c.reason, "log_entries": c.lines,
                    "top_lines": v.top_lines, "model_version": v.model_version}  # fmt: skip
            if detection_id is None:
                item.pop("id")
            _print(item, self.args.json)


async def _read_stdin(queue: asyncio.Queue[str | None], poll: float) -> tuple[list[str], bool]:
    """The lines queued from stdin within ``poll`` seconds, and whether stdin has ended."""
    lines: list[str] = []
    ended = False
    with contextlib.suppress(TimeoutError):
        first = await asyncio.wait_for(queue.get(), poll)
        while first is not None:
            lines.append(first)
            if queue.empty():
                break
            first = queue.get_nowait()
        ended = first is None
    return lines, ended


async def _read_loop(
    args: argparse.Namespace, follower: Follower | None, sessions: Sessionizer, reporter: _Reporter, service: str
) -> None:
    """Read lines until stdin ends or a signal comes, reporting sessions as they close; then close the rest."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stdin_queue: asyncio.Queue[str | None] = asyncio.Queue()
    if follower is None:
        threading.Thread(target=_stdin_lines, args=(loop, stdin_queue), daemon=True).start()
    ended = False
    while not stop.is_set() and not ended:
        if follower is not None:
            lines = await asyncio.to_thread(follower.read)
        else:
            lines, ended = await _read_stdin(stdin_queue, args.poll)
        now = time.time()
        closed: list[ClosedSession] = []
        for line in lines:
            if line.strip():
                closed += sessions.add(LogRecord(line=line, service=service, time=now), now)
        closed += sessions.expire(now)
        await reporter.report(closed)
        if not lines and follower is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.poll)
    await reporter.report(sessions.flush())


async def _tail(args: argparse.Namespace) -> int:
    from core.settings import settings_with

    settings = settings_with(database_url=args.database_url)
    sessions = Sessionizer(_session_rules(args, settings))
    follower = _open_follower(args, settings)
    service = args.service or ("stdin" if follower is None else Path(args.input).name)
    db = None
    try:
        detector = await _load_detector(args, settings)
        db = await _open_database(args, settings)
        reporter = _Reporter(args, settings, detector, db)
        await _read_loop(args, follower, sessions, reporter, service)
    finally:
        if follower is not None:
            follower.close()
        if db is not None:
            await db.dispose()
    print(f"{reporter.sessions} sessions, {reporter.anomalous} anomalous (closed: {sessions.closed_by_reason}; "
          f"regex timeouts: {sessions.keys.timeouts})", file=sys.stderr)  # fmt: skip
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.input != "-" and not Path(args.input).is_file():
        raise DataError("no such file", args.input)
    return asyncio.run(_tail(args))


def add_commands(sub: Any) -> None:
    """Register ``tail``."""
    p = sub.add_parser(
        "tail",
        help="follow a growing log file (or stdin) and score its sessions as they close",
        description="Follow FILE as it grows (rotation and truncation included) or read stdin (-); lines are "
        "grouped into sessions (a trace id in the line, --key-regex, or service + time window) that close after "
        "--idle seconds without a line, at --max-lines or on --end-pattern, and are scored as they close. "
        "Defaults come from the LOGTRIAGE_SESSION_* settings.",
    )
    p.add_argument("input", metavar="FILE|-", help="the log file to follow, or - for stdin")
    p.add_argument("--from-start", action="store_true", help="read the file from its start (default: only new lines)")
    p.add_argument("--session-key", choices=["trace_id", "regex", "service_window"], default=None,
                   help="how lines are grouped (default LOGTRIAGE_SESSION_KEY, trace_id: a trace id in the line, "
                   "else the service window)")  # fmt: skip
    p.add_argument("--key-regex", default=None, help="with --session-key regex: its first group is the key")
    p.add_argument("--window-seconds", type=float, default=None, help="service_window: the window length")
    p.add_argument("--idle", type=float, default=None, help="seconds without a line that close a session")
    p.add_argument("--max-lines", type=int, default=None, help="lines at which a session closes")
    p.add_argument("--end-pattern", default=None, help="a regex: the line matching it closes its session")
    p.add_argument("--max-open", type=int, default=None, help="open sessions kept; the least recently active close")
    p.add_argument("--service", default=None, help="the service the lines come from (default: the file name)")
    p.add_argument("--poll", type=float, default=0.25, help="seconds between looks at the file")
    p.add_argument("--detector", default=None, help="artifact folder (default LOGTRIAGE_DETECTOR_PATH)")
    p.add_argument("--device", default=None, help=f"{DEVICE_HELP} (default LOGTRIAGE_DEVICE, cpu)")
    p.add_argument("--top", type=int, default=3, help="top contributing lines shown per anomaly")
    p.add_argument("--json", action="store_true", help="one JSON object per closed session")
    p.add_argument("--store", action="store_true", help="store the detections (explanations and alerts queued)")
    p.add_argument("--database-url", default=None, help="default LOGTRIAGE_DATABASE_URL (a SQLite file)")
    p.set_defaults(handler=_run)
