"""Readers for loghub data sets (https://github.com/logpai/loghub): raw logs and structured CSVs.

Raw lines are split into header fields by the log formats of the loghub benchmark. HDFS lines
become sessions by block id; logs with an alert label column (BGL, Thunderbird; ``-`` is normal,
anything else an alert of that category) become labelled windows. Cite loghub (Zhu et al.,
ISSRE 2023) when publishing results on these data.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from core.errors import DataError
from core.io import iter_text_lines, open_text
from core.schema import SequenceRecord
from core.windowing import fixed_windows, session_windows, sliding_windows

LOG_FORMATS: dict[str, str] = {
    "HDFS": "<Date> <Time> <Pid> <Level> <Component>: <Content>",
    "BGL": "<Label> <Timestamp> <Date> <Node> <Time> <NodeRepeat> <Type> <Component> <Level> <Content>",
    "Thunderbird": "<Label> <Timestamp> <Date> <User> <Month> <Day> <Time> <Location> <Component>(\\[<PID>\\])?: <Content>",
    "OpenSSH": "<Date> <Day> <Time> <Component> sshd\\[<Pid>\\]: <Content>",
    "Linux": "<Month> <Date> <Time> <Level> <Component>(\\[<PID>\\])?: <Content>",
    "Apache": "\\[<Time>\\] \\[<Level>\\] <Content>",
    "OpenStack": "<Logrecord> <Date> <Time> <Pid> <Level> <Component> \\[<ADDR>\\] <Content>",
}
HDFS_BLOCK = r"(blk_-?\d+)"


def format_regex(log_format: str) -> re.Pattern[str]:
    """Compile a loghub ``<Field> <Field>: <Content>`` format into a regex with named groups."""
    parts = re.split(r"(<[^<>]+>)", log_format)
    regex = ""
    for part in parts:
        if part.startswith("<") and part.endswith(">"):
            name = part[1:-1]
            regex += f"(?P<{name}>.*?)" if name != "Content" else f"(?P<{name}>.*)"
        else:
            regex += re.sub(r" +", r"\\s+", part)
    return re.compile(f"^{regex}$")


def detect_format(path: str | Path) -> str:
    """The loghub system name from a file name such as ``BGL_2k.log``."""
    name = Path(path).name.lower()
    for system in LOG_FORMATS:
        if name.startswith(system.lower()):
            return system
    raise DataError(f"cannot tell the loghub format from the file name; pass one of {sorted(LOG_FORMATS)}", path)


@dataclass
class LogLine:
    """One parsed raw line: its number, header fields, message and alert label (``None`` if none)."""

    number: int
    fields: dict[str, str]
    raw: str

    @property
    def content(self) -> str:
        """The free-text message part."""
        return self.fields.get("Content", self.raw)

    @property
    def alert(self) -> str | None:
        """The alert category, ``None`` for a normal line or a format without labels."""
        label = self.fields.get("Label")
        return None if label in (None, "-") else label

    @property
    def message(self) -> str:
        """What a model reads: level and component (when present) with the content; no labels, no clocks."""
        head = [self.fields[k] for k in ("Type", "Level", "Component") if self.fields.get(k)]
        return " ".join([*head, self.content]).strip()


def iter_loghub(path: str | Path, system: str | None = None, strict: bool = False) -> Iterator[LogLine]:
    """Parse a raw loghub log file line by line, streaming; unparseable lines keep the raw text as content."""
    system = system or detect_format(path)
    if system not in LOG_FORMATS:
        raise DataError(f"unknown loghub format {system!r}; known: {sorted(LOG_FORMATS)}", path)
    pattern = format_regex(LOG_FORMATS[system])
    for number, raw in iter_text_lines(path):
        match = pattern.match(raw.strip())
        if match is None:
            if strict:
                raise DataError(f"line does not match the {system} format", path, number)
            fields = {"Content": raw.strip()}
            if LOG_FORMATS[system].startswith("<Label>"):
                fields["Label"] = raw.split(" ", 1)[0]
        else:
            fields = {k: (v or "") for k, v in match.groupdict().items()}
        yield LogLine(number, fields, raw)


def iter_structured(path: str | Path) -> Iterator[dict[str, str]]:
    """Rows of a loghub ``*_structured.csv`` (LineId, ..., Content, EventId, EventTemplate), gzip or not."""
    return _iter_csv_rows(path, {"Content"}, "not a loghub structured CSV (no Content column)")


def _iter_csv_rows(path: str | Path, required: set[str], wrong_header: str) -> Iterator[dict[str, str]]:
    """The rows of a CSV file with the ``required`` columns; bad UTF-8 names the line it was met on."""
    with open_text(path) as handle:
        reader = csv.DictReader(handle)
        try:
            if not reader.fieldnames or not required <= set(reader.fieldnames):
                raise DataError(wrong_header, path, 1)
            yield from reader
        except UnicodeDecodeError as exc:
            raise DataError(f"invalid UTF-8 ({exc.reason})", path, reader.line_num + 1) from None


def hdfs_sessions(path: str | Path, labels: dict[str, int] | None = None) -> list[SequenceRecord]:
    """HDFS lines grouped into one sequence per block id (labels from ``anomaly_label.csv`` if given)."""
    by_number = {line.number: line for line in iter_loghub(path, "HDFS")}
    records = []
    ordered = [by_number[n] for n in sorted(by_number)]
    windows = session_windows((line.raw for line in ordered), HDFS_BLOCK)
    for window in windows:
        lines = [ordered[n - 1].message for n in window.line_numbers]
        label = labels.get(window.id) if labels else None
        records.append(
            SequenceRecord(
                sequence_id=window.id, label=label, log_entries=lines, source="HDFS", line_numbers=window.line_numbers
            )
        )
    return records


def read_hdfs_labels(path: str | Path) -> dict[str, int]:
    """loghub's ``anomaly_label.csv`` (BlockId, Label=Normal|Anomaly) as ``{block: 0|1}``, gzip or not."""
    rows = _iter_csv_rows(path, {"BlockId", "Label"}, "not a loghub label CSV (no BlockId and Label columns)")
    return {row["BlockId"]: int(row["Label"] == "Anomaly") for row in rows}


