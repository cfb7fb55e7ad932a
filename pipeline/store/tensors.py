"""Safetensors files read without trust: never unpickled, checked tensor by tensor against a model."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path
from typing import Final, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file as save_safetensors_file
from torch import nn

from pipeline.errors import CheckpointError, failure_reason
from pipeline.models import ScanClassifier
from pipeline.store.files import atomic_write, read_limited


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Write a safetensors file atomically (contiguous CPU copies; shared storage is fine).

    The library writes the file itself: with the bytes built in memory first, a ResNet-18 with its
    optimizer state (134 MB, fsynced) took 1.5x as long to save (bench/overheads.py).
    """
    plain = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in tensors.items()}

    def write(temporary: Path) -> None:
        try:
            save_safetensors_file(plain, temporary, metadata=dict(metadata))
        except SafetensorError as error:  # its I/O errors ("... (os error 28)") as the OSError they are
            code = re.search(r"os error (\d+)", str(error))
            raise OSError(int(code.group(1)) if code else errno.EIO, str(error)) from error

    atomic_write(path, write)


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file: (CPU tensors, string metadata); anything else raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    data = read_limited(path)
    try:
        tensors = load_safetensors_bytes(data)
        header_size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_size]).get("__metadata__") or {}
    except (SafetensorError, ValueError, RuntimeError, UnicodeDecodeError) as error:
        raise CheckpointError(
            f"{path.name} is not a readable safetensors file ({failure_reason(error)}); it is truncated, "
            "damaged or not a checkpoint of this lab (pickled .pt files are never loaded)"
        ) from None
    return tensors, metadata


def unwrap(model: nn.Module) -> ScanClassifier:
    """The ScanClassifier inside DistributedDataParallel and ``torch.compile`` wrappers."""
    while not isinstance(model, ScanClassifier):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            raise TypeError(f"expected a ScanClassifier, got {type(model).__name__}")
        model = inner
    return model


#: Floating-point precisions a checkpoint may store in place of the model's float32 (the shipped demo
#: models are half precision, to keep the repository small); they are widened on load.
NARROW_FLOATS: Final[frozenset[torch.dtype]] = frozenset({torch.float16, torch.bfloat16})


def widen(tensors: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``tensors`` with every half-precision tensor cast to the dtype of ``model``'s tensor of that name.

    Only float16/bfloat16 -> the model's floating dtype; anything else is left for :func:`check_state`
    to judge. Names the model lacks are kept as they are (check_state reports them).
    """
    expected = model.state_dict()
    return {
        name: tensor.to(expected[name].dtype)
        if name in expected and tensor.dtype in NARROW_FLOATS and expected[name].is_floating_point()
        else tensor
        for name, tensor in tensors.items()
    }


def check_state(tensors: Mapping[str, torch.Tensor], model: nn.Module, source: str) -> None:
    """Compare a checkpoint's tensors with ``model``'s by name, shape and dtype; reject NaN/inf.

    Half-precision files are compared after :func:`widen`. Raises :class:`CheckpointError` naming
    ``source`` and the first tensor that does not fit.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not match the architecture: "
            f"missing {_few(missing)}, unexpected {_few(unexpected)}"
        )
    for name, reference in expected.items():
        tensor = tensors[name]
        if tensor.shape != reference.shape or tensor.dtype != reference.dtype:
            raise CheckpointError(
                f"{source}: tensor {name} is {tuple(tensor.shape)} {tensor.dtype}, the architecture needs "
                f"{tuple(reference.shape)} {reference.dtype}"
            )
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{source}: tensor {name} contains NaN or infinite values")


def load_state(tensors: Mapping[str, torch.Tensor], model: nn.Module, source: str) -> None:
    """Load ``tensors`` into ``model`` after :func:`widen` and :func:`check_state` (which raises
    :class:`CheckpointError` naming ``source``); every weights file of the lab is loaded this way.

    A model built on the meta device (no random initialisation for its weights to replace) takes the
    checked tensors as its own; any other model is copied into, so an optimizer holding its parameters
    keeps stepping them.
    """
    tensors = widen(tensors, model)
    check_state(tensors, model, source)
    model.load_state_dict(tensors, strict=True, assign=any(p.is_meta for p in model.parameters()))


def _few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "") if names else "none"
