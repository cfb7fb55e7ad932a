"""Natural corruptions as baselines, on the attack API: what a scanner or a PACS could do by accident.

An adversarial accuracy means little without the accuracy under changes a scanner or a PACS could
make by accident. Each corruption takes ``severity`` 1–5 (values after ImageNet-C, Hendrycks &
Dietterich 2019, https://arxiv.org/abs/1903.12261, where it has the corruption, and after
MedMNIST-C, Di Salvo et al. 2024, https://arxiv.org/abs/2406.17536, for medical ones) and an
explicit override for its physical quantity. They use no gradients; whatever is random (noise,
the angle of a streak or a motion) is drawn from the ``seed``, so a corruption is repeatable.

The CT ones model the scan as displayed (grey levels of a window, in [0, 1]), not the raw
projections, so each is an image-domain model of its artefact, documented where it is defined:
noise at lowered dose, streaks, rings, motion blur, a shifted display window and a coarser
matrix, besides the generic noise, blur, contrast, brightness, JPEG and affine ones.
:data:`pipeline.evaluation.corruption.CT_CORRUPTIONS` is the set the evaluation runs.
"""

from __future__ import annotations

import math
from typing import ClassVar, Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.attacks.base import Attack, Param, seed_param
from pipeline.attacks.geometry import warp
from pipeline.attacks.registry import register
from pipeline.progress import ProgressCallback, report

#: Image side the ImageNet-C blur radii refer to; blur scales with the scan so that a severity
#: looks alike at any size.
REFERENCE_SIDE = 224


def severity_param() -> Param:
    return Param("severity", int, 3,
                 "how strong, from 1 (mild) to 5 (severe); the override below wins if set",
                 low=1, high=5)


class Corruption(Attack):
    """A corruption: ``corrupt`` maps a batch to its corrupted copy; the setting comes from ``severity``
    unless the override parameter named ``override`` is set."""

    family = "corruption"
    norm = None
    override: ClassVar[str]
    #: The override's value at severities 1..5.
    levels: ClassVar[tuple[float, ...]]

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
             progress: Optional[ProgressCallback]) -> torch.Tensor:
        corrupted = self.corrupt(x)
        report(progress, 1, 1, f"{self.name} at {self.override}={self.setting:g}")
        return corrupted

    @property
    def setting(self) -> float:
        """The effective value of the override: given explicitly, or from the severity."""
        value = getattr(self, self.override)
        return self.levels[self.severity - 1] if value is None else value

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def describe_budget(self) -> str:
        return f"severity {self.severity} of 5 ({self.override} = {self.setting:g}): no gradient, no search"


@register
class GaussianNoise(Corruption):
    """Gaussian noise corruption (not an attack: no gradient, no search).

    Paper: Hendrycks and Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019. https://arxiv.org/abs/1903.12261
    """

    name = "gaussian-noise"
    title = "Gaussian noise"
    description = "Adds independent Gaussian noise to every pixel, like a low-dose acquisition."
    override = "sigma"
    levels = (0.08, 0.12, 0.18, 0.26, 0.38)
    severity: int
    sigma: Optional[float]
    seed: int
    params = (
        severity_param(),
        Param("sigma", float, None, "noise standard deviation (image scale); overrides severity",
              low=0.0, high=1.0),
        seed_param(),
    )

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=self.generator(x.device), device=x.device, dtype=x.dtype)
        return (x + self.setting * noise).clamp(0.0, 1.0)


@register
class GaussianBlur(Corruption):
    """Gaussian blur corruption (not an attack: no gradient, no search).

    Paper: Hendrycks and Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019. https://arxiv.org/abs/1903.12261
    """

    name = "gaussian-blur"
    title = "Gaussian blur"
    description = "Blurs the scan, like a smooth reconstruction kernel or motion."
    override = "sigma"
    levels = (1.0, 2.0, 3.0, 4.0, 6.0)
    severity: int
    sigma: Optional[float]
    params = (
        severity_param(),
        Param("sigma", float, None, "blur standard deviation in pixels of this scan; overrides severity "
              f"(whose values refer to a {REFERENCE_SIDE}-pixel scan)", low=0.0, high=100.0),
    )

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        sigma = self.setting
        if self.sigma is None:
            sigma *= min(x.shape[-2:]) / REFERENCE_SIDE
        radius = min(math.ceil(3 * sigma), min(x.shape[-2:]) - 1)
        if sigma <= 0 or radius < 1:
            return x.clone()
        offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
        kernel = (kernel / kernel.sum()).repeat(x.shape[1], 1, 1, 1)
        padded = F.pad(x, (radius, radius, radius, radius), mode="reflect")
        blurred = F.conv2d(padded, kernel.view(x.shape[1], 1, -1, 1), groups=x.shape[1])
        return F.conv2d(blurred, kernel.view(x.shape[1], 1, 1, -1), groups=x.shape[1]).clamp(0.0, 1.0)


