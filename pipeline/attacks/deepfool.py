"""DeepFool (Moosavi-Dezfooli et al. 2016): the smallest L2 step to the nearest linearised decision boundary.

Repeats "linearise the classifier here, jump to the closest boundary" until the prediction flips.
Batched: each step runs one forward pass on the scans not yet flipped and one backward pass per
other class (two for three classes), where torchattacks loops over scans one at a time.
The overshoot scales the accumulated step, as in the authors' code.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from pipeline.attacks.base import Attack, Param, steps_param
from pipeline.attacks.pgd import per_sample
from pipeline.attacks.registry import register
from pipeline.progress import ProgressCallback, report


@register
class DeepFool(Attack):
    """DeepFool: steps to the nearest linearised decision boundary, a minimal L2 perturbation.

    Paper: Moosavi-Dezfooli, Fawzi and Frossard, "DeepFool: a simple and accurate method to fool deep
    neural networks", CVPR 2016. https://arxiv.org/abs/1511.04599
    """

    name = "deepfool"
    title = "DeepFool (minimal L2)"
    description = ("Walks to the nearest decision boundary of the locally linearised model: a small L2 "
                   "perturbation that just flips the prediction, a measure of how close the boundary is.")
    steps: int
    overshoot: float
    params = (steps_param(50),
              Param("overshoot", float, 0.02, "how far past the estimated boundary to step (fraction)",
                    low=0.0, high=10.0))

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
             progress: Optional[ProgressCallback]) -> torch.Tensor:
        x_adv, total_step = x.clone(), torch.zeros_like(x)
        latest: Optional[torch.Tensor] = None  # every sample's logits at its current point, for the trace
        active = torch.arange(x.shape[0], device=x.device)
        for step in range(self.steps):
            point = x_adv[active].requires_grad_(True)
            with torch.enable_grad():
                logits = model(point)
                latest = logits.detach() if latest is None else latest.index_copy(0, active, logits.detach())
                self.record(latest, y)
                labels = y[active]
                unflipped = logits.argmax(1) == labels
                if not bool(unflipped.any()):
                    break
                # f_k - f_y and its gradient for every other class k (the other classes in a fixed order).
                classes = logits.shape[1]
                others = (labels[:, None] + torch.arange(1, classes, device=x.device)) % classes
                gaps = logits.gather(1, others) - logits.gather(1, labels[:, None])
                grads = torch.stack([
                    torch.autograd.grad(gaps[:, k].sum(), point, retain_graph=k < classes - 2)[0]
                    for k in range(classes - 1)
                ], dim=1)
            gaps = gaps.detach()
            norms = grads.flatten(2).norm(dim=2).clamp_min(1e-12)
            nearest = (gaps.abs() / norms).argmin(dim=1, keepdim=True)
            gap = gaps.gather(1, nearest).squeeze(1)
            norm = norms.gather(1, nearest).squeeze(1)
            direction = grads[torch.arange(len(active), device=x.device), nearest.squeeze(1)]
            move = per_sample((gap.abs() + 1e-4) / norm**2, direction) * direction
            active = active[unflipped]
            total_step[active] += move[unflipped]
            x_adv[active] = (x[active] + (1 + self.overshoot) * total_step[active]).clamp(0.0, 1.0)
            report(progress, step + 1, self.steps, f"deepfool: step {step + 1}, {len(active)} scans to go")
        report(progress, self.steps, self.steps, "deepfool: done")
        return x_adv
