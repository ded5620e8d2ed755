"""Load any detector artifact folder by path: MoE-BERT or the DeepLog baseline, told apart by its files."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from core.devices import resolve_device
from core.errors import ModelError
from small_model.detector import Detector, DetectorKind

log = logging.getLogger(__name__)

DEEPLOG_MARKERS = ("deeplog_config.json", "drain3_state.json")


def detector_kind(path: str | Path) -> DetectorKind:
    """``moe-bert`` or ``deeplog`` for an artifact folder."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelError(
            f"no detector at {folder}: train one with `logtriage train-small` or set LOGTRIAGE_DETECTOR_PATH"
        )
    if any((folder / m).exists() for m in DEEPLOG_MARKERS):
        return "deeplog"
    config = folder / "config.json"
    if config.exists():
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{config}: not valid JSON ({exc})") from None
        if str(data.get("detector", data.get("model_kind", ""))).lower() == "deeplog":
            return "deeplog"
        return "moe-bert"
    raise ModelError(f"{folder} is not a detector artifact (no config.json)")


def load_detector(path: str | Path, device: str = "cpu", **kwargs: Any) -> Detector:
    """The detector saved in ``path``, whichever kind it is.

    ``device`` (cpu, cuda, cuda:N, auto): where MoE-BERT runs; the DeepLog baseline, a small LSTM fed
    row by row, always runs on the CPU (a GPU device is checked, then noted)."""
    kind = detector_kind(path)
    resolved = resolve_device(device)
    if kind == "deeplog":
        from small_model.deeplog import DeepLogDetector

        if resolved != "cpu":
            log.info("the DeepLog detector runs on the CPU (device %s not used)", resolved)
        return DeepLogDetector.from_pretrained(path, **kwargs)
    from small_model.scoring import MoEBertDetector

    return MoEBertDetector.from_pretrained(path, device=resolved, **kwargs)
