"""The checkpoints of a ``train-large`` run (``<output>/checkpoints/step-N``): the adapter, the optimizer, the
loop's state and the RNG; the last ``keep`` are kept."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from core.errors import ModelError
from core.io import write_json
from large_model.quant import TrainingModel

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"


def latest_checkpoint(output: Path) -> Path | None:
    """The last complete checkpoint in ``<output>/checkpoints``, or None."""
    root = output / CHECKPOINTS
    if not root.is_dir():
        return None
    done = [p for p in root.glob("step-*") if (p / "state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def save_checkpoint(
    tm: TrainingModel, optimizer: torch.optim.Optimizer, output: Path, step: int, state: dict[str, Any], keep: int
) -> None:
    """Save step ``step`` (written aside, then moved into place); only the last ``keep`` checkpoints stay."""
    root = output / CHECKPOINTS
    target = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tm.model.save_pretrained(tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    write_json(tmp / "state.json", {**state, "step": step, "torch_rng": torch.get_rng_state().tolist()})
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    finished = sorted((p for p in root.glob("step-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
    for old in finished[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint saved at %s", target)


def load_checkpoint(tm: TrainingModel, optimizer: torch.optim.Optimizer, checkpoint: Path) -> dict[str, Any]:
    """Load ``checkpoint``'s adapter weights, optimizer state and RNG; returns the loop's saved state."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(
        str(checkpoint / "adapter_model.safetensors"), device=tm.device if tm.device != "cuda" else "cuda:0"
    )
    result = set_peft_model_state_dict(tm.model, weights)
    unexpected = list(getattr(result, "unexpected_keys", None) or [])
    if unexpected:
        raise ModelError(f"checkpoint {checkpoint} does not fit this model: {unexpected[:3]}")
    optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", map_location=tm.device, weights_only=True))
    state = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
    torch.set_rng_state(torch.tensor(state.pop("torch_rng"), dtype=torch.uint8))
    return dict(state)
