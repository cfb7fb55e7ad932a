"""The iterative gradient family: BIM, PGD (L∞ and L2), MI-FGSM and CW-L∞, one loop for all.

They differ only in where they start, how a gradient becomes a step, and which loss they climb,
so :class:`IterativeAttack` runs the loop once and each attack overrides one of those three.
The loop reuses the logits of each gradient step for the trace and the worst-case bookkeeping:
``steps`` forward+backward passes and one final forward, nothing more.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.attacks.base import Attack, Param, eps_param, gradient, seed_param, steps_param
from pipeline.attacks.losses import ce_loss, cw_loss, fooled
from pipeline.attacks.registry import register
from pipeline.attacks.worst_case import WorstCase
from pipeline.progress import ProgressCallback, report


def alpha_param(high: float = 64 / 255, grey_levels: bool = True, unset: str = "eps/4",
                what: str = "step size per iteration") -> Param:
    return Param("alpha", float, None, f"{what} (image scale); unset: {unset}",
                 low=0.0, high=high, grey_levels=grey_levels)


def random_start_param() -> Param:
    return Param("random_start", bool, True, "start from a uniformly random point inside the ball")


def restarts_param() -> Param:
    return Param("restarts", int, 1,
                 "independent runs, each from a random start, on the scans not fooled yet", low=1, high=100)


def early_stop_param() -> Param:
    return Param("early_stop", bool, False,
                 "stop stepping a scan once it is fooled: same accuracy, less work (an evaluation needs "
                 "only whether a scan can be fooled); the kept point is the first that fools, not the "
                 "strongest, and the step-by-step trace keeps every step")


def kappa_param(default: float) -> Param:
    return Param("kappa", float, default,
                 "confidence: stop pushing once the wrong class leads by this many logits",
                 low=0.0, high=1000.0)


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape ``[N]`` values to broadcast over a batch shaped like ``like``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


class IterativeAttack(Attack):
    """Repeated projected gradient steps with random starts and restarts; keeps each scan's worst case.

    Restarts after the first run only the scans not fooled yet (as AutoAttack does) and always
    start at random, so ``restarts > 1`` helps even without ``random_start``. With ``early_stop``
    a scan also leaves the batch at the step that fools it: whether each scan is fooled (hence
    accuracy and success rate) is exactly what it would be without, at a fraction of the cost on a
    model that is easy to fool.
    """

    norm = "linf"
    supports_target = True
    #: Parameters every iterative attack has (declared in each subclass's ``params``).
    eps: float
    alpha: Optional[float]
    steps: int

    def objective(self, logits: torch.Tensor, y: torch.Tensor,
                  target: Optional[torch.Tensor]) -> torch.Tensor:
        """Per-sample loss the attack climbs."""
        return ce_loss(logits, y, target)

    def succeeded(self, logits: torch.Tensor, y: torch.Tensor,
                  target: Optional[torch.Tensor]) -> torch.Tensor:
        """Bool ``[N]``: the point whose ``logits`` these are is what the attack seeks (it is kept over
        any other, and ``early_stop`` stops there). Here: the model is fooled; an attack on a detector
        too (:mod:`pipeline.attacks.adaptive`) asks that the detector let it through as well."""
        return fooled(logits, y, target)

    def direction(self, grad: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        """Turn a gradient into a step direction (``state`` persists across the steps of one run)."""
        return grad.sign()

    def ascent(self, model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
               state: dict[str, Any], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The gradient a step follows from ``x_adv``, and the logits at ``x_adv`` itself (for the trace
        and the worst case). Here the plain gradient of :meth:`objective`; the transfer family
        (:mod:`pipeline.attacks.transfer`) averages it over transformed copies and neighbours instead."""
        return gradient(model, x_adv, self.objective, y, target)

    def random_point(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A uniformly random point of the L∞ ball around ``x``."""
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
        return (x + self.eps * noise).clamp(0.0, 1.0)

    @property
    def step_size(self) -> float:
        return self.alpha if self.alpha is not None else self.eps / 4

    @property
    def starts_at_random(self) -> bool:
        return getattr(self, "random_start", False)

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
             progress: Optional[ProgressCallback]) -> torch.Tensor:
        steps, restarts = self.steps, getattr(self, "restarts", 1)
        # A trace needs every scan at every step, so the Attack page's step-by-step plot turns it off.
        stopping = getattr(self, "early_stop", False) and not self._tracing
        random_start = self.starts_at_random
        generator = self.generator(x.device)
        worst = WorstCase(x)
        index = torch.arange(x.shape[0], device=x.device)
        total = steps * restarts
        for run in range(restarts):
            if run:
                index = worst.remaining()
                if index.numel() == 0:
                    break
            start, labels = x[index], y[index]
            goal = None if target is None else target[index]
            if random_start or run:
                x_adv = self.random_point(start, generator)
            else:
                x_adv = start
            if run == 0 and random_start:
                self.record_clean(model, x, y)
            state: dict[str, Any] = {}
            for step in range(steps):
                grad, logits = self.ascent(model, x_adv, labels, goal, state, generator)
                success = self.succeeded(logits, labels, goal)
                worst.update(index, x_adv, self.objective(logits, labels, goal), success)
                if run == 0 and (step or not random_start):  # a random start is not a step
                    self.record(logits, y)
                if stopping and bool(success.any()):
                    going = ~success
                    x_adv, start, labels = x_adv[going], start[going], labels[going]
                    grad, index = grad[going], index[going]
                    goal = None if goal is None else goal[going]
                    state = {key: value[going] if isinstance(value, torch.Tensor) and value.dim() else value
                             for key, value in state.items()}
                    if index.numel() == 0:
                        break
                x_adv = self.project(start, x_adv + self.step_size * self.direction(grad, state))
                report(progress, run * steps + step + 1, total,
                       f"{self.name}: run {run + 1}, step {step + 1}")
            if index.numel() == 0:
                continue
            with torch.no_grad():
                logits = model(x_adv)
            success = self.succeeded(logits, labels, goal)
            worst.update(index, x_adv, self.objective(logits, labels, goal), success)
        report(progress, total, total, f"{self.name}: done")
        return worst.x


@register
class PGD(IterativeAttack):
    """Projected gradient descent in the L∞ ball, from a random start, with restarts.

    Paper: Madry, Makelov, Schmidt, Tsipras and Vladu, "Towards Deep Learning Models Resistant to
    Adversarial Attacks", ICLR 2018. https://arxiv.org/abs/1706.06083
    """

    name = "pgd"
    title = "PGD (L∞)"
    description = ("Projected gradient descent (Madry et al. 2018): signed gradient steps from a random "
                   "start, projected back into the L∞ ball; the standard first-order attack.")
    random_start: bool
    restarts: int
    seed: int
    early_stop: bool
    params = (eps_param(), alpha_param(), steps_param(10), random_start_param(), restarts_param(),
              seed_param(), early_stop_param())


@register
class PGDKL(IterativeAttack):
    """TRADES' inner maximisation (Zhang et al. 2019): PGD on KL(clean prediction || prediction).

    It needs no label: it pushes the prediction away from whatever the model says about the clean
    scan, which is exactly what TRADES' robustness term penalises. It starts a hair (0.001) from
    the scan, as the paper does, because at the scan itself the divergence and its gradient are zero.

    Paper: Zhang, Yu, Jiao, Xing, El Ghaoui and Jordan, "Theoretically Principled Trade-off between
    Robustness and Accuracy", ICML 2019. https://arxiv.org/abs/1901.08573
    """

    name = "pgd-kl"
    title = "PGD on the KL divergence (TRADES)"
    description = ("PGD that maximises the KL divergence between the clean and the attacked prediction, "
                   "as TRADES trains against; it moves the prediction whether or not it was right.")
    seed: int
    params = (eps_param(), alpha_param(), steps_param(10), seed_param())
    supports_target = False

    @property
    def starts_at_random(self) -> bool:
        return True

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
             progress: Optional[ProgressCallback]) -> torch.Tensor:
        with torch.no_grad():
            self._clean_log_probs = F.log_softmax(model(x).float(), dim=1)
        return super()._run(model, x, y, target, progress)

    def objective(self, logits: torch.Tensor, y: torch.Tensor,
                  target: Optional[torch.Tensor]) -> torch.Tensor:
        clean = self._clean_log_probs
        return (clean.exp() * (clean - F.log_softmax(logits.float(), dim=1))).sum(dim=1)

    def random_point(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return self.project(x, x + 0.001 * noise)


@register
class BIM(IterativeAttack):
    """Basic iterative method: repeated FGSM steps from the scan itself, clipped to the ball.

    Paper: Kurakin, Goodfellow and Bengio, "Adversarial examples in the physical world", ICLR workshop
    2017. https://arxiv.org/abs/1607.02533
    """

    name = "bim"
    title = "BIM / I-FGSM"
    description = "Basic iterative method (Kurakin et al. 2017): PGD without a random start."
    early_stop: bool
    params = (eps_param(), alpha_param(), steps_param(10), early_stop_param())


@register
class PGDL2(IterativeAttack):
    """Projected gradient descent in the L2 ball: normalised gradient steps.

    Paper: Madry, Makelov, Schmidt, Tsipras and Vladu, "Towards Deep Learning Models Resistant to
    Adversarial Attacks", ICLR 2018. https://arxiv.org/abs/1706.06083
    """

    name = "pgdl2"
    title = "PGD (L2)"
    norm = "l2"
    description = ("PGD in the L2 ball: steps along the normalised gradient, so the change may concentrate "
                   "on few pixels instead of spreading evenly.")
    random_start: bool
    restarts: int
    seed: int
    early_stop: bool
    params = (
        Param("eps", float, 0.5, "largest L2 norm of the whole perturbation (image scale)",
              low=0.0, high=100.0),
        alpha_param(high=100.0, grey_levels=False),
        steps_param(10), random_start_param(), restarts_param(), seed_param(), early_stop_param(),
    )

    def direction(self, grad: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        return grad / per_sample(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad)

    def random_point(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A random direction at a uniformly random radius up to ``eps`` (as torchattacks' PGDL2)."""
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        radius = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype) * self.eps
        noise = noise * per_sample(radius / noise.flatten(1).norm(dim=1).clamp_min(1e-12), x)
        return (x + noise).clamp(0.0, 1.0)


