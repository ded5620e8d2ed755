"""Shared generated data for the data_gen tests (small sizes: the suite stays fast)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.io import write_records
from core.schema import SequenceRecord
from data_gen.log_sequence_generator import GeneratorConfig, generate_sequences


@pytest.fixture(scope="session")
def hard_records() -> list[SequenceRecord]:
    """1500 hard English sequences with some background noise."""
    return generate_sequences(GeneratorConfig(num_sequences=1500, noise=0.1, seed=11), progress=False)


@pytest.fixture(scope="session")
def easy_records() -> list[SequenceRecord]:
    """800 easy English sequences without noise."""
    config = GeneratorConfig(num_sequences=800, difficulty="easy", noise=0.0, seed=12)
    return generate_sequences(config, progress=False)


@pytest.fixture(scope="session")
def seq_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 500-sequence file (150 anomalous) on disk."""
    path = tmp_path_factory.mktemp("seq") / "sequences.json"
    write_records(path, generate_sequences(GeneratorConfig(num_sequences=500, seed=13), progress=False))
    return path
