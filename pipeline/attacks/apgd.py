"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", ICML): PGD with momentum and a step size that halves by itself.

No step size to tune, which is why AutoAttack builds on it. Three forms: cross-entropy (``apgd``),
the DLR loss (``apgd-dlr``, see :func:`pipeline.attacks.losses.dlr_loss` for the 2- and 3-class
adaptation) and targeted DLR over the most likely other classes (``apgd-t``). Like PGD, each run
costs ``steps`` forward+backward passes and one forward: the last point needs no gradient.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, ClassVar, Literal, Optional

import torch
from torch import nn

from pipeline.attacks.base import Attack, Param, eps_param, gradient, seed_param, steps_param
from pipeline.attacks.losses import ce_loss, dlr_loss, dlr_scale, fooled
from pipeline.attacks.pgd import per_sample, restarts_param
from pipeline.attacks.registry import register
from pipeline.attacks.worst_case import WorstCase
from pipeline.progress import ProgressCallback, report


@register
class APGD(Attack):
    """Auto-PGD on the cross-entropy: step size halved when progress stalls, momentum, restarts.

    Paper: Croce and Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020. https://arxiv.org/abs/2003.01690
    """

    name = "apgd"
    title = "APGD-CE"
    norm = "linf"
    supports_target = True
    description = ("Auto-PGD on cross-entropy: momentum plus a step size that halves whenever progress "
                   "stalls, so there is no step size to tune.")
    eps: float
    steps: int
    restarts: int
    rho: float
    seed: int
    params = (
        eps_param(), steps_param(20), restarts_param(),
        Param("rho", float, 0.75,
              "halve the step when at most this fraction of the steps since the last check raised the loss",
              low=0.0, high=1.0),
        seed_param(),
    )
    loss: ClassVar[Literal["ce", "dlr"]] = "ce"

    def objective(self, logits: torch.Tensor, y: torch.Tensor, goal: Optional[torch.Tensor],
                  scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.loss == "ce":
            return ce_loss(logits, y, goal)
        return dlr_loss(logits, y, goal, scale)

    def goals(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
              target: Optional[torch.Tensor]) -> list[Optional[torch.Tensor]]:
        """The loss targets, one entry per series of runs (None: untargeted)."""
        return [target]

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
             progress: Optional[ProgressCallback]) -> torch.Tensor:
        generator = self.generator(x.device)
        worst = WorstCase(x)
        runs = [goal for goal in self.goals(model, x, y, target) for _ in range(self.restarts)]
        total = len(runs) * self.steps
        for number, goal in enumerate(runs):
            index = torch.arange(x.shape[0], device=x.device) if number == 0 else worst.remaining()
            if index.numel() == 0:
                break
            self._climb(model, x[index], y[index], None if goal is None else goal[index],
                        None if target is None else target[index], index, worst, generator,
                        trace=number == 0, tick=partial(self._tick, progress, number, total))
        report(progress, total, total, f"{self.name}: done")
        return worst.x

    def _tick(self, progress: Optional[ProgressCallback], run: int, total: int, step: int) -> None:
        report(progress, run * self.steps + step, total, f"{self.name}: run {run + 1}, step {step}")

    def _climb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, goal: Optional[torch.Tensor],
               target: Optional[torch.Tensor], index: torch.Tensor, worst: WorstCase,
               generator: torch.Generator, trace: bool, tick: Callable[[int], None]) -> None:
        """One APGD run (Algorithm 1 of the paper) on the samples ``index``; offers every point to ``worst``.

        ``goal`` is what the loss aims at, ``target`` what counts as success (they differ for apgd-t,
        whose loss aims at one class but which succeeds on any misclassification).
        """
        eps, steps = self.eps, self.steps
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
        x_adv = self.project(x, x + eps * noise / per_sample(noise.flatten(1).abs().amax(1), x))
        if trace:
            self.record_clean(model, x, y)

        grad, logits = gradient(model, x_adv, self.objective, y, goal)
        scale = dlr_scale(logits) if self.loss == "dlr" else None
        loss = self.objective(logits, y, goal, scale)
        worst.update(index, x_adv, loss, fooled(logits, y, target))

        # The paper's checkpoints: first after 22% of the steps, then ever closer, at least 6% apart.
        interval = max(int(0.22 * steps), 1)
        shrink, shortest = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
        step_size = torch.full((x.shape[0],), 2 * eps, device=x.device, dtype=x.dtype)
        best_loss, x_best, grad_best = loss, x_adv, grad
        best_at_check, reduced_at_check = best_loss, torch.ones_like(best_loss, dtype=torch.bool)
        history, since_check, x_prev = [loss], 0, x_adv
        for i in range(steps):
            momentum = 0.75 if i else 1.0
            z = self.project(x, x_adv + per_sample(step_size, x) * grad.sign())
            moved = x_adv + momentum * (z - x_adv) + (1 - momentum) * (x_adv - x_prev)
            x_prev, x_adv = x_adv, self.project(x, moved)
            last = i == steps - 1
            if last:
                with torch.no_grad():
                    logits = model(x_adv)
            else:
                grad, logits = gradient(model, x_adv, self.objective, y, goal, scale)
            loss = self.objective(logits, y, goal, scale)
            worst.update(index, x_adv, loss, fooled(logits, y, target))
            if trace and not last:  # the scan after the last step is the attack's answer, traced once
                self.record(logits, y)
            tick(i + 1)
            if last:
                break
            improved = loss > best_loss
            x_best = torch.where(per_sample(improved, x), x_adv, x_best)
            grad_best = torch.where(per_sample(improved, x), grad, grad_best)
            best_loss = torch.where(improved, loss, best_loss)
            history.append(loss)
            since_check += 1
            if since_check == interval:
                # Halve the step where the loss rose in at most rho of the recent steps, or where the
                # best loss has not moved since a check that did not halve; restart those from their best.
                recent = torch.stack(history[-interval - 1:])
                rises = (recent[1:] > recent[:-1]).sum(0)
                reduce = (rises <= interval * self.rho) | (~reduced_at_check & (best_at_check >= best_loss))
                step_size = torch.where(reduce, step_size / 2, step_size)
                x_adv = torch.where(per_sample(reduce, x), x_best, x_adv)
                grad = torch.where(per_sample(reduce, x), grad_best, grad)
                reduced_at_check, best_at_check = reduce, best_loss
                interval, since_check = max(interval - shrink, shortest), 0


