"""Natural corruptions as baselines, on the attack API: noise, blur, contrast, brightness, JPEG, affine.

An adversarial accuracy means little without the accuracy under changes a scanner or a PACS could
make by accident. Each corruption takes ``severity`` 1–5 (values after ImageNet-C, Hendrycks &
Dietterich 2019, where it has the corruption) and an explicit override for its physical quantity.
They use no gradients and, noise aside, no randomness; noise is drawn from the ``seed``.
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
        angle = math.radians(self.setting)
        # The output pixel p samples the input at (S R)^-1 (p - t), in pixel units so that a
        # rotation stays a rotation on non-square scans; then converted to affine_grid's [-1, 1] frame.
        rotation = torch.tensor([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]],
                                dtype=torch.float64)
        half = torch.diag(torch.tensor([width / 2, height / 2], dtype=torch.float64))
        linear = torch.linalg.inv(half) @ rotation.T @ half / scale
        translation = -linear @ torch.tensor([2 * shift, 2 * shift], dtype=torch.float64)
        theta = torch.cat([linear, translation[:, None]], dim=1).to(device=x.device, dtype=x.dtype)
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        moved = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return moved.clamp(0.0, 1.0)
