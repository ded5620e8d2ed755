"""Shared test settings: offline, one quiet CPU thread, the loghub samples."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
_CANDIDATES = [REPO.parent / "shared" / "datasets" / "loghub", Path("/work/shared/datasets/loghub")]
LOGHUB = Path(os.environ.get("LOGTRIAGE_LOGHUB") or next((p for p in _CANDIDATES if p.exists()), _CANDIDATES[0]))


@pytest.fixture(scope="session")
def loghub_dir() -> Path:
    """The loghub 2k samples (skips where the shared data set is absent)."""
    if not LOGHUB.exists():
        pytest.skip(f"loghub samples not found at {LOGHUB}")
    return LOGHUB
