"""Natural corruptions: real effects that grow with severity, honest JPEG, exact geometry, determinism."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from pipeline.attacks import available, get_attack
from pipeline.errors import AttackParameterError

CORRUPTIONS = ["gaussian-noise", "gaussian-blur", "contrast", "brightness", "jpeg", "rotation", "low-dose",
               "streaks", "rings", "motion-blur", "window-shift", "downsample"]
SIZE = 64


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))


def phantom(n: int = 2) -> torch.Tensor:
    """A grey disc with darker lungs, a bright nodule and fine texture: edges and flat areas."""
    rows, cols = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    body = ((rows - 32) ** 2 + (cols - 32) ** 2 < 28**2).float() * 0.55
    lungs = (((rows - 32) ** 2 / 18**2 + (cols - 20) ** 2 / 8**2) < 1).float() * 0.35
    lungs += (((rows - 32) ** 2 / 18**2 + (cols - 44) ** 2 / 8**2) < 1).float() * 0.35
    nodule = ((rows - 26) ** 2 + (cols - 44) ** 2 < 9).float() * 0.6
    texture = 0.04 * torch.sin(rows * 0.9) * torch.cos(cols * 0.7)
    image = (0.1 + body - lungs + nodule + texture).clamp(0, 1)
    return torch.stack([image + 0.02 * k for k in range(n)])[:, None].clamp(0, 1)


def test_all_corruptions_are_registered_as_such() -> None:
    assert set(CORRUPTIONS) <= set(available("corruption"))
    for name in CORRUPTIONS:
        attack = get_attack(name)
        assert attack.family == "corruption" and attack.norm is None and attack.budget is None


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_change_grows_with_severity(model: nn.Module, name: str) -> None:
    x = phantom()
    y = torch.zeros(2, dtype=torch.long)
    changes = []
    for severity in range(1, 6):
        x_bad = get_attack(name, severity=severity)(model, x, y)
        assert x_bad.shape == x.shape and x_bad.dtype == x.dtype
        assert 0 <= x_bad.min() and x_bad.max() <= 1
        changes.append(float((x_bad - x).abs().mean()))
    assert changes[0] > 1e-4
    assert all(later > earlier for earlier, later in zip(changes, changes[1:])), changes


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_deterministic_and_input_untouched(model: nn.Module, name: str) -> None:
    x = phantom()
    before = x.clone()
    y = torch.zeros(2, dtype=torch.long)
    first = get_attack(name, severity=4)(model, x, y)
    assert torch.equal(first, get_attack(name, severity=4)(model, x, y))
    assert torch.equal(x, before)
    with torch.inference_mode():  # no gradients needed
        assert torch.equal(first, get_attack(name, severity=4)(model, x, y))


def test_noise_follows_its_seed_and_sigma(model: nn.Module) -> None:
    x = torch.full((4, 1, SIZE, SIZE), 0.5)
    y = torch.zeros(4, dtype=torch.long)
    a = get_attack("gaussian-noise", sigma=0.05, seed=1)(model, x, y)
    assert torch.equal(a, get_attack("gaussian-noise", sigma=0.05, seed=1)(model, x, y))
    assert not torch.equal(a, get_attack("gaussian-noise", sigma=0.05, seed=2)(model, x, y))
    assert float((a - x).std()) == pytest.approx(0.05, rel=0.05)
    # Severity 1 of ImageNet-C is sigma 0.08; the override wins over severity.
    mild = get_attack("gaussian-noise", severity=1)(model, x, y)
    assert float((mild - x).std()) == pytest.approx(0.08, rel=0.05)
    assert torch.equal(a, get_attack("gaussian-noise", severity=5, sigma=0.05, seed=1)(model, x, y))


def test_jpeg_is_a_real_jpeg_with_block_artefacts(model: nn.Module) -> None:
    ramp = torch.linspace(0, 1, SIZE).repeat(SIZE, 1)
    x = (ramp * ramp.T)[None, None]
    y = torch.zeros(1, dtype=torch.long)
    out = get_attack("jpeg", quality=10)(model, x, y)
    grey = (x[0, 0] * 255).round().to(torch.uint8).numpy()
    _, encoded = cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, 10])
    assert np.array_equal((out[0, 0] * 255).round().numpy().astype(np.uint8), cv2.imdecode(encoded, 0))
    assert float((out - x).abs().max()) > 0.02
    # Steps between neighbouring columns are larger across 8x8 block borders than inside blocks.
    steps = (out[0, 0, :, 1:] - out[0, 0, :, :-1]).abs().mean(dim=0)
    across = steps[7::8].mean()
    inside = torch.cat([steps[k::8] for k in range(7)]).mean()
    assert across > 1.5 * inside
    nearly_lossless = get_attack("jpeg", quality=100)(model, x, y)
    assert float((nearly_lossless - x).abs().mean()) < float((out - x).abs().mean()) / 5


def test_rotation_and_shift_are_exact_geometry(model: nn.Module) -> None:
    x = phantom(1)
    y = torch.zeros(1, dtype=torch.long)
    quarter = get_attack("rotation", angle=90.0, shift=0.0, scale=1.0)(model, x, y)
    assert quarter.shape == x.shape
    counter_clockwise = torch.rot90(x, 1, dims=(-2, -1))
    torch.testing.assert_close(quarter, counter_clockwise, atol=1e-4, rtol=0)
    moved = get_attack("rotation", angle=0.0, shift=0.25, scale=1.0)(model, x, y)
    torch.testing.assert_close(moved[..., 16:, 16:], x[..., :-16, :-16], atol=1e-4, rtol=0)
    assert float(moved[..., :16, :].abs().max()) == 0.0  # uncovered border is black, as air
    wide = torch.rand(1, 1, 40, 64)
    assert get_attack("rotation", severity=5)(model, wide, y).shape == wide.shape


def test_overrides_do_what_they_say(model: nn.Module) -> None:
    x = phantom()
    y = torch.zeros(2, dtype=torch.long)
    assert torch.equal(get_attack("contrast", factor=1.0)(model, x, y), x)
    flat = get_attack("contrast", factor=0.0)(model, x, y)
    assert torch.allclose(flat, x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x))
    assert float(get_attack("brightness", shift=-0.1)(model, x, y).mean()) < float(x.mean())
    assert torch.equal(get_attack("gaussian-blur", sigma=0.0)(model, x, y), x)
    # Blur severity is relative to the scan size: severity 3 at 64 px keeps more detail than sigma 3 px.
    by_severity = get_attack("gaussian-blur", severity=3)(model, x, y)
    by_pixels = get_attack("gaussian-blur", sigma=3.0)(model, x, y)
    assert float((by_severity - x).abs().mean()) < float((by_pixels - x).abs().mean())


def test_low_dose_noise_has_the_level_of_its_dose_and_the_texture_of_ct(model: nn.Module) -> None:
    """Variance grows as 1/dose; the noise is not white: its power spectrum is empty at zero frequency
    (the ramp filter) and at the top (the kernel's apodization), peaking in between."""
    x = torch.full((4, 1, SIZE, SIZE), 0.5)
    y = torch.zeros(4, dtype=torch.long)
    quarter = get_attack("low-dose", dose=0.25)(model, x, y) - x
    expected = get_attack("low-dose").REFERENCE_NOISE * (1 / 0.25 - 1) ** 0.5
    assert float(quarter.std()) == pytest.approx(expected, rel=0.03)
    assert float(get_attack("low-dose", dose=1 / 16)(model, x, y).sub(x).std()) > 2 * float(quarter.std())
    assert torch.equal(get_attack("low-dose", dose=1.0)(model, x, y), x)
    power = torch.fft.rfft2(quarter[:, 0]).abs().pow(2).mean(dim=0)
    frequency = torch.sqrt(torch.fft.fftfreq(SIZE)[:, None] ** 2 + torch.fft.rfftfreq(SIZE)[None, :] ** 2)
    low, middle, top = (float(power[band].mean()) for band in (
        frequency < 0.03, (frequency > 0.1) & (frequency < 0.2), frequency > 0.45))
    assert float(power[0, 0]) < 1e-6 * float(power.sum())
    assert low < 0.3 * middle and top < 0.05 * middle


def test_rings_are_concentric_and_streaks_are_straight_lines_through_one_point(model: nn.Module) -> None:
    x = torch.full((1, 1, SIZE, SIZE), 0.5)
    y = torch.zeros(1, dtype=torch.long)
    rings = get_attack("rings", severity=5)(model, x, y) - x
    # Centred on the middle of the scan, so a quarter turn leaves them where they were.
    torch.testing.assert_close(rings, torch.rot90(rings, 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    assert float(rings.abs().max()) > 0.05
    one = get_attack("streaks", count=1, amplitude=0.3)(model, x, y)[0, 0] - 0.5
    # One straight line: its brightest pixels have collinear coordinates (a rank-1 spread).
    rows, cols = torch.nonzero(one.abs() > 0.2, as_tuple=True)
    points = torch.stack([rows, cols], dim=1).float()
    singular = torch.linalg.svdvals(points - points.mean(dim=0))
    assert points.shape[0] >= SIZE // 2 and float(singular[1]) < 0.1 * float(singular[0])


def test_motion_blur_smears_a_dot_into_a_line_of_its_length_and_keeps_flat_areas(model: nn.Module) -> None:
    x = torch.zeros(1, 1, SIZE, SIZE)
    x[..., 32, 32] = 1.0
    y = torch.zeros(1, dtype=torch.long)
    smeared = get_attack("motion-blur", length=9.0)(model, x, y)[0, 0]
    assert float(smeared.sum()) == pytest.approx(1.0, rel=1e-4)  # nothing lost or added
    lit = torch.nonzero(smeared > 0.02).float()
    extent = float(torch.cdist(lit, lit).max())
    assert 7.0 <= extent <= 11.0
    flat = torch.full((1, 1, SIZE, SIZE), 0.3)
    torch.testing.assert_close(get_attack("motion-blur", severity=5)(model, flat, y), flat)


def test_window_shift_and_downsampling_do_what_they_say(model: nn.Module) -> None:
    x = phantom()
    y = torch.zeros(2, dtype=torch.long)
    shifted = get_attack("window-shift", level=0.1, width=0.5)(model, x, y)
    torch.testing.assert_close(shifted, ((x - 0.6) / 0.5 + 0.5).clamp(0, 1))
    torch.testing.assert_close(get_attack("window-shift", level=0.0, width=1.0)(model, x, y), x)
    checker = ((torch.arange(SIZE)[:, None] + torch.arange(SIZE)[None, :]) % 2).float()[None, None]
    coarse = get_attack("downsample", factor=2.0)(model, checker, y[:1])
    torch.testing.assert_close(coarse, torch.full_like(checker, 0.5))  # finest detail gone
    smooth = torch.linspace(0.2, 0.8, SIZE).repeat(SIZE, 1)[None, None]
    assert float((get_attack("downsample", factor=2.0)(model, smooth, y[:1]) - smooth).abs().max()) < 0.02
    assert torch.equal(get_attack("downsample", factor=1.0)(model, x, y), x)


@pytest.mark.parametrize(("name", "params"), [
    ("jpeg", {"severity": 6}), ("jpeg", {"quality": 0}), ("contrast", {"factor": 1.5}),
    ("rotation", {"spin": 3}), ("low-dose", {"dose": 0.0}), ("rings", {"count": 0}),
    ("window-shift", {"width": 0.0}), ("downsample", {"factor": 0.5}),
])
def test_bad_parameters_say_what_is_valid(name: str, params: dict) -> None:
    with pytest.raises(AttackParameterError, match="must|valid parameters"):
        get_attack(name, **params)
