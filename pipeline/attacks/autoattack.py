"""An AutoAttack-style ensemble (Croce & Hein 2020): diverse attacks in a row, the worst case per scan.

APGD-CE, APGD-DLR (3- and 2-class safe), targeted APGD-DLR over the other classes, then the
score-based Square attack, which catches gradient masking the white-box members would miss. As
in AutoAttack, each member only sees the scans still classified correctly, so the ensemble costs
little more than its first member on an undefended model and is never weaker than any member.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import torch
from torch import nn

from pipeline.attacks.base import Attack, AttackInfo, Param, eps_param, seed_param, steps_param
from pipeline.attacks.losses import ce_loss, fooled
from pipeline.attacks.pgd import restarts_param
from pipeline.attacks.registry import get_attack, register
from pipeline.attacks.worst_case import WorstCase
from pipeline.progress import ProgressCallback, report


@register
class AutoAttack(Attack):
    """AutoAttack: APGD-CE, APGD-T and Square in turn; per scan the first success is kept.

    Paper: Croce and Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020. https://arxiv.org/abs/2003.01690
    """

    name = "autoattack"
    title = "AutoAttack (ensemble)"
    family = "ensemble"
    norm = "linf"
    description = ("APGD-CE, APGD-DLR, targeted APGD and Square in turn, each on the scans the previous "
                   "ones left standing: the standard reliable robustness evaluation.")
    eps: float
    steps: int
    restarts: int
    n_queries: int
    square: bool
    seed: int
    params = (
        eps_param(), steps_param(20), restarts_param(),
        Param("n_queries", int, 1000, "Square attack's query budget per scan (AutoAttack uses 5,000)",
              low=1, high=100_000),
        Param("square", bool, True, "finish with the black-box Square attack (a check for gradient masking)"),
        seed_param(),
    )

    def members(self) -> list[Attack]:
        """The ensemble, in the order it runs (attacks are looked up by name, so each stays in its module)."""
        gradient_based = dict(eps=self.eps, steps=self.steps, restarts=self.restarts, seed=self.seed)
        chosen = [get_attack("apgd", **gradient_based), get_attack("apgd-dlr", **gradient_based),
                  get_attack("apgd-t", **gradient_based)]
        if self.square:
            chosen.append(get_attack("square", eps=self.eps, n_queries=self.n_queries, seed=self.seed))
        return chosen

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
             progress: Optional[ProgressCallback]) -> torch.Tensor:
        members = self.members()
        everyone = torch.arange(x.shape[0], device=x.device)
        with torch.no_grad():
            logits = model(x)
        self.record(logits, y)
        worst = WorstCase(x)
        worst.update(everyone, x, ce_loss(logits, y), fooled(logits, y, None))
        # Per scan: which member fooled it (-1: none so far; len(members): misclassified when clean).
        broken_by = torch.where(worst.success, len(members), -1)
        total = 100 * len(members)
        for number, member in enumerate(members):
            index = worst.remaining()
            if index.numel() == 0:
                break
            result, info = member(model, x[index], y[index], return_info=True,
                                  progress=partial(self._member_progress, progress, number, total))
            success = info.success.to(x.device)
            worst.update(index, result, info.loss.to(x.device), success)
            broken_by[index] = torch.where(success, number, broken_by[index])
            if self._tracing:  # true-class probability of every scan's worst case so far
                self._trace.append(torch.exp(-worst.loss))
        report(progress, total, total, "autoattack: done")
        names = [member.name for member in members] + ["clean"]
        self._broken_by = [names[k] if k >= 0 else None for k in broken_by.tolist()]
        return worst.x

    @staticmethod
    def _member_progress(progress: Optional[ProgressCallback], number: int, total: int, done: int, steps: int,
                         message: str) -> None:
        """Map member ``number``'s own progress onto its hundredth-share of the ensemble's bar."""
        report(progress, int(100 * (number + (done / steps if steps else 0.0))), total, message)

    def _measure(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                 target: Optional[torch.Tensor]) -> AttackInfo:
        """Adds ``extra["broken_by"]``: per scan, the member that fooled it, "clean" or None (robust)."""
        info = super()._measure(model, x, x_adv, y, target)
        info.extra["broken_by"] = self._broken_by
        return info
