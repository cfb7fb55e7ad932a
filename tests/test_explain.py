"""Grad-CAM: maps of the right shape that point at what decides the class, safe on a shared model."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.errors import UserInputError
from pipeline.explain import (
    METHODS,
    MIN_GRID,
    cam_layers,
    default_layer,
    explain,
    explanation_shift,
    feature_grids,
    overlay,
)
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
    single = explain(corner_model, x[:1], method=method).maps[0]
    explained = explain(corner_model, x, method=method)
    batch = explained.maps
    assert explained.quality == ["ok"] * 3 and explained.grid == (SIZE, SIZE)
    assert single.shape == (SIZE, SIZE) and batch.shape == (3, SIZE, SIZE)
    assert single.dtype == np.float32
    assert single.min() >= 0 and single.max() <= 1 and single.max() > 0.5
    np.testing.assert_allclose(batch[0], single, atol=1e-5)
    assert hooks(corner_model) == 0


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_map_peaks_in_the_quadrant_that_decides_the_class(corner_model: CornerNet, method: str) -> None:
    x, _, quadrants = corner_scans(12, seed=3)
    maps = explain(corner_model, x, method=method).maps
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
    by_prediction = explain(corner_model, x, target=predicted).maps
    np.testing.assert_allclose(explain(corner_model, x).maps, by_prediction, atol=1e-6)
    # An explicit class other than the prediction gives a different map.
    other = (predicted + 1) % 3
    assert not np.allclose(explain(corner_model, x, target=other).maps, explain(corner_model, x).maps)
    with pytest.raises(UserInputError, match="0..2"):
        explain(corner_model, x, target=3)
    with pytest.raises(UserInputError, match="one per scan"):
        explain(corner_model, x, target=[0, 1])
    with pytest.raises(UserInputError, match="gradcam"):
        explain(corner_model, x, method="saliency")
    with pytest.raises(UserInputError, match=r"\[N, 1, H, W\]"):
        explain(corner_model, x[0])


def test_the_layer_explained_has_a_grid_fine_enough_to_localise(resnet: nn.Module) -> None:
    """ResNet's last stage is 2x2 at 64 px and 1x1 at 32 px: an earlier stage is chosen there."""
    assert list(cam_layers(resnet)) == ["layer1", "layer2", "layer3", "layer4"]
    grids = {"layer1": (16, 16), "layer2": (8, 8), "layer3": (4, 4), "layer4": (2, 2)}
    assert feature_grids(resnet, 64) == grids
    assert default_layer(resnet, 224) == "layer4"  # 7x7: the usual choice at the usual size
    assert default_layer(resnet, 64) == "layer2"
    assert default_layer(resnet, 32) == "layer1"
    explained = explain(resnet, torch.rand(1, 1, 64, 64), method="gradcam")
    assert explained.layer == "layer2" and explained.grid == (8, 8) and min(explained.grid) >= MIN_GRID
    assert explained.maps.shape == (1, 64, 64) and 0 <= explained.maps.min() and explained.maps.max() <= 1
    chosen = explain(resnet, torch.rand(1, 1, 64, 64), layer="layer3")
    assert chosen.layer == "layer3" and chosen.grid == (4, 4)
    with pytest.raises(UserInputError, match="layer1, layer2, layer3, layer4"):
        explain(resnet, torch.rand(1, 1, 64, 64), layer="fc")
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten())
    assert cam_layers(plain) == {"2": plain[2]}  # no layers of its own: the last convolution
    with pytest.raises(UserInputError, match="no convolution"):
        cam_layers(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)))


def test_a_map_from_a_one_cell_layer_is_named_too_coarse_never_measured(resnet: nn.Module) -> None:
    """At 32 px the last stage is 1x1: both maps are blank, and "correlation 1, overlap 100%" would
    report a blank explanation as a stable one."""
    scans = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    explained = explain(resnet, scans, layer="layer4")
    assert explained.grid == (1, 1) and explained.quality == ["coarse", "coarse"] and not explained.readable
    assert "1×1 cells" in explained.problem(0) and "earlier layer" in explained.problem(0)
    with pytest.raises(UserInputError, match="flat"):
        explanation_shift(explained.maps[0], explained.maps[1])


