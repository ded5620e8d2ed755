"""Where the models run: ``cpu``, ``cuda`` / ``cuda:N``, or ``auto`` (CUDA where there is a GPU)."""

from __future__ import annotations

import torch

from core.errors import ModelError


def resolve_device(device: str = "auto") -> str:
    """``cuda`` where available for ``auto``; otherwise the named device (a clear error for CUDA without a GPU)."""
    device = (device or "auto").strip().lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelError(f"device {device} asked for, but no CUDA GPU is available (use cpu or auto)")
        return device
    if device != "cpu":
        raise ModelError(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto)")
    return device
