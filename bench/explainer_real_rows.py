"""Real anomalies for the explainer's evaluation: texts only (loops, grounding), no taxonomy labels.

    .venv/bin/python bench/explainer_real_rows.py -o data/real_anomalies.jsonl [--per-system 10]
    logtriage evaluate-large --model artifacts/explainer --data data/real_anomalies.jsonl

Writes, from three loghub systems: HDFS block sessions that the labels call anomalous (whole
lifecycles from ``hdfs_sessions/test.jsonl.gz``, alternately one that stops early and one that does
not), the 10-line windows of BGL_2k that hold an alert line, and the 10-line windows of OpenStack_2k
and OpenSSH_2k (no alert labels) that hold an error: a line of level ERROR/WARN or one that says
error, failed, invalid, refused, denied, exception or timeout. The records carry ``source`` and BGL's
alert category as ``alert`` (not ``category``: the alert tags are not the explainer's taxonomy), so
evaluate-large scores their texts, not their labels.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.io import read_records, write_records
from core.loghub import iter_loghub, labelled_windows

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def hdfs(n: int) -> list[dict[str, Any]]:
    """Anomalous HDFS sessions: short ones (stopped early) and long ones, alternately."""
    anomalies = [r for r in read_records(SHARED / "hdfs_sessions" / "test.jsonl.gz") if r.label == 1]
    short = [r for r in anomalies if len(r.log_entries) <= 5]
    long = [r for r in anomalies if len(r.log_entries) > 5]
    picked = [r for pair in zip(short, long, strict=False) for r in pair][:n]
    return [{"sequence_id": r.sequence_id, "log_entries": r.log_entries, "source": "HDFS"} for r in picked]


def alerts(system: str, n: int) -> list[dict[str, Any]]:
    """The first ``n`` 10-line windows of a labelled loghub sample that hold an alert line."""
    path = SHARED / "loghub" / system / f"{system}_2k.log"
    rows = []
    for r in labelled_windows(path, 10):
        if r.label == 1:
            rows.append({"sequence_id": r.sequence_id, "log_entries": r.log_entries, "source": system,
                         "alert": r.anomaly_type})  # fmt: skip
        if len(rows) >= n:
            break
    return rows


ERRORISH = re.compile(r"(?i)\b(error|fail(ed|ure)?|invalid|refused|denied|exception|time ?out)\b")


def errors(system: str, n: int) -> list[dict[str, Any]]:
    """The first ``n`` 10-line windows of an unlabelled loghub sample with an error-looking line."""
    lines = list(iter_loghub(SHARED / "loghub" / system / f"{system}_2k.log"))
    rows = []
    for start in range(0, len(lines) - 9, 10):
        window = lines[start : start + 10]
        levels = {str(x.fields.get("Level", "")).upper() for x in window}
        if levels & {"ERROR", "WARN", "WARNING", "FATAL", "CRITICAL"} or any(
            ERRORISH.search(x.content) for x in window
        ):
            rows.append({"sequence_id": f"{system}-{start + 1}", "log_entries": [x.message for x in window],
                         "source": system})  # fmt: skip
        if len(rows) >= n:
            break
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", type=Path, default=Path("data/real_anomalies.jsonl"))
    p.add_argument("--per-system", type=int, default=10)
    args = p.parse_args()
    n = args.per_system
    rows = hdfs(n) + alerts("BGL", n) + errors("OpenStack", n) + errors("OpenSSH", n)
    write_records(args.output, rows)
    sys.stdout.write(f"{len(rows)} real anomalies -> {args.output}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
