"""Adversarial patch: one small square of any grey levels, its place and content chosen per scan.

An attacker who can paint a small area of a scan (a marker, a burned-in annotation, a device) need
not keep every pixel close to the original: the budget is the patch's area, not a grey-level
distance, so it is given in pixels (and mm with the scan's pixel spacing) and the attack has no
``eps``. As in LaVAN (Karmon et al. 2018), the patch's content is optimised by gradient steps with
everything outside it untouched; its place is chosen among the ``locations`` squares where the
loss gradient of the clean scan is largest (distinct squares, not overlapping), each optimised,
and the worst kept per scan. Brown et al. (2017) made the patch universal and printable; here it
is per scan, the stronger, digital threat.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.attacks.base import Attack, AttackInfo, Param, gradient, seed_param, steps_param
from pipeline.attacks.losses import ce_loss, fooled
from pipeline.attacks.registry import register
from pipeline.attacks.spatial import in_mm, spacing_param
from pipeline.attacks.square import square_masks
from pipeline.attacks.worst_case import WorstCase
from pipeline.errors import AttackParameterError
from pipeline.progress import ProgressCallback, report


def salient_squares(saliency: torch.Tensor, side: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per scan, the top-left corners (rows, columns: int ``[count, N]``) of the ``count`` squares of
    ``side`` pixels with the largest summed ``saliency`` ``[N, 1, H, W]``, greedily, each new square
    overlapping none chosen before (when the scan has room; else the best square is repeated)."""
    scores = F.avg_pool2d(saliency, side, stride=1).flatten(1)  # [N, (H - side + 1) * (W - side + 1)]
    columns = saliency.shape[-1] - side + 1
    rows_all = torch.arange(scores.shape[1], device=scores.device) // columns
    cols_all = torch.arange(scores.shape[1], device=scores.device) % columns
    tops: list[torch.Tensor] = []
    lefts: list[torch.Tensor] = []
    for _ in range(count):
        room = torch.isfinite(scores).any(dim=1)
        best = scores.argmax(dim=1)
        top, left = rows_all[best], cols_all[best]
        if tops:  # no room left for a new square: repeat the best one
            top, left = torch.where(room, top, tops[0]), torch.where(room, left, lefts[0])
        tops.append(top)
        lefts.append(left)
        overlap = ((rows_all[None] - top[:, None]).abs() < side) & (
            (cols_all[None] - left[:, None]).abs() < side)
        scores = scores.masked_fill(overlap, float("-inf"))
    return torch.stack(tops), torch.stack(lefts)