@register
class APGDDLR(APGD):
    """Auto-PGD on the difference-of-logits-ratio loss, which is invariant to the logits' scale.

    Paper: Croce and Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020. https://arxiv.org/abs/2003.01690
    """

    name = "apgd-dlr"
    title = "APGD-DLR"
    description = ("Auto-PGD on the Difference-of-Logits-Ratio loss, which ignores how the logits are "
                   "scaled and so resists models that hide behind saturated softmax outputs.")
    loss = "dlr"


@register
class APGDTargeted(APGD):
    """Targeted Auto-PGD on the DLR loss, aimed in turn at the most likely other classes.

    Paper: Croce and Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020. https://arxiv.org/abs/2003.01690
    """

    name = "apgd-t"
    title = "APGD-T (targeted DLR)"
    description = ("Targeted Auto-PGD on the DLR loss, aimed in turn at each of the most likely other "
                   "classes; only scans still classified correctly go on to the next class.")
    supports_target = False
    loss = "dlr"
    n_target_classes: int
    params = APGD.params[:-1] + (
        Param("n_target_classes", int, 9, "how many of the most likely other classes to aim at in turn",
              low=1, high=100),
        seed_param(),
    )

    @torch.no_grad()
    def goals(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
              target: Optional[torch.Tensor]) -> list[Optional[torch.Tensor]]:
        logits = model(x)
        ranked = logits.scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)
        count = min(self.n_target_classes, logits.shape[1] - 1)
        return [ranked[:, rank] for rank in range(count)]