def labelled_windows(
    path: str | Path, size: int = 10, step: int | None = None, system: str | None = None
) -> Iterator[SequenceRecord]:
    """Windows of a labelled log (BGL, Thunderbird): anomalous when any line carries an alert.

    ``anomaly_type`` is the most frequent alert category in the window; ``alert_lines`` lists the
    1-based positions in the window of the alert lines.
    """
    system = system or detect_format(path)
    lines = list(iter_loghub(path, system))
    if not lines:
        raise DataError("no log lines", path)
    if "Label" not in lines[0].fields:
        raise DataError(f"the {system} format carries no alert labels", path)
    stream = (line.message for line in lines)
    windows = fixed_windows(stream, size) if step is None else sliding_windows(stream, size, step)
    for window in windows:
        members = [lines[n - 1] for n in window.line_numbers]
        alerts = [m.alert for m in members if m.alert]
        yield SequenceRecord(
            sequence_id=f"{system}-{window.id}",
            label=int(bool(alerts)),
            log_entries=window.lines,
            anomaly_type=Counter(alerts).most_common(1)[0][0] if alerts else None,
            source=system,
            line_numbers=window.line_numbers,
            alert_lines=[i + 1 for i, m in enumerate(members) if m.alert],
        )


def chronological_split(
    records: list[SequenceRecord], train_fraction: float = 0.6, normal_only_train: bool = True
) -> tuple[list[SequenceRecord], list[SequenceRecord]]:
    """The first ``train_fraction`` of windows for training (normal ones only), the rest for testing."""
    cut = int(len(records) * train_fraction)
    train = records[:cut]
    if normal_only_train:
        train = [r for r in train if r.label == 0]
    return train, records[cut:]
