"""Fixtures of the explainer tests: a tiny random Qwen2 base, toy data, one short QLoRA run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from large_model.encoding import Example, PromptEncoder, load_examples, split_examples
from large_model.schema import LabelSet
from large_model.train import TrainResult, run_training
from large_model.train_args import TrainLargeArgs
from tests.large_model.tiny import TOY_CATEGORIES, TOY_SEVERITIES, make_tiny_base, write_toy_data

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
TOY_LABELS = LabelSet(TOY_CATEGORIES, TOY_SEVERITIES)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved 2-layer Qwen2 model (hidden 64) with a ChatML BPE tokenizer."""
    return make_tiny_base(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Toy instruction records (JSONL) with labels.json beside them."""
    return write_toy_data(tmp_path_factory.mktemp("toy"), n=48)


@pytest.fixture(scope="session")
def trained(tiny_base: Path, toy_data: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """A short QLoRA (NF4 + LoRA) run of the tiny base on the toy data."""
    args = TrainLargeArgs(
        data=toy_data,
        output=tmp_path_factory.mktemp("run") / "explainer",
        base=str(tiny_base),
        backend="peft",
        device="cpu",
        dtype="fp32",
        max_steps=12,
        batch_size=4,
        lr=5e-3,
        warmup_steps=1,
        save_every=4,
        progress=False,
    )
    return run_training(args)


@pytest.fixture(scope="session")
def toy_split(toy_data: Path) -> tuple[list[Example], list[Example]]:
    """Train and held-out toy examples (the split the trainer uses)."""
    return split_examples(load_examples(toy_data, TOY_LABELS), 0.2, 42)


@pytest.fixture(scope="session")
def label_trained_model(tiny_base: Path, toy_split: tuple[list[Example], list[Example]]) -> tuple[Any, Any]:
    """The tiny model fully fine-tuned (fp32, no quantization) to answer the toy labels."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    encoder = PromptEncoder(tokenizer, TOY_LABELS, 512)
    encoded = [encoder.encode_example(e, 512) for e in toy_split[0]]
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for step in range(400):
        batch = [encoded[(step * 8 + i) % len(encoded)] for i in range(8)]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x, _ in batch])
        labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in batch])
        mask = (torch.arange(width)[None] < torch.tensor([len(x) for x, _ in batch])[:, None]).long()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model, tokenizer
