"""``logtriage detect``: score a file, stdin or ``--logs`` lines window by window, streaming.

With ``--explain`` (or ``--store``) the results go through the same services as the HTTP API and
into the same database: the anomalies are queued and explained (``--explain``), and the
explanations printed with the detections.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.cli_args import DEVICE_HELP, add_window_arguments
from core.errors import DataError
from core.schema import SequenceRecord

RISK_MARK = {"high": "!!", "medium": "! ", "low": "  "}


def _records(args: argparse.Namespace) -> Iterator[SequenceRecord]:
    from core.prepare import records_from_file
    from core.windowing import make_windows

    if args.logs:
        for window in make_windows(args.logs, args.window_type, args.window_size, args.step, args.session_key):
            yield SequenceRecord(sequence_id=f"logs-{window.id}", log_entries=window.lines)
        return
    options = (args.input_format, args.window_type, args.window_size, args.step, args.session_key, args.field)
    if args.input not in (None, "-"):
        yield from records_from_file(args.input, *options)
        return
    # the readers take a path: stdin goes to a temporary file, removed once read (or when scoring stops)
    with tempfile.TemporaryDirectory(prefix="logtriage-stdin-") as folder:
        spool = Path(folder) / "stdin.log"
        with spool.open("wb") as out:
            shutil.copyfileobj(sys.stdin.buffer, out)
        yield from records_from_file(str(spool), *options)


def _print_human(item: dict[str, Any]) -> None:
    flag = "ANOMALY" if item["is_anomaly"] else "normal "
    print(
        f"{RISK_MARK[item['risk_level']]} {item['sequence_id']:<28} score={item['score']:.3f} {flag} "
        f"risk={item['risk_level']}"
    )
    for top in item.get("top_lines") or []:
        print(f"     line {top['index'] + 1:>3} (+{top['contribution']:.3f}): {top['line'][:150]}")
    e = item.get("explanation")
    if e:
        print(f"     category={e['category']} severity={e['severity']}")
        print(f"     root cause: {e['root_cause']}")
        print(f"     response:   {e['suggested_response']}")


def _detect(args: argparse.Namespace) -> int:
    from core.settings import settings_with

    settings = settings_with(database_url=args.database_url)
    detector_path = Path(args.detector or settings.detector_path)
    if args.explain or args.store:
        return asyncio.run(_detect_stored(args, settings, detector_path))
    from small_model.detection import risk_level
    from small_model.registry import load_detector

    detector = load_detector(detector_path, device=args.device or settings.device)
    total = flagged = 0
    records = _records(args)
    while batch := list(itertools.islice(records, args.batch_size)):
        scores = detector.score([r.log_entries for r in batch])
        hits = [i for i, s in enumerate(scores) if s >= detector.threshold and len(batch[i].log_entries) > 1]
        lines_of = dict(zip(hits, detector.line_contributions_many([batch[i].log_entries for i in hits]), strict=True))
        for k, (record, score) in enumerate(zip(batch, scores, strict=True)):
            s = float(score)
            item: dict[str, Any] = {"sequence_id": record.sequence_id, "score": round(s, 6),
                                    "is_anomaly": s >= detector.threshold, "risk_level": risk_level(s, detector.threshold),
                                    "model_version": detector.version}  # fmt: skip
            if k in lines_of:  # the flagged ones' lines, scored together
                contributions = lines_of[k]
                order = sorted(range(len(contributions)), key=lambda i: contributions[i], reverse=True)[: args.top]
                item["top_lines"] = [
                    {"index": i, "line": record.log_entries[i], "contribution": contributions[i]} for i in order
                ]
            total += 1
            flagged += item["is_anomaly"]
            print(json.dumps(item, ensure_ascii=False)) if args.json else _print_human(item)
    if total == 0:
        raise DataError("no log lines to score")
    if not args.json:
        print(
            f"{total} windows, {flagged} anomalous (threshold {detector.threshold:.3f}, model {detector.version})",
            file=sys.stderr,
        )
    return 0


async def _detect_stored(args: argparse.Namespace, settings: Any, detector_path: Path) -> int:
    """Through the API's services: detections stored, anomalies queued and (with --explain) explained."""
    from api.detecting import detect_and_store
    from api.metrics import Metrics
    from api.services import DetectorService, ExplainerService
    from api.worker import ExplainWorker
    from db import crud, queue
    from db.session import Database
    from small_model.registry import load_detector

    metrics = Metrics()
    clusterer = None
    if settings.cluster_path is not None:
        from small_model.clusters.model import ClusterModel

        clusterer = await asyncio.to_thread(ClusterModel.from_pretrained, settings.cluster_path)
    detector = DetectorService(
        await asyncio.to_thread(load_detector, detector_path, args.device or settings.device),
        settings,
        metrics,
        args.top,
        clusterer=clusterer,
    )
    db = Database(settings.database_url)
    await db.upgrade()
    ids: list[str] = []
    try:
        records = _records(args)
        while batch := list(itertools.islice(records, args.batch_size)):
            async with db.session() as session:
                rows = await detect_and_store(
                    session, detector, settings, [(r.sequence_id, r.log_entries, None) for r in batch], "cli"
                )
                for row in rows:
                    if args.explain and row.is_anomaly:
                        await queue.enqueue(session, row.id, args.lang, max_attempts=settings.job_max_attempts)
                ids.extend(r.id for r in rows)
                await session.commit()
        if not ids:
            raise DataError("no log lines to score")
        if args.explain:
            from large_model.loader import load_explainer

            explainer = await asyncio.to_thread(
                load_explainer, args.explainer or settings.explainer_path, settings=settings
            )
            worker = ExplainWorker(db, ExplainerService(explainer, metrics), settings, metrics)
            while await worker.run_once():
                pass
        flagged = 0
        for detection_id in ids:
            async with db.session() as session:
                stored = await crud.get_detection(session, detection_id)
            assert stored is not None
            row = stored
            flagged += row.is_anomaly
            item = {"id": row.id, "sequence_id": row.sequence_id, "score": round(row.score, 6),
                    "is_anomaly": row.is_anomaly, "risk_level": row.risk_level, "model_version": row.model_version,
                    "top_lines": row.top_lines, "cluster_id": row.cluster_id,
                    "cluster_description": row.cluster_description}  # fmt: skip
            if row.explanation is not None:
                e = row.explanation
                item["explanation"] = {"category": e.category, "severity": e.severity, "summary": e.summary,
                                       "root_cause": e.root_cause, "suggested_response": e.suggested_response,
                                       "model": e.model, "base": e.base}  # fmt: skip
            print(json.dumps(item, ensure_ascii=False)) if args.json else _print_human(item)
        print(f"{len(ids)} windows, {flagged} anomalous; stored in {db.url.render_as_string()}", file=sys.stderr)
    finally:
        await db.dispose()
    return 0


