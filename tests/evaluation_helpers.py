"""Shared pieces of the evaluation tests: one CPU thread, and the fixture's images as a ScanDataset."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch

from pipeline.data import ScanDataset
from tests.models_fixture import nodule_images


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core machine a second thread makes small convolutions slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def nodule_dataset(count: int = 24, *, synthetic: bool = True) -> ScanDataset:
    """The fixture's nodule images as a ScanDataset (uint8 in memory, like the real loader)."""
    return scan_dataset(*nodule_images(count, seed=7), synthetic=synthetic)


def scan_dataset(x: torch.Tensor, y: torch.Tensor, *, synthetic: bool = True) -> ScanDataset:
    """Images ``[N, 1, H, W]`` in [0, 1] and labels ``[N]`` as a ScanDataset (uint8, like the real loader)."""
    return ScanDataset(
        (x[:, 0] * 255).round().to(torch.uint8),
        y.numpy(),
        name="nodule test images",
        source="test",
        paths=None,
        duplicate_groups=[],
        fingerprint="test",
        is_synthetic=synthetic,
    )
