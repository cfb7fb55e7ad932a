"""Spatial transformation attack (Engstrom et al. 2019): the worst small rotation and shift, by grid search.

A patient lies a few degrees off or a few millimetres to the side on every scan; a model whose
answer flips under such a move is not robust, whatever its L∞ accuracy says. The attack changes no
grey level, it only moves them: its budget is in degrees and pixels (and millimetres, given the
scan's pixel spacing), not an Lp ball, so it reports what it did in those units and has no ``eps``.

It moves scans with :func:`pipeline.attacks.geometry.warp`, as the ``rotation`` corruption does.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from pipeline.attacks.base import Attack, AttackInfo, Param
from pipeline.attacks.geometry import warp
from pipeline.attacks.losses import ce_loss, fooled
from pipeline.attacks.registry import register
from pipeline.attacks.worst_case import WorstCase
from pipeline.progress import ProgressCallback, report

#: Most scans in one forward pass of the search (several transformations of several scans).
BATCH = 128
#: Points of the step-by-step trace over the whole grid (besides the clean scan and the result).
TRACE_POINTS = 20


def spacing_param() -> Param:
    return Param("mm_per_px", float, None, "the scan's pixel spacing in mm, where known: the budget and "
                 "the change are then also given in mm (the attack itself works in pixels)",
                 low=0.01, high=100.0)


def in_mm(pixels: float, mm_per_px: Optional[float]) -> str:
    """`` (≈ 2.1 mm)`` for ``pixels`` at ``mm_per_px``; empty when the spacing is unknown."""
    return "" if mm_per_px is None else f" (≈ {pixels * mm_per_px:.1f} mm)"


@register
class Spatial(Attack):
    """Spatial transformation: the worst rotation and shift of a grid, per scan.

    Tries every rotation of ``angles`` evenly spaced over ``±max_angle`` degrees with every whole-pixel
    shift up to ``max_shift`` along each axis, smallest moves first, and keeps per scan the first
    that changes the answer (so the smallest move of the grid that does), or else the one with the
    highest loss. It needs only the model's outputs: ``queries`` counts the scans' forward passes.
    The paper searched ±30° and ±3 pixels on CIFAR-10; a CT slice is rotated a few degrees at most by
    a tilted patient, hence ±5° here. ``extra`` holds the move kept per scan: ``angle`` (degrees,
    counter-clockwise), ``shift_x`` (pixels right) and ``shift_y`` (pixels down), each float ``[N]``.

    Paper: Engstrom, Tran, Tsipras, Schmidt and Madry, "Exploring the Landscape of Spatial
    Robustness", ICML 2019. https://arxiv.org/abs/1712.02779
    """

    name = "spatial"
    title = "Spatial transformation (rotation + shift)"
    family = "black-box"
    norm = None
    budget_units = "degrees and pixels"
    bound = ("is ``x`` rotated by at most ``max_angle`` degrees about its centre and shifted by at most "
             "``max_shift`` whole pixels along each axis (bilinear, black outside): not a norm ball, a "
             "budget in degrees and pixels")
    supports_target = True
    description = ("Grid search over small rotations and shifts of the whole scan, as a patient lying a "
                   "little differently would give; no grey level is changed, only moved.")
    max_angle: float
    angles: int
    max_shift: int
    mm_per_px: Optional[float]
    params = (
        Param("max_angle", float, 5.0, "largest rotation either way, in degrees", low=0.0, high=45.0),
        Param("angles", int, 11,
              "rotations tried, evenly spaced over ±max_angle (an odd count includes 0°)", low=1, high=361),
        Param("max_shift", int, 3, "largest shift along each axis, in pixels; every whole shift up to it "
              "is tried", low=0, high=64),
        spacing_param(),
    )

    def grid(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every (angle, (right, down)) of the search, float64 ``[T]`` and ``[T, 2]``, smallest moves first
        (by the larger of the angle's and the shift's share of their budgets, then their sum)."""
        if self.angles == 1 or self.max_angle == 0:
            angles = torch.zeros(1, dtype=torch.float64)
        else:
            angles = torch.linspace(-self.max_angle, self.max_angle, self.angles, dtype=torch.float64)
        steps = torch.arange(-self.max_shift, self.max_shift + 1, dtype=torch.float64)
        a, dx, dy = torch.meshgrid(angles, steps, steps, indexing="ij")
        a, dx, dy = a.flatten(), dx.flatten(), dy.flatten()
        angle_share = a.abs() / self.max_angle if self.max_angle > 0 else torch.zeros_like(a)
        shift_share = torch.maximum(dx.abs(), dy.abs()) / max(self.max_shift, 1)
        size = torch.maximum(angle_share, shift_share) * 10 + angle_share + shift_share
        order = torch.sort(size, stable=True).indices
        return a[order], torch.stack([dx[order], dy[order]], dim=1)

    @torch.no_grad()
    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
             progress: Optional[ProgressCallback]) -> torch.Tensor:
        n = x.shape[0]
        angles, shifts = self.grid()
        total = angles.shape[0]
        worst = WorstCase(x)
        best_logits = model(x)
        self.record(best_logits, y)
        worst.update(torch.arange(n, device=x.device), x, ce_loss(best_logits, y, target),
                     fooled(best_logits, y, target))
        chosen = torch.zeros(n, 3, dtype=torch.float64)  # angle, right, down of the point kept
        queries = torch.ones(n, dtype=torch.long)
        every = max(1, math.ceil(total / TRACE_POINTS))
        tried = 0
        while tried < total:
            active = worst.remaining()
            if active.numel() == 0:
                break
            count = min(total - tried, max(1, BATCH // active.numel()))
            moves = range(tried, tried + count)
            k = active.numel()
            batch = torch.cat([warp(x[active], angles[t].expand(k), shifts[t].expand(k, 2))
                               for t in moves]).clamp(0.0, 1.0)
            logits = model(batch).view(count, active.numel(), -1)
            labels, goal = y[active], None if target is None else target[active]
            for j, t in enumerate(moves):
                # Only scans not fooled yet: the first move that fools a scan is the one kept.
                still = ~worst.success[active]
                candidate = batch[j * active.numel():(j + 1) * active.numel()][still]
                outputs, index = logits[j][still], active[still]
                kept = worst.update(index, candidate, ce_loss(outputs, labels[still], None if goal is None
                                                              else goal[still]),
                                    fooled(outputs, labels[still], None if goal is None else goal[still]))
                best_logits[index] = torch.where(kept[:, None], outputs, best_logits[index])
                where = index[kept].cpu()
                chosen[where] = torch.tensor([float(angles[t]), *map(float, shifts[t])], dtype=torch.float64)
                if (t + 1) % every == 0:
                    self.record(best_logits, y)
            queries[active.cpu()] += count
            tried += count
            report(progress, tried, total,
                   f"spatial: {tried}/{total} moves, {int(worst.success.sum())}/{n} fooled")
        self.record_queries(queries)
        self._chosen = chosen
        return worst.x

    def _measure(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                 target: Optional[torch.Tensor]) -> AttackInfo:
        """Adds ``extra``'s ``angle``, ``shift_x`` and ``shift_y`` (float ``[N]``, degrees and pixels)."""
        info = super()._measure(model, x, x_adv, y, target)
        info.extra.update(angle=self._chosen[:, 0].float(), shift_x=self._chosen[:, 1].float(),
                          shift_y=self._chosen[:, 2].float())
        return info

    def describe_budget(self) -> str:
        shift = f"±{self.max_shift} px{in_mm(self.max_shift, self.mm_per_px)}"
        return (f"rotation within ±{self.max_angle:g}° ({self.angles} angles) and shifts within {shift} "
                "along each axis; grey levels are moved, not changed")

    def describe_change(self, info: AttackInfo, index: int) -> Optional[str]:
        angle = float(info.extra["angle"][index])
        right, down = int(info.extra["shift_x"][index]), int(info.extra["shift_y"][index])
        if angle == 0 and right == 0 and down == 0:
            return "No rotation or shift of the grid did better than the scan as it is; it is unchanged."
        moves = [f"{abs(value)} px {word[value > 0]}{in_mm(abs(value), self.mm_per_px)}"
                 for value, word in ((right, ("left", "right")), (down, ("up", "down"))) if value]
        way = "counter-clockwise" if angle > 0 else "clockwise"
        done = [f"rotated {abs(angle):.1f}° {way}"] if angle else []
        if moves:
            done.append(f"shifted {' and '.join(moves)}")
        return f"The scan was {' and '.join(done)}: grey levels moved, none altered."

    def within_budget(self, x: torch.Tensor, x_adv: torch.Tensor, info: AttackInfo) -> torch.Tensor:
        """Each result is ``x`` moved by its recorded angle and shift, and those lie within the budget."""
        angle, right, down = (info.extra[key].double() for key in ("angle", "shift_x", "shift_y"))
        inside = (angle.abs() <= self.max_angle + 1e-6) & (right.abs() <= self.max_shift) & (
            down.abs() <= self.max_shift)
        redone = warp(x.float(), angle, torch.stack([right, down], dim=1)).clamp(0.0, 1.0)
        same = ((redone - x_adv.float()).abs().flatten(1).amax(dim=1) <= 1e-5).cpu()
        return inside & same

