"""Choose the compute device once: CUDA, then Apple MPS, then CPU, unless overridden; and what it computes fast."""

from __future__ import annotations

import contextlib
from typing import Optional

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


def mixed_precision(device: torch.device) -> Optional[torch.dtype]:
    """The autocast type that makes training on ``device`` faster, or None where none does.

    CUDA: bf16 where the GPU has it, else fp16 (which needs a gradient scaler). CPU: bf16 only
    where oneDNN runs it natively (AVX512-BF16 or AMX: recent Xeon and EPYC), about twice the fp32
    speed of a ResNet training step there (bench/RESULTS.md); elsewhere bf16 would be emulated and
    slower, so None. Apple MPS: None.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        try:
            native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a build without oneDNN
            native = False
        return torch.bfloat16 if native else None
    return None


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``, or nothing when ``dtype`` is None (full fp32)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