@register
class Patch(Attack):
    """Adversarial patch: a ``size`` x ``size`` square of free grey levels, placed and filled per scan.

    ``extra`` holds where each scan's patch went: ``patch_top`` and ``patch_left`` (int ``[N]``, the
    top-left pixel's row and column) and ``patch_size`` (pixels). Costs ``locations * steps``
    gradients per scan.

    Paper: Karmon, Zoran and Goldberg, "LaVAN: Localized and Visible Adversarial Noise", ICML 2018.
    https://arxiv.org/abs/1801.02608 (after Brown, Mané, Roy, Abadi and Gilmer, "Adversarial Patch",
    2017, https://arxiv.org/abs/1712.09665)
    """

    name = "patch"
    title = "Adversarial patch (square, placed and filled per scan)"
    family = "white-box"
    norm = "l0"
    budget_units = "pixels (the side of the square patch)"
    bound = ("differs from ``x`` only inside one square of ``size`` x ``size`` pixels, where it may take "
             "any grey level: not a norm ball, an area budget in pixels (an L0 attack of one contiguous "
             "square)")
    supports_target = True
    description = ("Pastes one small square whose grey levels are optimised by gradient steps, at the "
                   "place among the most salient squares that hurts most; the rest of the scan is untouched.")
    size: int
    locations: int
    steps: int
    alpha: float
    seed: int
    mm_per_px: Optional[float]
    params = (
        Param("size", int, 8, "side of the square patch in pixels", low=1, high=512),
        Param("locations", int, 4, "places tried per scan: the squares where the loss gradient is largest",
              low=1, high=64),
        steps_param(40),
        Param("alpha", float, 8 / 255, "change of the patch's grey levels per step (image scale)",
              low=1 / 255, high=1.0, grey_levels=True),
        seed_param(),
        spacing_param(),
    )

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
             progress: Optional[ProgressCallback]) -> torch.Tensor:
        n, _, height, width = x.shape
        if self.size > min(height, width):
            raise AttackParameterError(
                f"the patch ({self.size} px a side) does not fit the {height}x{width}-pixel scan; choose a "
                f"size of at most {min(height, width)}"
            )
        grad, logits = gradient(model, x, ce_loss, y, target)
        self.record(logits, y)
        tops, lefts = salient_squares(grad.abs().sum(dim=1, keepdim=True), self.size, self.locations)
        k = self.locations
        masks = square_masks(tops.flatten(), lefts.flatten(), self.size, height, width)  # [k * N, 1, H, W]
        base = x.repeat(k, 1, 1, 1)
        labels = y.repeat(k)
        goal = None if target is None else target.repeat(k)
        generator = self.generator(x.device)
        content = torch.rand(base.shape, generator=generator, device=x.device, dtype=x.dtype)
        worst = WorstCase(x)
        best_logits = logits.clone()
        everyone = torch.arange(n, device=x.device)
        place = torch.zeros(n, 2, dtype=torch.long, device=x.device)
        for step in range(self.steps + 1):
            patched = torch.where(masks, content, base)
            if step < self.steps:
                grad, logits = gradient(model, patched, ce_loss, labels, goal)
            else:  # the last content, measured without a gradient
                with torch.no_grad():
                    logits = model(patched)
            losses, success = ce_loss(logits, labels, goal), fooled(logits, labels, goal)
            for j in range(k):
                part = slice(j * n, (j + 1) * n)
                kept = worst.update(everyone, patched[part], losses[part], success[part])
                best_logits = torch.where(kept[:, None], logits[part], best_logits)
                place = torch.where(kept[:, None], torch.stack([tops[j], lefts[j]], dim=1), place)
            if step == self.steps:
                break
            if step:
                self.record(best_logits, y)
            content = (content + self.alpha * grad.sign()).clamp(0.0, 1.0)
            report(progress, step + 1, self.steps,
                   f"patch: step {step + 1}, {int(worst.success.sum())}/{n} fooled")
        self._place = place.cpu()
        return worst.x

    def _measure(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                 target: Optional[torch.Tensor]) -> AttackInfo:
        """Adds ``extra``'s ``patch_top``, ``patch_left`` (int ``[N]``) and ``patch_size``."""
        info = super()._measure(model, x, x_adv, y, target)
        info.extra.update(patch_top=self._place[:, 0], patch_left=self._place[:, 1], patch_size=self.size)
        return info

    def describe_budget(self) -> str:
        return (f"one square patch of {self.size}×{self.size} px{in_mm(self.size, self.mm_per_px)} a side, "
                "any grey levels inside it, nothing changed outside")

    def describe_change(self, info: AttackInfo, index: int) -> Optional[str]:
        top, left = int(info.extra["patch_top"][index]), int(info.extra["patch_left"][index])
        return (f"A patch of {self.size}×{self.size} pixels{in_mm(self.size, self.mm_per_px)} at row {top}, "
                f"column {left} replaces those pixels with grey levels of the attack's choosing; no pixel "
                "outside it changed.")

    def within_budget(self, x: torch.Tensor, x_adv: torch.Tensor, info: AttackInfo) -> torch.Tensor:
        """Every changed pixel lies inside the recorded ``size`` x ``size`` square, which fits the scan."""
        height, width = x.shape[-2:]
        top, left = info.extra["patch_top"].to(x.device), info.extra["patch_left"].to(x.device)
        fits = (top >= 0) & (left >= 0) & (top + self.size <= height) & (left + self.size <= width)
        outside = ~square_masks(top, left, self.size, height, width)
        changed = ((x_adv - x).abs() > 1e-6) & outside
        return (fits & ~changed.flatten(1).any(dim=1)).cpu()
