"""Carlini-Wagner L2 (Carlini & Wagner 2017, "Towards evaluating the robustness of neural networks").

Minimises ``distance + c * f`` with ``f`` the CW margin, for the smallest perturbation that still
fools the model. The trade-off ``c`` is bisected per scan over ``binary_search_steps`` rounds, as
in the paper (torchattacks keeps one fixed ``c``); each round stops early once the loss no longer
falls. :class:`ConstantSearch` holds the bisection and the best-so-far bookkeeping, shared with EAD.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import torch
from torch import nn

from pipeline.attacks.base import Attack, Param, steps_param
from pipeline.attacks.losses import cw_loss
from pipeline.attacks.pgd import kappa_param, per_sample
from pipeline.attacks.registry import register
from pipeline.progress import ProgressCallback, report

Tick = Callable[[int], None]


def c_param() -> Param:
    return Param("c", float, 1.0, "starting weight of the misclassification term against the distance",
                 low=1e-6, high=1e6)


def binary_search_param() -> Param:
    return Param("binary_search_steps", int, 5,
                 "rounds of per-scan bisection over c (each round up to `steps` iterations)", low=1, high=30)


def lr_param(default: float) -> Param:
    return Param("lr", float, default, "learning rate of the optimiser", low=1e-6, high=10.0)


class EarlyAbort:
    """Carlini's early abort: every tenth of a round, stop when the loss fell by less than 0.01%.

    Reads the loss back from the device only at those checks, ten times a round.
    """

    def __init__(self, steps: int) -> None:
        self.every = max(steps // 10, 1)
        self.previous = float("inf")

    def __call__(self, step: int, loss: torch.Tensor) -> bool:
        if step % self.every:
            return False
        current = float(loss.sum())
        stop = current > self.previous - 1e-4 * abs(self.previous)  # the loss may be negative when kappa > 0
        self.previous = current
        return stop


class ConstantSearch(Attack):
    """Attacks that trade a distance against ``c`` times the CW margin, bisecting ``c`` per sample."""

    supports_target = True

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
             progress: Optional[ProgressCallback]) -> torch.Tensor:
        c = torch.full((x.shape[0],), self.c, device=x.device, dtype=x.dtype)
        low, high = torch.zeros_like(c), torch.full_like(c, float("inf"))
        self.best, self.best_distance = x.clone(), torch.full_like(c, float("inf"))
        total = self.binary_search_steps * self.steps
        self.record_clean(model, x, y)
        for round_ in range(self.binary_search_steps):
            tick = partial(self._tick, progress, round_, total)
            found = self._optimise(model, x, y, target, c, tick)
            # Fooled at c: try a smaller c; not fooled: a larger one (times ten until bracketed).
            high = torch.where(found, torch.minimum(high, c), high)
            low = torch.where(found, low, torch.maximum(low, c))
            c = torch.where(torch.isfinite(high), (low + high) / 2, c * 10)
        report(progress, total, total, f"{self.name}: done")
        return self.best

    def _tick(self, progress: Optional[ProgressCallback], round_: int, total: int, step: int) -> None:
        report(progress, round_ * self.steps + step, total, f"{self.name}: round {round_ + 1}, step {step}")

    def _optimise(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
                  c: torch.Tensor, tick: Tick) -> torch.Tensor:
        """One round at the per-sample constants ``c``; returns which samples it fooled."""
        raise NotImplementedError

    def penalty(self, logits: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
                c: torch.Tensor) -> torch.Tensor:
        """``c * f``: CW's margin term, zero gradient once the wrong class leads by ``kappa``."""
        return -c * cw_loss(logits, y, target, self.kappa)

    def keep(self, candidate: torch.Tensor, logits: torch.Tensor, distance: torch.Tensor, y: torch.Tensor,
             target: Optional[torch.Tensor]) -> torch.Tensor:
        """Keep ``candidate`` where it fools by ``kappa`` at a smaller distance; return whom it fools."""
        fooled = cw_loss(logits, y, target) > self.kappa
        better = fooled & (distance < self.best_distance)
        self.best = torch.where(per_sample(better, candidate), candidate, self.best)
        self.best_distance = torch.where(better, distance, self.best_distance)
        return fooled



@register
class CW(ConstantSearch):
    name = "cw"
    title = "Carlini-Wagner L2"
    description = ("Optimises in tanh space for the smallest L2 change that fools the model, bisecting the "
                   "trade-off c per scan; a scan it cannot fool is returned unchanged.")
    params = (c_param(), kappa_param(0.0), steps_param(50), lr_param(0.01), binary_search_param())

    def _optimise(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
                  c: torch.Tensor, tick: Tick) -> torch.Tensor:
        w = torch.atanh((2 * x - 1).clamp(-1 + 1e-6, 1 - 1e-6)).requires_grad_(True)  # start at the scan
        optimiser = torch.optim.Adam([w], lr=self.lr)
        found = torch.zeros_like(c, dtype=torch.bool)
        abort = EarlyAbort(self.steps)
        for step in range(self.steps):
            with torch.enable_grad():
                x_adv = (torch.tanh(w) + 1) / 2
                logits = model(x_adv)
                distance = (x_adv - x).flatten(1).pow(2).sum(1)
                loss = distance + self.penalty(logits, y, target, c)
                optimiser.zero_grad(set_to_none=True)
                loss.sum().backward()
            optimiser.step()
            found |= self.keep(x_adv.detach(), logits.detach(), distance.detach(), y, target)
            self.record(logits, y)
            tick(step + 1)
            if abort(step, loss.detach()):
                break
        return found
