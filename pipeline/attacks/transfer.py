"""The transfer family: MI-FGSM's loop with pluggable gradient estimates, and R-FGSM.

Adversarial scans crafted on one model fool another more often when the gradient they follow is
less specific to the first model. Each member of the family changes only how the gradient of one
step is estimated; the loop, the momentum direction, the projection and the worst-case bookkeeping
are :class:`pipeline.attacks.pgd.MIFGSM`'s. :class:`TransferFGSM` runs the estimate, built from
four switches that compose:

- look ahead (NI): take the gradient at ``x + decay * alpha * momentum``, Nesterov's point;
- copies (DI, SI): average the gradient over transformed copies of the scan: a random resize and
  pad (DI, once per step, with probability ``diversity_prob``) or ``scales`` copies ``x / 2^i`` (SI);
- variance (VMI): add the difference between the mean gradient of ``samples`` random neighbours
  of the previous point and the gradient there;
- smoothing (TI): convolve the gradient with a Gaussian kernel, as if the gradient of every small
  shift of the scan were averaged.

Each registered attack turns on its switches and exposes their parameters. Step size: ``eps /
steps`` unless set, as these papers use, so the steps together can just reach the budget. The
trace needs the true-class probability at each iterate itself, so a member whose gradient pass
saw another point (a copy, the look-ahead) pays one more forward pass per step.

R-FGSM (Tramèr et al. 2018) is here too: one random sign step, then a gradient sign step with what
is left of the budget; it was made to defeat the gradient masking of single-step adversarial
training, and is a cheap check against it.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.attacks.base import Param, eps_param, gradient, seed_param, steps_param
from pipeline.attacks.geometry import warp
from pipeline.attacks.pgd import MIFGSM, IterativeAttack, alpha_param, early_stop_param
from pipeline.attacks.registry import register
from pipeline.errors import AttackParameterError

Transform = Callable[[torch.Tensor], torch.Tensor]


def decay_param(default: float) -> Param:
    return Param("decay", float, default, "momentum factor: weight of the accumulated past gradients "
                 "(0: no momentum)", low=0.0, high=10.0)


def transfer_alpha_param() -> Param:
    return alpha_param(unset="eps/steps, so that the steps together just reach the budget")


def gaussian_kernel(size: int, nsig: float, like: torch.Tensor) -> torch.Tensor:
    """A normalised 2-D Gaussian ``[1, 1, size, size]`` sampled over ``±nsig`` standard deviations
    (the TI paper's kernel: the normal density at ``size`` points evenly spaced in ``[-nsig, nsig]``)."""
    points = torch.linspace(-nsig, nsig, size, dtype=torch.float64)
    profile = torch.exp(-points**2 / 2)
    kernel = profile[:, None] * profile[None, :]
    return (kernel / kernel.sum()).to(device=like.device, dtype=like.dtype)[None, None]


def smooth(grad: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve each channel of ``grad`` ``[N, C, H, W]`` with ``kernel`` ``[1, 1, k, k]``, zero-padded
    to the same size (TI's translation-invariant gradient)."""
    channels = grad.shape[1]
    return F.conv2d(grad, kernel.expand(channels, 1, -1, -1), padding="same", groups=channels)


def resize_and_pad(x: torch.Tensor, rate: float, chance: float, generator: torch.Generator) -> torch.Tensor:
    """DI's input diversity, drawn per scan: with probability ``chance`` a scan is shrunk to a random
    share in ``[rate, 1)`` of its side (bilinear) and placed at a random spot of a black frame of its
    own size; otherwise it is left as it is. Differentiable in ``x``.

    The paper's code and torchattacks draw one size, one place and one coin per batch, so that every
    scan of a batch takes the same kind of step; drawn per scan, each scan gets its own copies.
    """
    n, height, width = x.shape[0], x.shape[-2], x.shape[-1]
    device = generator.device
    applied = torch.rand(n, generator=generator, device=device) < chance
    share = rate + (1 - rate) * torch.rand(n, generator=generator, device=device)
    share = torch.where(applied, share, torch.ones_like(share))
    # The shrunk scan is centred; a shift of up to half the margin either way reaches every placement.
    room = torch.stack([(1 - share) * width / 2, (1 - share) * height / 2], dim=1)
    shifts = room * (2 * torch.rand(n, 2, generator=generator, device=device) - 1)
    resized = warp(x, torch.zeros(n), shifts.cpu().double(), share.cpu().double())
    return torch.where(applied.to(x.device)[:, None, None, None], resized, x)


class TransferFGSM(MIFGSM):
    """MI-FGSM whose gradient estimate is built from the switches below (see the module's docstring).

    Not registered itself; each registered subclass sets its switches and its ``params``.
    """

    transfer_oriented = True
    #: NI: take the gradient at the look-ahead point ``x + decay * alpha * momentum``.
    nesterov: ClassVar[bool] = False
    #: SI: average over ``scales`` copies ``x / 2^i`` (needs a ``scales`` parameter).
    scale_copies: ClassVar[bool] = False
    #: DI: a random resize-and-pad copy with probability ``diversity_prob`` (needs its parameters).
    diversity: ClassVar[bool] = False
    #: VMI: variance tuning from ``samples`` neighbours within ``beta * eps`` (needs its parameters).
    variance: ClassVar[bool] = False
    #: TI: smooth the gradient with a Gaussian kernel of side ``kernel_size`` (needs its parameters).
    translation: ClassVar[bool] = False

    @property
    def step_size(self) -> float:
        return self.alpha if self.alpha is not None else self.eps / self.steps

    def copies(self, generator: torch.Generator) -> list[Optional[Transform]]:
        """The transforms whose gradients one step averages (None: the scan as it is)."""
        if self.scale_copies:
            return [None, *(lambda z, i=i: z / 2**i for i in range(1, self.scales))]
        if self.diversity:
            return [lambda z: resize_and_pad(z, self.resize_rate, self.diversity_prob, generator)]
        return [None]

    def ascent(self, model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
               state: dict[str, Any], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        point = x_adv
        if self.nesterov and "momentum" in state:
            point = x_adv + self.decay * self.step_size * state["momentum"]
        logits: Optional[torch.Tensor] = None
        total = torch.zeros_like(x_adv)
        transforms = self.copies(generator)
        for transform in transforms:
            grad, seen = gradient(model, point, self.objective, y, target, transform=transform)
            total += grad
            if transform is None and point is x_adv:
                logits = seen
        grad = total / len(transforms)
        if self.variance:
            tuned = grad + state.get("variance", 0.0)
            state["variance"] = self.neighbour_gradient(model, x_adv, y, target, generator) - grad
            grad = tuned
        if self.translation:
            grad = smooth(grad, gaussian_kernel(self.kernel_size, self.nsig, grad))
        if logits is None:
            with torch.no_grad():
                logits = model(x_adv)
        return grad, logits

    def neighbour_gradient(self, model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor,
                           target: Optional[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        """VMI: the mean gradient at ``samples`` points drawn uniformly within ``beta * eps`` (L∞) of
        ``x_adv`` (not clipped to [0, 1], as in the paper)."""
        radius = self.beta * self.eps
        total = torch.zeros_like(x_adv)
        for _ in range(self.samples):
            noise = torch.rand(x_adv.shape, generator=generator, device=x_adv.device, dtype=x_adv.dtype)
            grad, _ = gradient(model, x_adv + radius * (2 * noise - 1), self.objective, y, target)
            total += grad
        return total / self.samples


@register
class DIFGSM(TransferFGSM):
    """DI-FGSM: iterative FGSM on randomly resized and padded copies of the scan (input diversity).

    With ``decay`` 0 (default) this is the paper's DI²-FGSM; with ``decay`` 1, M-DI²-FGSM. The copy
    is shrunk to a share in ``[resize_rate, 1)`` of the side and placed at a random spot of a black
    frame of the scan's own size (as torchattacks does), where the paper enlarged it and fed the
    model the larger input: the model here always sees the size it was trained at. Size, place and
    whether to transform are drawn per scan (the paper's code draws them once per batch).

    Paper: Xie, Zhang, Zhou, Bai, Wang, Ren and Yuille, "Improving Transferability of Adversarial
    Examples with Input Diversity", CVPR 2019. https://arxiv.org/abs/1803.06978
    """

    name = "difgsm"
    title = "DI-FGSM (input diversity)"
    description = ("Iterative FGSM whose gradient is taken, with probability p, on a randomly shrunk and "
                   "padded copy of the scan, so it fits the model less tightly and transfers to others.")
    diversity = True
    decay: float
    resize_rate: float
    diversity_prob: float
    seed: int
    early_stop: bool
    params = (eps_param(), transfer_alpha_param(), steps_param(10), decay_param(0.0),
              Param("resize_rate", float, 0.9, "smallest size of the resized copy, as a share of the side",
                    low=0.5, high=0.99),
              Param("diversity_prob", float, 0.5, "probability that a step uses a resized copy",
                    low=0.0, high=1.0),
              seed_param(), early_stop_param())


@register
class TIFGSM(TransferFGSM):
    """TI-FGSM: iterative FGSM on a Gaussian-smoothed gradient (translation invariance).

    Smoothing the gradient approximates averaging it over small shifts of the scan, so the change
    does not hinge on exactly where the source model looks. The paper's kernel is 15 pixels on
    299-pixel images (about 5% of the side); the default here is 5 pixels, as scans here are about
    100 pixels wide. ``decay`` 1 gives TI-MI-FGSM.

    Paper: Dong, Pang, Su and Zhu, "Evading Defenses to Transferable Adversarial Examples by
    Translation-Invariant Attacks", CVPR 2019. https://arxiv.org/abs/1904.02884
    """

    name = "tifgsm"
    title = "TI-FGSM (translation-invariant)"
    description = ("Iterative FGSM on a gradient smoothed by a Gaussian kernel, as if averaged over small "
                   "shifts of the scan; transfers to other models and through some defences.")
    translation = True
    decay: float
    kernel_size: int
    nsig: float
    early_stop: bool
    params = (eps_param(), transfer_alpha_param(), steps_param(10), decay_param(0.0),
              Param("kernel_size", int, 5, "side of the Gaussian smoothing kernel in pixels (odd)",
                    low=1, high=63),
              Param("nsig", float, 3.0, "the kernel spans this many standard deviations each side",
                    low=0.5, high=10.0),
              early_stop_param())

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.kernel_size % 2 == 0:
            raise AttackParameterError(f"kernel_size must be odd, got {self.kernel_size}; try "
                                       f"{self.kernel_size + 1}")


@register
class NIFGSM(TransferFGSM):
    """NI-FGSM: MI-FGSM that takes each gradient at Nesterov's look-ahead point.

    Paper: Lin, Song, He, Wang and Hopcroft, "Nesterov Accelerated Gradient and Scale Invariance for
    Adversarial Attacks", ICLR 2020. https://arxiv.org/abs/1908.06281
    """

    name = "nifgsm"
    title = "NI-FGSM (Nesterov momentum)"
    description = ("MI-FGSM that looks ahead along its momentum before taking the gradient (Nesterov); "
                   "escapes poor local maxima sooner and transfers better.")
    nesterov = True
    decay: float
    early_stop: bool
    params = (eps_param(), transfer_alpha_param(), steps_param(10), decay_param(1.0), early_stop_param())


@register
class SINIFGSM(TransferFGSM):
    """SI-NI-FGSM: NI-FGSM whose gradient is averaged over ``scales`` copies ``x / 2^i`` (scale invariance).

    Paper: Lin, Song, He, Wang and Hopcroft, "Nesterov Accelerated Gradient and Scale Invariance for
    Adversarial Attacks", ICLR 2020. https://arxiv.org/abs/1908.06281
    """

    name = "sinifgsm"
    title = "SI-NI-FGSM (scale invariance)"
    description = ("NI-FGSM averaging the gradient over copies of the scan scaled by 1, 1/2, 1/4, ...: "
                   "a model reads them alike, so the change is less specific to the source model.")
    nesterov = True
    scale_copies = True
    decay: float
    scales: int
    early_stop: bool
    params = (eps_param(), transfer_alpha_param(), steps_param(10), decay_param(1.0),
              Param("scales", int, 5, "scaled copies x / 2^i per step (i = 0 .. scales - 1); each costs "
                    "one gradient", low=1, high=16),
              early_stop_param())


@register
class VMIFGSM(TransferFGSM):
    """VMI-FGSM: MI-FGSM whose gradient is corrected by the previous step's gradient variance.

    The correction is the mean gradient of ``samples`` random points within ``beta * eps`` of the
    previous iterate, minus the gradient there; it steadies the direction. Each step costs
    ``samples + 1`` gradients (the paper uses 20 samples and beta 1.5).

    Paper: Wang and He, "Enhancing the Transferability of Adversarial Attacks through Variance
    Tuning", CVPR 2021. https://arxiv.org/abs/2103.15571
    """

    name = "vmifgsm"
    title = "VMI-FGSM (variance tuning)"
    description = ("MI-FGSM whose gradient is corrected by the spread of gradients around the previous "
                   "point; transfers better at the cost of samples + 1 gradients per step.")
    variance = True
    decay: float
    samples: int
    beta: float
    seed: int
    early_stop: bool
    params = (eps_param(), transfer_alpha_param(), steps_param(10), decay_param(1.0),
              Param("samples", int, 20, "neighbours sampled per step for the variance (each one "
                    "gradient)", low=1, high=1000),
              Param("beta", float, 1.5, "neighbours lie within beta * eps of the point (L∞)",
                    low=0.0, high=10.0),
              seed_param(), early_stop_param())


@register
class RFGSM(IterativeAttack):
    """R-FGSM: a random sign step of ``alpha``, then a gradient sign step of ``eps - alpha``.

    The random step leaves the sharp curvature a single-step adversarially trained model builds
    around its data points, where its gradient misleads FGSM; with ``steps`` above 1 the gradient
    part is split into equal steps. Default ``alpha`` is ``eps / 2``, the paper's choice.

    Paper: Tramèr, Kurakin, Papernot, Goodfellow, Boneh and McDaniel, "Ensemble Adversarial
    Training: Attacks and Defenses", ICLR 2018. https://arxiv.org/abs/1705.07204
    """

    name = "rfgsm"
    title = "R-FGSM (random step + FGSM)"
    description = ("One random sign step, then an FGSM step with the rest of the budget (Tramèr et al. "
                   "2018): as cheap as FGSM and not fooled by the gradient masking of FGSM training.")
    seed: int
    early_stop: bool
    params = (eps_param(), alpha_param(unset="eps/2", what="size of the random sign step"),
              steps_param(1), seed_param(), early_stop_param())

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.alpha is not None and self.alpha >= self.eps > 0:
            raise AttackParameterError(
                f"alpha ({self.alpha:.4g}) must be smaller than eps ({self.eps:.4g}): the gradient step "
                "gets what the random step leaves of the budget"
            )

    @property
    def random_size(self) -> float:
        return self.alpha if self.alpha is not None else self.eps / 2

    @property
    def step_size(self) -> float:
        return (self.eps - self.random_size) / self.steps

    @property
    def starts_at_random(self) -> bool:
        return True

    def random_point(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + self.random_size * noise.sign()).clamp(0.0, 1.0)
