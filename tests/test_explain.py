"""Grad-CAM: maps of the right shape that point at what decides the class, safe on a shared model."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.errors import UserInputError
from pipeline.explain import METHODS, explain, explanation_shift, overlay, target_layer
from pipeline.models import build_model
from tests.test_attacks_blackbox import fit

SIZE = 32
SQUARE = 6


def corner_scans(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Class 0: a bright square, class 1: a dark square, class 2: none; each square in a random
    quadrant (returned, -1 for class 2), so only the square's region can decide the class."""
    generator = torch.Generator().manual_seed(seed)
    x = 0.45 + 0.05 * torch.randn((n, 1, SIZE, SIZE), generator=generator)
    y = torch.arange(n) % 3
    half = SIZE // 2
    quadrants = []
    for i in range(n):
        if y[i] == 2:
            quadrants.append(-1)
            continue
        quadrant = int(torch.randint(0, 4, (1,), generator=generator))
        row, col = torch.randint(1, half - SQUARE, (2,), generator=generator).tolist()
        row, col = row + half * (quadrant // 2), col + half * (quadrant % 2)
        x[i, 0, row:row + SQUARE, col:col + SQUARE] = 0.95 if y[i] == 0 else 0.0
        quadrants.append(quadrant)
    return x.clamp(0, 1), y, quadrants


class CornerNet(nn.Module):
    """A fully convolutional net with global pooling: the textbook case for class activation maps."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        )
        self.fc = nn.Linear(16, 3)

    @property
    def cam_target_layer(self) -> nn.Module:
        """After the last ReLU: Grad-CAM of a pre-activation conv output is mostly negative."""
        return self.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def corner_model() -> CornerNet:
    torch.manual_seed(0)
    x, y, _ = corner_scans(192, seed=0)
    model = fit(CornerNet(), x, y, epochs=25, lr=1e-2)
    test_x, test_y, _ = corner_scans(30, seed=1)
    with torch.no_grad():
        assert (model(test_x).argmax(1) == test_y).float().mean() > 0.9
    return model


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet18")


def hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks)
               for m in model.modules())


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_gives_a_map_in_unit_range(corner_model: CornerNet, method: str) -> None:
    x, _, _ = corner_scans(3, seed=2)
    single = explain(corner_model, x[:1], method=method)
    batch = explain(corner_model, x, method=method)
    assert single.shape == (SIZE, SIZE) and batch.shape == (3, SIZE, SIZE)
    assert single.dtype == np.float32
    assert single.min() >= 0 and single.max() <= 1 and single.max() > 0.5
    np.testing.assert_allclose(batch[0], single, atol=1e-5)
    assert hooks(corner_model) == 0


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_map_peaks_in_the_quadrant_that_decides_the_class(corner_model: CornerNet, method: str) -> None:
    x, _, quadrants = corner_scans(12, seed=3)
    maps = explain(corner_model, x, method=method)
    half = SIZE // 2
    for cam, quadrant in zip(maps, quadrants):
        if quadrant < 0:
            continue
        row, col = np.unravel_index(np.argmax(cam), cam.shape)
        assert (row // half, col // half) == (quadrant // 2, quadrant % 2)


def test_target_none_explains_the_prediction_and_targets_are_checked(corner_model: CornerNet) -> None:
    x, _, _ = corner_scans(3, seed=4)
    with torch.no_grad():
        predicted = corner_model(x).argmax(1)
    by_prediction = explain(corner_model, x, target=predicted)
    np.testing.assert_allclose(explain(corner_model, x), by_prediction, atol=1e-6)
    # An explicit class other than the prediction gives a different map.
    other = (predicted + 1) % 3
    assert not np.allclose(explain(corner_model, x, target=other), explain(corner_model, x))
    with pytest.raises(UserInputError, match="0..2"):
        explain(corner_model, x, target=3)
    with pytest.raises(UserInputError, match="one per scan"):
        explain(corner_model, x, target=[0, 1])
    with pytest.raises(UserInputError, match="gradcam"):
        explain(corner_model, x, method="saliency")
    with pytest.raises(UserInputError, match=r"\[N, 1, H, W\]"):
        explain(corner_model, x[0])


def test_resnet_uses_its_cam_layer(resnet: nn.Module) -> None:
    assert target_layer(resnet) is resnet.cam_target_layer
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten())
    assert target_layer(plain) is plain[2]  # no cam_target_layer: the last convolution
    with pytest.raises(UserInputError, match="no convolution"):
        target_layer(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)))
    cam = explain(resnet, torch.rand(1, 1, 64, 64), method="gradcam")
    assert cam.shape == (64, 64) and 0 <= cam.min() and cam.max() <= 1


def test_concurrent_calls_on_a_shared_model_match_serial_and_leave_it_untouched(resnet: nn.Module) -> None:
    # A state nobody would choose, so that "restored" cannot pass by accident.
    resnet.train()
    resnet.backbone.layer1.eval()
    resnet.backbone.fc.weight.requires_grad_(False)
    resnet.backbone.conv1.weight.grad = torch.ones_like(resnet.backbone.conv1.weight)
    modes = [m.training for m in resnet.modules()]
    flags = [p.requires_grad for p in resnet.parameters()]

    generator = torch.Generator().manual_seed(5)
    scans = [torch.rand((1, 1, 64, 64), generator=generator) for _ in range(8)]
    methods = ["gradcam", "gradcam++", "layercam", "eigencam"] * 2
    serial = [explain(resnet, scan, method=method) for scan, method in zip(scans, methods)]

    results: list[np.ndarray | None] = [None] * 8
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(index: int) -> None:
        try:
            barrier.wait()
            results[index] = explain(resnet, scans[index], method=methods[index])
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for got, expected in zip(results, serial):
        np.testing.assert_allclose(got, expected, atol=1e-6)
    assert hooks(resnet) == 0
    assert [m.training for m in resnet.modules()] == modes
    assert [p.requires_grad for p in resnet.parameters()] == flags
    assert torch.equal(resnet.backbone.conv1.weight.grad, torch.ones_like(resnet.backbone.conv1.weight))
    assert all(p.grad is None for name, p in resnet.named_parameters() if name != "backbone.conv1.weight")


def test_hooks_are_removed_when_the_model_fails(resnet: nn.Module) -> None:
    with pytest.raises(UserInputError):
        explain(resnet, torch.rand(1, 1, 16, 16))  # below the model's minimum size
    assert hooks(resnet) == 0


def test_overlay_blends_a_colour_map_onto_the_grey_scan() -> None:
    scan = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (30, 1))
    cam = np.zeros((30, 40), dtype=np.float32)
    cam[:15] = 1.0
    image = overlay(scan, cam)
    assert image.shape == (30, 40, 3) and image.dtype == np.uint8
    grey = overlay(scan, cam, alpha=0.0)
    assert np.array_equal(grey, np.repeat(scan[:, :, None], 3, axis=2))
    hot = overlay(scan, cam, alpha=1.0)
    assert np.array_equal(hot[0, 0], [128, 0, 0])  # jet at 1.0: dark red
    assert np.array_equal(hot[-1, 0], [0, 0, 128])  # jet at 0.0: dark blue
    # A map at the model's input size is stretched over a larger original scan; float scans work too.
    assert overlay(scan / 255.0, cam[::2, ::2], colormap="inferno").shape == (30, 40, 3)
    with pytest.raises(UserInputError, match="colormap"):
        overlay(scan, cam, colormap="rainbowish")


def test_explanation_shift_measures_how_far_a_map_moved() -> None:
    rows, cols = np.indices((32, 32))
    blob = np.exp(-((rows - 8) ** 2 + (cols - 8) ** 2) / 20.0)
    same = explanation_shift(blob, blob.copy())
    assert same["pearson"] == pytest.approx(1.0) and same["top_iou"] == 1.0 and same["centre_shift"] == 0.0
    moved = np.exp(-((rows - 20) ** 2 + (cols - 24) ** 2) / 20.0)
    shift = explanation_shift(blob, moved)
    assert shift["pearson"] < 0.2 and shift["top_iou"] == 0.0
    assert shift["centre_shift"] == pytest.approx(20.0, abs=0.5)  # sqrt(12^2 + 16^2)
    flat = np.zeros((32, 32))
    assert explanation_shift(flat, flat)["pearson"] == 1.0
    with pytest.raises(UserInputError, match="one shape"):
        explanation_shift(blob, blob[:16])
