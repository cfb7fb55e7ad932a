"""FGSM (Goodfellow et al. 2015): one signed gradient step of size ``eps``.

Kept apart from the iterative loop on purpose: with a single step there is nothing to compare,
so it costs exactly one forward+backward pass (the loop would add a bookkeeping forward).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from pipeline.attacks.base import Attack, eps_param, gradient
from pipeline.attacks.losses import ce_loss
from pipeline.attacks.registry import register
from pipeline.progress import ProgressCallback, report


@register
class FGSM(Attack):
    """Fast gradient sign method: one step of eps along the sign of the loss gradient.

    Paper: Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015.
    https://arxiv.org/abs/1412.6572
    """

    name = "fgsm"
    title = "FGSM"
    norm = "linf"
    supports_target = True
    description = "Fast gradient sign method: one step of eps along the sign of the loss gradient."
    eps: float
    params = (eps_param(),)

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
             progress: Optional[ProgressCallback]) -> torch.Tensor:
        grad, logits = gradient(model, x, ce_loss, y, target)
        self.record(logits, y)
        report(progress, 1, 1, "fgsm: done")
        return self.project(x, x + self.eps * grad.sign())