@register
class MIFGSM(IterativeAttack):
    """Momentum iterative FGSM: signed steps along an accumulated, normalised gradient.

    Paper: Dong, Liao, Pang, Su, Zhu, Hu and Li, "Boosting Adversarial Attacks with Momentum", CVPR
    2018. https://arxiv.org/abs/1710.06081
    """

    name = "mifgsm"
    title = "MI-FGSM"
    transfer_oriented = True
    description = ("Momentum iterative FGSM (Dong et al. 2018): accumulates L1-normalised gradients, which "
                   "stabilises the direction and transfers better to other models.")
    decay: float
    early_stop: bool
    params = (eps_param(), alpha_param(), steps_param(10),
              Param("decay", float, 1.0, "momentum factor: weight of the accumulated past gradients",
                    low=0.0, high=10.0), early_stop_param())

    def direction(self, grad: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        scale = per_sample(grad.abs().flatten(1).mean(dim=1).clamp_min(1e-12), grad)
        momentum = grad / scale + self.decay * state.get("momentum", 0.0)
        state["momentum"] = momentum
        return momentum.sign()


@register
class CWLinf(IterativeAttack):
    """CW-L∞: PGD in the L∞ ball on the Carlini-Wagner margin loss (not CW-L2, which is ``cw``).

    Paper: Carlini and Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017.
    https://arxiv.org/abs/1608.04644
    """

    name = "cw-linf"
    title = "CW-L∞ (PGD on the CW margin)"
    description = ("PGD climbing the Carlini-Wagner logit margin instead of cross-entropy; the margin does "
                   "not saturate, so it still has a useful gradient where cross-entropy is flat.")
    random_start: bool
    restarts: int
    kappa: float
    seed: int
    early_stop: bool
    params = (eps_param(), alpha_param(), steps_param(10), random_start_param(), restarts_param(),
              kappa_param(50.0), seed_param(), early_stop_param())

    def objective(self, logits: torch.Tensor, y: torch.Tensor,
                  target: Optional[torch.Tensor]) -> torch.Tensor:
        return cw_loss(logits, y, target, self.kappa)