def add_commands(sub: Any) -> None:
    """Register ``detect``."""
    p = sub.add_parser(
        "detect",
        help="score log sequences (file, stdin or --logs) with the detector",
        description="Score each window: a score in [0, 1], is_anomaly, a risk level (high above 0.85, then medium, "
        "low) and, for anomalies, the lines that contributed most. Input: a sequence-record file (JSON/JSONL/CSV), "
        "a raw log (text, JSON events, loghub), stdin (-) or --logs.",
    )
    p.add_argument("input", nargs="?", default=None, help="file to score, or - for stdin")
    p.add_argument("--logs", nargs="+", default=None, metavar="LINE", help="score these lines instead of a file")
    p.add_argument("--detector", default=None, help="artifact folder (default LOGTRIAGE_DETECTOR_PATH)")
    p.add_argument("--device", default=None, help=f"{DEVICE_HELP} (default LOGTRIAGE_DEVICE, cpu)")
    add_window_arguments(p)
    p.add_argument("--json", action="store_true", help="one JSON object per window")
    p.add_argument("--top", type=int, default=3, help="top contributing lines shown per anomaly")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--store", action="store_true", help="store the detections in the database (as the API does)")
    p.add_argument("--explain", action="store_true", help="store, queue the anomalies and explain them with the LLM")
    p.add_argument("--explainer", default=None, help="explainer folder (default LOGTRIAGE_EXPLAINER_PATH)")
    p.add_argument("--lang", choices=["en", "zh"], default="en")
    p.add_argument("--database-url", default=None, help="default LOGTRIAGE_DATABASE_URL (a SQLite file)")
    p.set_defaults(handler=_detect)
