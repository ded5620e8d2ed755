from __future__ import annotations

from pathlib import Path

from core.loghub import chronological_split, hdfs_sessions, iter_loghub, iter_structured, labelled_windows
from core.templates import UNKNOWN_TEMPLATE, TemplateMiner


def test_hdfs_sample_becomes_block_sessions(loghub_dir: Path) -> None:
    sessions = hdfs_sessions(loghub_dir / "HDFS" / "HDFS_2k.log")
    assert len(sessions) > 100
    for record in sessions[:50]:
        assert record.sequence_id.startswith("blk_")
        assert all(record.sequence_id in line for line in record.log_entries)
    # every line that names a block is in that block's session
    lines = list(iter_loghub(loghub_dir / "HDFS" / "HDFS_2k.log"))
    assert sum(len(r.log_entries) for r in sessions) >= len(lines)


def test_bgl_sample_becomes_labelled_windows(loghub_dir: Path) -> None:
    path = loghub_dir / "BGL" / "BGL_2k.log"
    alerts = [line.alert for line in iter_loghub(path)]
    windows = list(labelled_windows(path, size=10))
    assert len(windows) == 200
    for i, w in enumerate(windows):
        window_alerts = alerts[i * 10 : (i + 1) * 10]
        assert w.label == int(any(window_alerts))
        assert (w.anomaly_type is None) == (w.label == 0)
        assert not any(line.startswith("- ") for line in w.log_entries)  # the label column is gone
    assert 0 < sum(int(w.label or 0) for w in windows) < 200
    train, test = chronological_split(windows, 0.6)
    assert all(r.label == 0 for r in train) and len(test) == 80


def test_structured_csv_reads(loghub_dir: Path) -> None:
    rows = list(iter_structured(loghub_dir / "BGL" / "BGL_2k.log_structured.csv"))
    assert len(rows) == 2000 and rows[0]["EventId"]


def test_template_state_persists_and_reloads(tmp_path: Path, loghub_dir: Path) -> None:
    lines = [line.raw for line in iter_loghub(loghub_dir / "HDFS" / "HDFS_2k.log")]
    miner = TemplateMiner(tmp_path / "drain.json")
    ids = miner.template_ids(lines)
    assert 5 <= miner.num_templates <= 60
    assert min(ids) >= 1
    miner.save()
    again = TemplateMiner.load(tmp_path / "drain.json")
    assert again.template_ids(lines[:200], learn=False) == ids[:200]
    assert again.template_id("a line unlike any hdfs line at all whatsoever", learn=False) == UNKNOWN_TEMPLATE
