"""Shared test settings: small, deterministic, and CPU-friendly."""

import os

import pytest
import torch

os.environ.setdefault("LUNGLAB_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".cache", "test"))


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
