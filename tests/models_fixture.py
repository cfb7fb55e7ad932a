"""A small classifier trained in seconds on synthetic "nodule" images, so attacks have something to break.

Made in the test run from a seed (nothing downloaded, nothing on disk): 32x32 grey images of noisy
tissue with a faint bright blob (class 0), a faint dark blob (class 1) or neither (class 2), at a
random place. The blobs are faint on purpose: the trained model is accurate but not robust,
the situation the attack tests need. Shared by the attack tests through :func:`trained_model`.
Synthetic test data only; nothing here is a medical result.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

SIZE = 32


def nodule_images(count: int, num_classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images ``[N, 1, 32, 32]`` in ``[0, 1]`` and labels; classes balanced."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % num_classes
    tissue = 0.5 + 0.06 * torch.randn(count, 1, SIZE, SIZE, generator=generator)
    tissue = F.avg_pool2d(tissue, 3, stride=1, padding=1, count_include_pad=False)
    centre = torch.randint(8, SIZE - 8, (count, 2), generator=generator)
    rows = torch.arange(SIZE).view(1, SIZE, 1)
    cols = torch.arange(SIZE).view(1, 1, SIZE)
    distance2 = (rows - centre[:, 0, None, None]) ** 2 + (cols - centre[:, 1, None, None]) ** 2
    blob = torch.exp(-distance2 / (2 * 3.0**2))[:, None]
    sign = torch.tensor([1.0, -1.0, 0.0])[labels].view(-1, 1, 1, 1)
    return (tissue + 0.18 * sign * blob).clamp(0.0, 1.0), labels


class TinyCNN(nn.Module):
    """Three conv blocks with batch norm, pooled between and globally; ``[N, 1, H, W]`` in ``[0, 1]``."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for width in (16, 32, 32):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                       nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers[:-1])
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features((x - 0.5) / 0.1).amax(dim=(2, 3)))


class Trained(NamedTuple):
    model: TinyCNN  #: in eval mode
    x: torch.Tensor  #: held-out images the model classifies correctly
    y: torch.Tensor
    clean_accuracy: float  #: on all held-out images


@lru_cache(maxsize=None)
def trained_model(num_classes: int = 3, seed: int = 0, test_count: int = 48) -> Trained:
    """Train once per process (about two seconds on one CPU core); later calls reuse it."""
    x_train, y_train = nodule_images(300, num_classes, seed)
    x_test, y_test = nodule_images(test_count * 2, num_classes, seed + 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyCNN(num_classes)
        optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for epoch in range(6):
            order = torch.randperm(len(x_train))
            for start in range(0, len(order), 50):
                batch = order[start:start + 50]
                loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
    model.eval()
    with torch.no_grad():
        correct = model(x_test).argmax(1) == y_test
    keep = correct.nonzero().flatten()[:test_count]
    return Trained(model, x_test[keep], y_test[keep], float(correct.float().mean()))


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread, then restore: tiny models on a shared 2-core machine run faster so."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