class Probe(nn.Module):
    """One convolution and a linear head over its pooled, rectified output; ``cam_target_layer`` is
    the rectified map, ``scale`` multiplies it (NaN makes every gradient NaN)."""

    def __init__(self, weight: float, bias: float, head: float, padding_mode: str = "zeros",
                 scale: float = 1.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, padding_mode=padding_mode)
        self.relu = nn.ReLU()
        self.head = nn.Linear(2, 3)
        self.scale = scale
        with torch.no_grad():
            self.conv.weight.fill_(weight)
            self.conv.bias.fill_(bias)
            self.head.weight.fill_(0.0)
            self.head.weight[0].fill_(head)
            self.head.bias.copy_(torch.tensor([0.0, -5.0, -5.0]))

    @property
    def cam_target_layer(self) -> nn.Module:
        return self.relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.conv(x)).mul(self.scale).mean(dim=(2, 3)))


def test_empty_constant_and_nan_maps_are_named_with_what_to_do() -> None:
    scan = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    # Class 0's score falls wherever the layer fires: Grad-CAM keeps no positive evidence.
    empty = explain(Probe(0.3, 0.1, -1.0), scan, target=0)
    assert empty.quality == ["empty"] and "no region of the scan speaks for the class" in empty.problem()
    # A flat scan through a convolution that sees no border: the same evidence everywhere.
    flat = torch.full((1, 1, 16, 16), 0.5)
    constant = explain(Probe(0.3, 0.1, 1.0, padding_mode="replicate"), flat, target=0)
    assert constant.quality == ["constant"] and "the same everywhere" in constant.problem()
    broken = explain(Probe(0.3, 0.1, 1.0, scale=float("nan")), scan, target=0)
    assert broken.quality == ["nan"] and "NaN" in broken.problem()
    working = explain(Probe(0.3, 0.1, 1.0), scan, target=0)
    assert working.quality == ["ok"] and working.problem() is None


def test_eigencam_sign_does_not_depend_on_how_channels_are_numbered(resnet: nn.Module) -> None:
    """Two identical models whose explained channels are numbered differently must give one map."""
    torch.manual_seed(2)
    model = CornerNet()
    permuted = CornerNet()
    permuted.load_state_dict(model.state_dict())
    order = torch.randperm(16)
    with torch.no_grad():  # renumber the last convolution's output channels and the head's inputs
        permuted.features[2].weight.copy_(model.features[2].weight[order])
        permuted.features[2].bias.copy_(model.features[2].bias[order])
        permuted.fc.weight.copy_(model.fc.weight[:, order])
    x, _, _ = corner_scans(6, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(model(x), permuted(x), rtol=1e-5, atol=1e-5)
    ours = explain(model, x, method="eigencam").maps
    theirs = explain(permuted, x, method="eigencam").maps
    for a, b in zip(ours, theirs):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
        np.testing.assert_allclose(a, b, atol=1e-4)


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
    serial = [explain(resnet, scan, method=method).maps for scan, method in zip(scans, methods)]

    results: list[np.ndarray | None] = [None] * 8
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(index: int) -> None:
        try:
            barrier.wait()
            results[index] = explain(resnet, scans[index], method=methods[index]).maps
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
    with pytest.raises(UserInputError, match="flat"):
        explanation_shift(flat, flat)  # two blank maps are not "the same pattern"
    with pytest.raises(UserInputError, match="flat"):
        explanation_shift(blob, np.full((32, 32), np.nan))
    with pytest.raises(UserInputError, match="one shape"):
        explanation_shift(blob, blob[:16])
