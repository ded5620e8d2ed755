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
LOGHUB = Path(os.environ.get("LOGTRIAGE_LOGHUB", REPO.parent / "shared" / "datasets" / "loghub"))


@pytest.fixture(scope="session")
def loghub_dir() -> Path:
    """The loghub 2k samples (skips where the shared data set is absent)."""
    if not LOGHUB.exists():
        pytest.skip(f"loghub samples not found at {LOGHUB}")
    return LOGHUB