@register
class Contrast(Corruption):
    """Contrast reduction corruption (not an attack: no gradient, no search).

    Paper: Hendrycks and Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019. https://arxiv.org/abs/1903.12261
    """

    name = "contrast"
    title = "Contrast reduction"
    description = "Pulls every pixel towards the scan's mean grey level, like a wrong display window."
    override = "factor"
    levels = (0.4, 0.3, 0.2, 0.1, 0.05)
    severity: int
    factor: Optional[float]
    params = (
        severity_param(),
        Param("factor", float, None, "fraction of the contrast kept (1 = unchanged); overrides severity",
              low=0.0, high=1.0),
    )

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x * self.setting + mean * (1 - self.setting)).clamp(0.0, 1.0)


@register
class Brightness(Corruption):
    """Brightness shift corruption (not an attack: no gradient, no search).

    Paper: Hendrycks and Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019. https://arxiv.org/abs/1903.12261
    """

    name = "brightness"
    title = "Brightness shift"
    description = "Adds a constant to every grey level (colour shift for a grey scan), like a level offset."
    override = "shift"
    levels = (0.1, 0.2, 0.3, 0.4, 0.5)
    severity: int
    shift: Optional[float]
    params = (
        severity_param(),
        Param("shift", float, None, "grey level added to every pixel (image scale, negative darkens); "
              "overrides severity", low=-1.0, high=1.0),
    )

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.setting).clamp(0.0, 1.0)


@register
class JPEG(Corruption):
    """JPEG compression corruption (not an attack: no gradient, no search).

    Paper: Hendrycks and Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019. https://arxiv.org/abs/1903.12261
    """

    name = "jpeg"
    title = "JPEG compression"
    description = "Encodes and decodes the scan as a real JPEG (8-bit, OpenCV), with its 8x8 block artefacts."
    override = "quality"
    levels = (25, 18, 15, 10, 7)
    severity: int
    quality: Optional[int]
    params = (
        severity_param(),
        Param("quality", int, None, "JPEG quality from 1 (worst) to 100; overrides severity",
              low=1, high=100),
    )

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        flags = [cv2.IMWRITE_JPEG_QUALITY, int(self.setting)]
        grey = (x.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        decoded = np.empty_like(grey)
        for index in np.ndindex(grey.shape[:2]):
            ok, encoded = cv2.imencode(".jpg", grey[index], flags)
            if not ok:
                raise RuntimeError("OpenCV could not encode a JPEG")
            decoded[index] = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)
        return torch.from_numpy(decoded).to(device=x.device, dtype=x.dtype) / 255


@register
class Rotation(Corruption):
    """Rotation, shift and zoom corruption (not an attack: no gradient, no search).

    Paper: Hendrycks and Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019. https://arxiv.org/abs/1903.12261
    """

    name = "rotation"
    title = "Rotation / small affine"
    description = (
        "Rotates, shifts and zooms the scan a little (bilinear, black outside), like a tilted patient. "
        "Severity sets all three; each can be overridden."
    )
    override = "angle"
    levels = (3.0, 6.0, 9.0, 12.0, 15.0)
    #: Shift (fraction of the side) and scale at severities 1..5.
    shifts = (0.02, 0.04, 0.06, 0.08, 0.10)
    scales = (0.98, 0.96, 0.94, 0.92, 0.90)
    severity: int
    angle: Optional[float]
    shift: Optional[float]
    scale: Optional[float]
    params = (
        severity_param(),
        Param("angle", float, None, "rotation in degrees, counter-clockwise; overrides severity",
              low=-180.0, high=180.0),
        Param("shift", float, None, "shift right and down, as a fraction of the side; overrides severity",
              low=-0.5, high=0.5),
        Param("scale", float, None, "zoom factor (below 1 shrinks); overrides severity", low=0.5, high=2.0),
    )

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        level = self.severity - 1
        shift = self.shifts[level] if self.shift is None else self.shift
        scale = self.scales[level] if self.scale is None else self.scale
        height, width = x.shape[-2:]
        n = x.shape[0]
        shifts = torch.tensor([[shift * width, shift * height]], dtype=torch.float64).expand(n, 2)
        moved = warp(x, torch.full((n,), float(self.setting), dtype=torch.float64), shifts, scale)
        return moved.clamp(0.0, 1.0)


