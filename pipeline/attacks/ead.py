"""EAD, elastic-net attack (Chen et al. 2018, "EAD: Elastic-net attacks to deep neural networks via
adversarial examples", AAAI): CW's objective plus an L1 term, solved by (F)ISTA.

The L1 term makes the perturbation sparse: a few pixels change a lot instead of every pixel a
little, a different failure mode from the L∞ attacks. The shrinkage step, polynomially decaying
learning rate, FISTA momentum ``k / (k + 3)`` and the threshold ``beta`` (not scaled by the
learning rate) follow the authors' reference code.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from pipeline.attacks.base import Param, gradient, steps_param
from pipeline.attacks.cw import ConstantSearch, EarlyAbort, Tick, binary_search_param, c_param, lr_param
from pipeline.attacks.pgd import kappa_param
from pipeline.attacks.registry import register


def shrink(z: torch.Tensor, x: torch.Tensor, beta: float) -> torch.Tensor:
    """Soft-threshold ``z - x`` by ``beta`` and keep the result in ``[0, 1]`` (projected ISTA step)."""
    diff = z - x
    lowered = torch.where(diff < -beta, (z + beta).clamp(min=0.0), x)
    return torch.where(diff > beta, (z - beta).clamp(max=1.0), lowered)


@register
class EAD(ConstantSearch):
    """Elastic-net attack: Carlini-Wagner with an L1 term, giving sparse perturbations.

    Paper: Chen, Sharma, Zhang, Yi and Hsieh, "EAD: Elastic-Net Attacks to Deep Neural Networks via
    Adversarial Examples", AAAI 2018. https://arxiv.org/abs/1709.04114
    """

    name = "ead"
    title = "EAD (elastic-net)"
    description = ("Carlini-Wagner with an added L1 penalty, solved by iterative shrinkage: sparse "
                   "perturbations that change few pixels.")
    c: float
    kappa: float
    beta: float
    steps: int
    lr: float
    binary_search_steps: int
    decision_rule: str
    fista: bool
    params = (
        c_param(), kappa_param(0.0),
        Param("beta", float, 1e-3, "weight of the L1 term: larger gives sparser perturbations",
              low=0.0, high=1.0),
        steps_param(100), lr_param(0.01), binary_search_param(),
        Param("decision_rule", str, "en", "which fooling point counts as smallest: elastic-net or L1 size",
              choices=("en", "l1")),
        Param("fista", bool, True, "FISTA momentum (faster convergence; one extra forward pass a step)"),
    )

    def distance(self, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss term ``beta * L1 + L2^2``, the size the decision rule ranks by)."""
        flat = delta.flatten(1)
        l1, l2_squared = flat.abs().sum(1), flat.pow(2).sum(1)
        elastic = self.beta * l1 + l2_squared
        return elastic, elastic if self.decision_rule == "en" else l1

    def _optimise(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
                  c: torch.Tensor, steps: int, tick: Tick) -> torch.Tensor:
        found = torch.zeros_like(c, dtype=torch.bool)
        abort = EarlyAbort(steps, 1, x.device)  # one row: the batch's summed loss, as in Carlini's code
        current, slack = x.clone(), x.clone()

        def offer(point: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
            """Bookkeeping at ``point``; returns its loss for the early abort."""
            nonlocal found
            elastic, size = self.distance(point - x)
            found |= self.keep(point, logits, size, y, target)
            self.record(logits, y)
            return elastic + self.penalty(logits, y, target, c)

        for step in range(steps):
            grad, logits = gradient(model, slack, self.penalty, y, target, c)
            if not self.fista:
                loss = offer(slack, logits)  # without momentum the slack point is the iterate
            rate = self.lr * (1 - step / steps) ** 0.5
            new = shrink(slack - rate * (grad + 2 * (slack - x)), x, self.beta)
            slack = new + step / (step + 3) * (new - current) if self.fista else new
            current = new
            if self.fista:
                with torch.no_grad():
                    loss = offer(current, model(current))
            tick(step + 1)
            if abort.due(step) and bool(abort.stalled(loss.sum()[None]).all()):
                break
        if not self.fista:
            with torch.no_grad():
                offer(current, model(current))
        return found
