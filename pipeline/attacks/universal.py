"""Universal adversarial perturbation (Moosavi-Dezfooli et al., 2017): one pattern for many scans.

A per-scan attack needs the scan; a universal perturbation is computed once and fools scans it has
never seen, the threat a tampered scanner pipeline would pose. This computes ONE delta for the whole
batch passed in, by stochastic PGD on the shared delta (Shafahi et al., 2020): minibatches of the
batch in random order, a signed-gradient step on the summed margin loss, projection onto the L∞
ball. The margin is clamped at ``-kappa`` so scans already fooled with room to spare stop pulling
and the others get the steps. The delta that fools most of the batch is kept.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from pipeline.attacks.base import Attack, Param, eps_param, gradient, seed_param, steps_param
from pipeline.attacks.objectives import margin
from pipeline.attacks.registry import register
from pipeline.guard import exclusive_eval
from pipeline.progress import ProgressCallback, report


@register
class UniversalPerturbation(Attack):
    """Universal adversarial perturbation: one perturbation that fools the model on many scans.

    Paper: Moosavi-Dezfooli, Fawzi, Fawzi and Frossard, "Universal adversarial perturbations", CVPR
    2017. https://arxiv.org/abs/1610.08401
    """

    name = "uap"
    title = "Universal adversarial perturbation (one delta for the batch)"
    family = "white-box"
    norm = "linf"
    description = (
        "Computes ONE perturbation for all the scans passed in together and adds it to each of them. "
        "Attack a set of scans at once to see how far a single pattern goes."
    )
    eps: float
    alpha: float
    steps: int
    batch_size: int
    kappa: float
    seed: int
    params = (
        eps_param(default=8 / 255),
        Param("alpha", float, 1 / 255, "step size of each update of the shared delta (image scale)",
              low=1e-5, high=64 / 255, grey_levels=True),
        steps_param(10, high=1000),
        Param("batch_size", int, 16, "scans per update of the shared delta", low=1, high=4096),
        Param("kappa", float, 1.0, "logit margin beyond the boundary at which a fooled scan stops pulling",
              low=0.0, high=100.0),
        seed_param(),
    )

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
             progress: Optional[ProgressCallback]) -> torch.Tensor:
        return x + self.delta(model, x, y, progress)

    def delta(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
              progress: Optional[ProgressCallback] = None) -> torch.Tensor:
        """The shared perturbation ``[1, C, H, W]`` (within ``eps``) that fools most of ``x``."""
        generator = self.generator(x.device)
        delta = torch.zeros((1, *x.shape[1:]), device=x.device, dtype=x.dtype)
        best, best_fooled, best_margin = delta.clone(), -1, float("inf")
        self.record(self._logits(model, x), y)
        for step in range(self.steps):
            order = torch.randperm(x.shape[0], generator=generator, device=x.device)
            for batch in order.split(self.batch_size):
                grad, _ = gradient(model, (x[batch] + delta).clamp(0.0, 1.0), self._loss, y[batch])
                delta = (delta - self.alpha * grad.sum(dim=0, keepdim=True).sign()).clamp(-self.eps, self.eps)
            logits = self._logits(model, (x + delta).clamp(0.0, 1.0))
            gaps = margin(logits, y)
            fooled, mean_gap = int((gaps <= 0).sum()), float(gaps.mean())
            if (fooled, -mean_gap) > (best_fooled, -best_margin):
                best, best_fooled, best_margin = delta.clone(), fooled, mean_gap
            self.record(logits, y)
            report(progress, step + 1, self.steps, f"pass {step + 1}: {fooled}/{x.shape[0]} fooled")
        return best

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return margin(logits, y).clamp_min(-self.kappa)

    @torch.no_grad()
    def _logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([model(chunk) for chunk in x.split(self.batch_size)])


def universal_perturbation(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                           progress: Optional[ProgressCallback] = None, **params: Any) -> torch.Tensor:
    """ONE perturbation ``[1, 1, H, W]`` for all of ``x``; ``params`` as for ``get_attack("uap")``.

    Add it to any scan (and clamp to ``[0, 1]``) to apply it, also to scans it was not computed on.
    """
    attack = UniversalPerturbation(**params)
    checked, y, _ = attack.check_inputs(model, x, y)
    with exclusive_eval(model):
        return attack.delta(model, checked.detach(), y, progress).to(x.dtype)
