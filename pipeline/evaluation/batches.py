"""Feeding scans to a model in batches: the one loop every evaluation shares.

Any map-style dataset whose items are ``(image [1, H, W], label)`` works, so the evaluation runs
on :class:`pipeline.data.ScanDataset` and on a plain ``TensorDataset`` in tests alike.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline.device import select_device
from pipeline.errors import UserInputError
from pipeline.evaluation.shards import Shards


def resolve_indices(dataset: Dataset, indices: Optional[Sequence[int]]) -> np.ndarray:
    """The scans to use (all when ``indices`` is None), checked against the dataset's length."""
    size = len(dataset)  # type: ignore[arg-type]
    chosen = np.arange(size) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    if chosen.size == 0:
        raise UserInputError("no scans to evaluate: the chosen split or selection is empty")
    if chosen.min() < 0 or chosen.max() >= size:
        raise UserInputError(f"scan indices must lie in [0, {size - 1}] for this dataset of {size} scans")
    return chosen


def groups_of(
    groups: Optional[Sequence[int] | np.ndarray], dataset: Dataset, chosen: np.ndarray
) -> Optional[np.ndarray]:
    """The group ids (int ``[len(chosen)]``) of the chosen scans, from one id per scan of ``dataset``
    (:func:`pipeline.data.split_groups`); None stays None (independent scans)."""
    if groups is None:
        return None
    ids = np.asarray(groups, dtype=np.int64).reshape(-1)
    size = len(dataset)  # type: ignore[arg-type]
    if ids.size != size:
        raise UserInputError(f"got {ids.size} group ids for a dataset of {size} scans; give one per scan")
    return ids[chosen]


def iter_batches(
    dataset: Dataset,
    indices: np.ndarray,
    batch_size: int,
    device: torch.device,
    shards: Optional[Shards] = None,
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Yield ``(positions, x, y)``: the slice of ``indices`` covered and the batch on ``device``.

    With ``shards`` (several torchrun processes) only this process's batches are read and yielded,
    each the same scans it would be in one process (:meth:`.Shards.owns`).
    """
    if batch_size < 1:
        raise UserInputError(f"batch size must be at least 1, got {batch_size}")
    for number, start in enumerate(range(0, len(indices), batch_size)):
        if shards is not None and not shards.owns(number):
            continue
        items = [dataset[int(i)] for i in indices[start : start + batch_size]]
        x = torch.stack([torch.as_tensor(image, dtype=torch.float32) for image, _ in items]).to(device)
        y = torch.as_tensor([int(label) for _, label in items], dtype=torch.long, device=device)
        yield slice(start, start + len(items)), x, y


def reseed(models: Iterable[nn.Module], position: int) -> None:
    """Restart every random stream inside ``models`` for the batch that starts at scan ``position``.

    A module whose draws run on from call to call (a randomised defence: :class:`.defenses.RandomShift`)
    has a ``reseed(position)`` method; calling it before each batch makes the batch's draws depend on
    the batch alone, not on the batches run before it on this process, so sharded and single-process
    evaluations draw the same (:mod:`.shards`).
    """
    for module in {id(model): model for model in models}.values():
        for part in module.modules():
            restart = getattr(part, "reseed", None)
            if callable(restart):
                restart(position)


def model_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """Move ``model`` to the requested device, or report where it already lives."""
    if device is None:
        parameter = next(model.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")
    target = select_device(device)
    model.to(target)
    return target


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Predicted classes for a batch already on the model's device."""
    return model(x).argmax(dim=1)


@torch.no_grad()
def probabilities(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Softmax class probabilities ``[N, C]`` (float32) for a batch already on the model's device."""
    return torch.softmax(model(x).float(), dim=1)


@contextmanager
def stopwatch(device: torch.device) -> Iterator[list[float]]:
    """Wall time of the block in seconds, waiting for queued GPU work so the figure is honest."""
    elapsed = [0.0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    yield elapsed
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed[0] = time.perf_counter() - start
