"""Batch augmentation for CT slices, done on the batch's own device in a few tensor ops.

The reference works augment with small rotations, flips, shifts, scaling, brightness/contrast
changes and noise. Doing it per image in PIL would starve a GPU, so every image of a batch gets
its own random affine transform through one ``affine_grid``/``grid_sample`` call and its own
intensity change by broadcasting. Randomness comes from an explicit generator so a resumed run
replays the same augmentations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """Strengths, mild on purpose: a CT slice rotated by 30 degrees is no longer a CT slice."""

    rotate_degrees: float = 10.0
    shift: float = 0.06  #: fraction of the image side
    scale: float = 0.08  #: zoom in or out by up to this fraction
    flip: float = 0.5  #: probability of a left-right flip
    brightness: float = 0.06  #: added to every pixel, in image scale
    contrast: float = 0.12  #: multiply deviations from the mean by 1 +- this
    noise: float = 0.015  #: largest standard deviation of the added Gaussian noise

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment ``x`` ``[N, 1, H, W]`` in ``[0, 1]``; returns a new tensor in ``[0, 1]``."""
        count = x.shape[0]

        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.rand(count, generator=generator, device=x.device) * (high - low) + low

        angle = uniform(-1.0, 1.0) * math.radians(self.rotate_degrees)
        zoom = uniform(1.0 - self.scale, 1.0 + self.scale)
        mirror = torch.where(uniform(0.0, 1.0) < self.flip, -1.0, 1.0)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack(
            [
                torch.stack([cos * mirror, -sin, uniform(-self.shift, self.shift) * 2], dim=1),
                torch.stack([sin * mirror, cos, uniform(-self.shift, self.shift) * 2], dim=1),
            ],
            dim=1,
        )
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        gain = uniform(1.0 - self.contrast, 1.0 + self.contrast).view(-1, 1, 1, 1)
        offset = uniform(-self.brightness, self.brightness).view(-1, 1, 1, 1)
        sigma = uniform(0.0, self.noise).view(-1, 1, 1, 1)
        noise = torch.randn(out.shape, generator=generator, device=x.device, dtype=out.dtype)
        return ((out - mean) * gain + mean + offset + noise * sigma).clamp_(0.0, 1.0)
