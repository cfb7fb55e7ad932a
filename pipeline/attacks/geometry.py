"""Moving a scan: the one rotate, zoom and shift of the package (``warp``).

Used by the spatial attack (its grid of moves), DI-FGSM (its resized copies) and the ``rotation``
corruption, so that "rotated by 3°" means the same everywhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def warp(x: torch.Tensor, angles: torch.Tensor, shifts: torch.Tensor,
         scale: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Rotate each scan of ``x`` ``[N, C, H, W]`` by ``angles[n]`` degrees counter-clockwise about its
    centre, zoom it by ``scale`` (one factor, or ``[N]``), then shift it by ``shifts[n] = (right,
    down)`` pixels; bilinear,
    black (0) outside. ``angles`` ``[N]`` and ``shifts`` ``[N, 2]`` are any real numbers; no rotation
    and whole-pixel shifts move pixels exactly. Differentiable in ``x``.
    """
    height, width = x.shape[-2:]
    radians = torch.as_tensor(angles, dtype=torch.float64).reshape(-1).cpu() * (math.pi / 180)
    cos, sin = radians.cos(), radians.sin()
    rotation = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)  # [N, 2, 2]
    # The output pixel p samples the input at (S R)^-1 (p - t), in pixel units so that a rotation stays
    # a rotation on non-square scans; then converted to affine_grid's [-1, 1] frame.
    half = torch.diag(torch.tensor([width / 2, height / 2], dtype=torch.float64))
    zoom = torch.as_tensor(scale, dtype=torch.float64).cpu().reshape(-1, 1, 1)
    linear = torch.linalg.inv(half) @ rotation.transpose(-1, -2) @ half / zoom
    moved = torch.as_tensor(shifts, dtype=torch.float64).reshape(-1, 2).cpu()
    offset = moved * torch.tensor([2 / width, 2 / height], dtype=torch.float64)
    translation = -(linear @ offset[:, :, None])
    theta = torch.cat([linear, translation], dim=2).to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
