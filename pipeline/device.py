"""Choose the compute device once: CUDA, then Apple MPS, then CPU, unless overridden."""

from __future__ import annotations

import torch

from pipeline.errors import UserInputError


def select_device(override: str | torch.device | None = None) -> torch.device:
    """Return the device to use; ``override`` ("cpu", "cuda", "cuda:1", "mps", "auto") wins."""
    if override is not None and str(override) != "auto":
        device = torch.device(override)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserInputError("CUDA was requested but no CUDA GPU is visible; use --device cpu.")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise UserInputError("MPS was requested but is not available here; use --device cpu.")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