def _scaled(pixels: float, x: torch.Tensor) -> float:
    """``pixels`` of a :data:`REFERENCE_SIDE`-pixel scan, in pixels of ``x``."""
    return pixels * min(x.shape[-2:]) / REFERENCE_SIDE


def _line_width(x: torch.Tensor) -> float:
    """Width (Gaussian sigma, pixels) of a streak or a ring: about one pixel of a 224-pixel scan."""
    return max(0.6, _scaled(1.0, x))


@register
class LowDose(Corruption):
    """Noise of a scan taken at a fraction of the dose (quantum noise; Kijewski & Judy 1987).

    Image noise variance grows as 1/dose, so going from the full dose to a fraction ``dose`` adds
    noise of variance ``REFERENCE_NOISE² (1/dose - 1)``. CT noise is not white: filtered back-
    projection gives it a power spectrum rising with frequency (the ramp filter) and falling at
    the top (the reconstruction kernel's apodization), the fine-grained texture of low-dose CT.
    The noise is drawn white from the ``seed`` and shaped by ``f · hann(f)²`` (cycles per pixel).

    Paper: Di Salvo, Doerrich and Ledig, "MedMNIST-C: Comprehensive benchmark and improved classifier
    robustness by simulating realistic image corruptions", 2024 (the severity-graded medical benchmark
    this follows). https://arxiv.org/abs/2406.17536
    """

    name = "low-dose"
    title = "Low-dose noise"
    description = ("Adds the grainy, correlated noise of a scan taken at a fraction of the dose "
                   "(CT noise texture; its level grows as 1/dose).")
    override = "dose"
    levels = (0.5, 0.25, 0.125, 1 / 16, 1 / 32)
    #: Noise standard deviation (image scale) assumed at the full dose.
    REFERENCE_NOISE: ClassVar[float] = 0.04
    severity: int
    dose: Optional[float]
    seed: int
    params = (
        severity_param(),
        Param("dose", float, None, "fraction of the original dose (1 = unchanged); overrides severity",
              low=1e-3, high=1.0),
        seed_param(),
    )

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        sigma = self.REFERENCE_NOISE * math.sqrt(1.0 / self.setting - 1.0)
        white = torch.randn(x.shape, generator=self.generator(x.device), device=x.device, dtype=torch.float32)
        height, width = x.shape[-2:]
        fy = torch.fft.fftfreq(height, device=x.device)[:, None]
        fx = torch.fft.rfftfreq(width, device=x.device)[None, :]
        frequency = torch.sqrt(fx**2 + fy**2).clamp(max=0.5)
        spectrum = frequency * (0.5 + 0.5 * torch.cos(2 * math.pi * frequency)) ** 2  # ramp × Hann
        noise = torch.fft.irfft2(torch.fft.rfft2(white) * spectrum.sqrt(), s=(height, width))
        noise = noise / noise.flatten(1).std(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return (x + sigma * noise.to(x.dtype)).clamp(0.0, 1.0)


@register
class Streaks(Corruption):
    """Streak artefacts: thin bright and dark lines through a dense spot, as photon starvation or
    metal (beam hardening) leave after filtered back-projection (Barrett & Keat 2004, RadioGraphics
    24:1679). Each line passes through one point near the centre at a random angle, with a random
    sign; ``severity`` sets their number and contrast.

    Paper: Di Salvo, Doerrich and Ledig, "MedMNIST-C: Comprehensive benchmark and improved classifier
    robustness by simulating realistic image corruptions", 2024 (the severity-graded medical benchmark
    this follows). https://arxiv.org/abs/2406.17536
    """

    name = "streaks"
    title = "Streak artefacts"
    description = "Thin bright and dark lines radiating from a dense spot, like metal or photon starvation."
    override = "amplitude"
    levels = (0.05, 0.08, 0.12, 0.16, 0.22)
    counts = (2, 3, 4, 6, 8)
    severity: int
    amplitude: Optional[float]
    count: Optional[int]
    seed: int
    params = (
        severity_param(),
        Param("amplitude", float, None, "grey levels a streak adds or removes at its centre line "
              "(image scale); overrides severity", low=0.0, high=1.0),
        Param("count", int, None, "number of streaks; overrides severity", low=1, high=64),
        seed_param(),
    )

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        count = self.counts[self.severity - 1] if self.count is None else self.count
        generator = self.generator(x.device)
        n, _, height, width = x.shape
        angles = torch.rand((n, count, 1, 1), generator=generator, device=x.device) * math.pi
        signs = torch.randint(0, 2, (n, count, 1, 1), generator=generator, device=x.device) * 2.0 - 1.0
        # The dense spot lies near the centre: up to 15% of the side away from it.
        origin = (torch.rand((n, 2, 1, 1), generator=generator, device=x.device) - 0.5) * 0.3
        rows = torch.arange(height, device=x.device).view(1, 1, -1, 1) - (height - 1) * (0.5 + origin[:, :1])
        cols = torch.arange(width, device=x.device).view(1, 1, 1, -1) - (width - 1) * (0.5 + origin[:, 1:])
        distance = cols * torch.sin(angles) - rows * torch.cos(angles)  # to each line, pixels
        lines = (signs * torch.exp(-0.5 * (distance / _line_width(x)) ** 2)).sum(dim=1, keepdim=True)
        return (x + self.setting * lines.to(x.dtype)).clamp(0.0, 1.0)


@register
class Rings(Corruption):
    """Ring artefacts: concentric circles around the centre of rotation, left by detector elements
    whose gain is off (Barrett & Keat 2004, RadioGraphics 24:1679). Radii and signs are drawn from
    the ``seed``; ``severity`` sets their number and contrast.

    Paper: Di Salvo, Doerrich and Ledig, "MedMNIST-C: Comprehensive benchmark and improved classifier
    robustness by simulating realistic image corruptions", 2024 (the severity-graded medical benchmark
    this follows). https://arxiv.org/abs/2406.17536
    """

    name = "rings"
    title = "Ring artefacts"
    description = ("Concentric bright and dark circles around the centre, like miscalibrated detector "
                   "elements.")
    override = "amplitude"
    levels = (0.04, 0.06, 0.09, 0.12, 0.16)
    counts = (2, 3, 5, 7, 10)
    severity: int
    amplitude: Optional[float]
    count: Optional[int]
    seed: int
    params = (
        severity_param(),
        Param("amplitude", float, None,
              "grey levels a ring adds or removes (image scale); overrides severity", low=0.0, high=1.0),
        Param("count", int, None, "number of rings; overrides severity", low=1, high=64),
        seed_param(),
    )

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        count = self.counts[self.severity - 1] if self.count is None else self.count
        generator = self.generator(x.device)
        n, _, height, width = x.shape
        side = min(height, width)
        radii = (0.05 + 0.4 * torch.rand((n, count, 1, 1), generator=generator, device=x.device)) * side
        signs = torch.randint(0, 2, (n, count, 1, 1), generator=generator, device=x.device) * 2.0 - 1.0
        rows = torch.arange(height, device=x.device).view(1, 1, -1, 1) - (height - 1) / 2
        cols = torch.arange(width, device=x.device).view(1, 1, 1, -1) - (width - 1) / 2
        radius = torch.sqrt(rows**2 + cols**2)
        rings = (signs * torch.exp(-0.5 * ((radius - radii) / _line_width(x)) ** 2)).sum(dim=1, keepdim=True)
        return (x + self.setting * rings.to(x.dtype)).clamp(0.0, 1.0)


@register
class MotionBlur(Corruption):
    """Motion blur: the scan smeared along a straight line of ``length`` pixels at a random angle
    (ImageNet-C's motion blur; in CT, a patient who moved or breathed during the rotation). Lengths
    refer to a 224-pixel scan, so a severity looks alike at any size.

    Paper: Hendrycks and Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019. https://arxiv.org/abs/1903.12261
    """

    name = "motion-blur"
    title = "Motion blur"
    description = "Smears the scan along a straight line at a random angle, like a patient who moved."
    override = "length"
    levels = (4.0, 7.0, 11.0, 16.0, 24.0)
    severity: int
    length: Optional[float]
    seed: int
    params = (
        severity_param(),
        Param("length", float, None, "length of the smear in pixels of this scan; overrides severity "
              f"(whose values refer to a {REFERENCE_SIDE}-pixel scan)", low=0.0, high=200.0),
        seed_param(),
    )

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        length = _scaled(self.setting, x) if self.length is None else self.length
        n, channels, height, width = x.shape
        radius = min(math.ceil(length / 2), (min(height, width) - 1) // 2)
        if radius < 1:
            return x.clone()
        angles = torch.rand((n, 1, 1), generator=self.generator(x.device), device=x.device) * math.pi
        offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
        rows, cols = offsets.view(1, -1, 1), offsets.view(1, 1, -1)
        along = cols * torch.cos(angles) - rows * torch.sin(angles)
        across = cols * torch.sin(angles) + rows * torch.cos(angles)
        # A line segment of the given length, half a pixel thick, anti-aliased by a Gaussian profile.
        kernel = torch.exp(-0.5 * (across / 0.5) ** 2) * (along.abs() <= length / 2 + 0.5)
        kernel = kernel / kernel.flatten(1).sum(dim=1).view(-1, 1, 1)
        padded = F.pad(x.float().reshape(1, n * channels, height, width), (radius,) * 4, mode="reflect")
        weights = kernel.repeat_interleave(channels, dim=0)[:, None]
        blurred = F.conv2d(padded, weights, groups=n * channels).reshape(x.shape)
        return blurred.to(x.dtype).clamp(0.0, 1.0)


@register
class WindowShift(Corruption):
    """A display window set wrong: level moved and width narrowed, as a PACS preset or an export
    with another window does. The scan is re-windowed as ``(x - 0.5 - level) / width + 0.5``,
    clipped: the level shift darkens (or brightens) everything, the narrower width raises contrast
    and clips the extremes. ``severity`` sets both; each can be overridden.

    Paper: Di Salvo, Doerrich and Ledig, "MedMNIST-C: Comprehensive benchmark and improved classifier
    robustness by simulating realistic image corruptions", 2024 (the severity-graded medical benchmark
    this follows). https://arxiv.org/abs/2406.17536
    """

    name = "window-shift"
    title = "Window level/width shift"
    description = ("Re-windows the scan with the level moved and the width narrowed, like a wrong display "
                   "preset: grey levels shift and the extremes clip.")
    override = "level"
    levels = (0.04, 0.08, 0.12, 0.16, 0.20)
    widths = (0.9, 0.8, 0.7, 0.6, 0.5)
    severity: int
    level: Optional[float]
    width: Optional[float]
    params = (
        severity_param(),
        Param("level", float, None, "window level moved by this fraction of the window (positive darkens); "
              "overrides severity", low=-1.0, high=1.0),
        Param("width", float, None, "new window width as a fraction of the old one (below 1: more "
              "contrast); overrides severity", low=0.05, high=5.0),
    )

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        width = self.widths[self.severity - 1] if self.width is None else self.width
        return ((x - 0.5 - self.setting) / width + 0.5).clamp(0.0, 1.0)


@register
class Downsample(Corruption):
    """A coarser matrix: the scan averaged down by ``factor`` and interpolated back (bilinear), as a
    smaller reconstruction matrix or a thumbnail export gives (MedMNIST-C's pixelate, smoothed).

    Paper: Di Salvo, Doerrich and Ledig, "MedMNIST-C: Comprehensive benchmark and improved classifier
    robustness by simulating realistic image corruptions", 2024 (the severity-graded medical benchmark
    this follows). https://arxiv.org/abs/2406.17536
    """

    name = "downsample"
    title = "Downsampling"
    description = "Averages the scan down to a coarser grid and scales it back up, losing fine detail."
    override = "factor"
    levels = (1.5, 2.0, 3.0, 4.0, 6.0)
    severity: int
    factor: Optional[float]
    params = (
        severity_param(),
        Param("factor", float, None, "how many times coarser (1 = unchanged); overrides severity",
              low=1.0, high=32.0),
    )

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        small = (max(1, round(height / self.setting)), max(1, round(width / self.setting)))
        if small == (height, width):
            return x.clone()
        coarse = F.interpolate(x.float(), size=small, mode="area")
        restored = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
        return restored.to(x.dtype).clamp(0.0, 1.0)
