"""The shape every attack shares: validated parameters, one call signature, a safe model.

``attack(model, x, y)`` returns a new tensor in ``[0, 1]`` (and inside the attack's norm ball,
where it has one); ``x``, the model's mode and its parameters' ``requires_grad`` are untouched.
Subclasses implement ``_run`` and nothing else; this class validates input, borrows the model
through :func:`pipeline.guard.exclusive_eval`, projects the result a last time, and measures it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.attacks.objectives import label_probability
from pipeline.errors import AttackParameterError
from pipeline.guard import exclusive_eval
from pipeline.progress import ProgressCallback

Norm = Literal["linf", "l2", "l1", "l0"]
Family = Literal["white-box", "black-box", "corruption", "ensemble"]


@dataclass(frozen=True)
class Param:
    """One attack parameter, described well enough for the dashboard to build its control."""

    name: str
    kind: type
    default: Any
    help: str
    low: Optional[float] = None
    high: Optional[float] = None
    choices: Optional[tuple[Any, ...]] = None
    #: Shown in the UI as ``k/255`` grey levels (epsilons and step sizes in image scale).
    grey_levels: bool = False

    def validate(self, value: Any) -> Any:
        """Coerce ``value`` to this parameter's type and check its range; raise a helpful error."""
        if value is None and self.default is None:
            return None  # an optional override left unset
        try:
            if self.kind is bool:
                if isinstance(value, str):
                    value = value.strip().lower() in {"1", "true", "yes", "on"}
                coerced: Any = bool(value)
            elif self.kind is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                coerced = int(value)
            elif self.kind is float:
                coerced = float(value)
            else:
                coerced = self.kind(value)
        except (TypeError, ValueError):
            raise AttackParameterError(
                f"parameter {self.name!r} must be a {self.kind.__name__}, got {value!r}"
            ) from None
        if isinstance(coerced, float) and not math.isfinite(coerced):
            raise AttackParameterError(f"parameter {self.name!r} must be finite, got {value!r}")
        if self.choices is not None and coerced not in self.choices:
            raise AttackParameterError(
                f"parameter {self.name!r} must be one of {list(self.choices)}, got {value!r}"
            )
        if (self.low is not None and coerced < self.low) or (self.high is not None and coerced > self.high):
            raise AttackParameterError(
                f"parameter {self.name!r} must lie in [{self.low}, {self.high}], got {value!r}"
            )
        return coerced


@dataclass
class AttackInfo:
    """Per-sample facts about one attack call, for tables and the step-by-step plot."""

    success: torch.Tensor  #: bool [N]: prediction left the true class (or reached the target)
    loss: torch.Tensor  #: float [N]: cross-entropy of the true class at the result
    linf: torch.Tensor  #: float [N]
    l2: torch.Tensor  #: float [N]
    l0: torch.Tensor  #: float [N]: number of changed pixels
    #: float [steps, N]: true-class probability after each step (first row: the clean scan)
    trace: torch.Tensor
    queries: Optional[torch.Tensor] = None  #: int [N] model queries, for black-box attacks
    extra: dict[str, Any] = field(default_factory=dict)


class Attack:
    """Base class: subclasses set the class attributes and implement ``_run``."""

    name: ClassVar[str]
    title: ClassVar[str]
    family: ClassVar[Family] = "white-box"
    #: The norm whose ball bounds the result, or None for minimal-perturbation and corruption attacks.
    norm: ClassVar[Optional[Norm]] = None
    params: ClassVar[tuple[Param, ...]] = ()
    supports_target: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def __init__(self, **params: Any) -> None:
        known = {param.name: param for param in self.params}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise AttackParameterError(
                f"{self.name} has no parameter {', '.join(map(repr, unknown))}; "
                f"valid parameters: {', '.join(known) or 'none'}"
            )
        self.config: dict[str, Any] = {
            name: param.validate(params[name]) if name in params else param.default
            for name, param in known.items()
        }
        self._trace: list[torch.Tensor] = []
        self._tracing = False
        self._queries: Optional[torch.Tensor] = None

    def __getattr__(self, name: str) -> Any:
        config = self.__dict__.get("config")
        if config is not None and name in config:
            return config[name]
        raise AttributeError(name)

    def __repr__(self) -> str:
        settings = ", ".join(f"{key}={value!r}" for key, value in self.config.items())
        return f"{type(self).__name__}({settings})"

    # ----------------------------------------------------------------------------------- call
    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        target: Optional[torch.Tensor] = None,
        progress: Optional[ProgressCallback] = None,
        return_info: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, AttackInfo]:
        x, y, target = self._check_inputs(x, y, target)
        self._trace = []
        self._tracing = return_info
        self._queries = None
        with exclusive_eval(model):
            x_adv = self._run(model, x.detach().clone(), y, target, progress)
            x_adv = self._finalise(x, x_adv.detach())
            if not return_info:
                return x_adv
            return x_adv, self._measure(model, x, x_adv, y, target)

    def _run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        target: Optional[torch.Tensor],
        progress: Optional[ProgressCallback],
    ) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------------------ helpers
    @property
    def budget(self) -> Optional[float]:
        """The radius of the norm ball (``eps``) when the attack has one."""
        return self.config.get("eps") if self.norm is not None else None

    def generator(self, device: torch.device) -> torch.Generator:
        """A private RNG seeded from the ``seed`` parameter: deterministic, global RNG untouched."""
        generator = torch.Generator(device=device)
        generator.manual_seed(int(self.config.get("seed", 0)))
        return generator

    def record(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Remember the true-class probability after a step, for the step-by-step plot.

        A no-op unless the caller asked for ``return_info``; rows stay on the device until the end,
        so recording never forces a GPU synchronisation inside an attack's loop.
        """
        if self._tracing:
            self._trace.append(label_probability(logits.detach(), y))

    @torch.no_grad()
    def record_clean(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        """First trace row for attacks whose first step is not at the clean scan (a random start).

        Costs a forward pass only when a trace was asked for.
        """
        if self._tracing:
            self.record(model(x), y)

    def record_queries(self, counts: torch.Tensor) -> None:
        """Remember how many model queries each sample cost (black-box attacks report it)."""
        self._queries = counts.detach().long().cpu()

    def project(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """Bring ``x_adv`` back into the norm ball around ``x`` and into ``[0, 1]``."""
        return project(x, x_adv, self.norm, self.budget)

    def _finalise(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        x_adv = torch.nan_to_num(x_adv.to(dtype=x.dtype), nan=0.0).clamp(0.0, 1.0)
        return self.project(x, x_adv)

    def _check_inputs(
        self, x: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
            raise AttackParameterError("scans must be a float tensor shaped [N, 1, H, W]")
        if x.shape[0] == 0:
            raise AttackParameterError("the batch is empty")
        if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise AttackParameterError("scans must be finite and lie in [0, 1]")
        y = torch.as_tensor(y, device=x.device).long().reshape(-1)
        if y.shape[0] != x.shape[0]:
            raise AttackParameterError(f"got {x.shape[0]} scans but {y.shape[0]} labels")
        if target is not None:
            if not self.supports_target:
                raise AttackParameterError(f"{self.name} is untargeted; leave target unset")
            target = torch.as_tensor(target, device=x.device).long().reshape(-1)
            if target.shape[0] != x.shape[0]:
                raise AttackParameterError(f"got {x.shape[0]} scans but {target.shape[0]} targets")
        return x, y, target

    @torch.no_grad()
    def _measure(
        self,
        model: nn.Module,
        x: torch.Tensor,
        x_adv: torch.Tensor,
        y: torch.Tensor,
        target: Optional[torch.Tensor],
    ) -> AttackInfo:
        logits = model(x_adv)
        prediction = logits.argmax(dim=1)
        success = prediction == target if target is not None else prediction != y
        sizes = batch_norms(x_adv - x)
        if not self._trace:
            self.record(model(x), y)
        self.record(logits, y)
        return AttackInfo(
            success=success.cpu(),
            loss=F.cross_entropy(logits.float(), y, reduction="none").cpu(),
            linf=sizes["linf"].cpu(),
            l2=sizes["l2"].cpu(),
            l0=sizes["l0"].cpu(),
            trace=torch.stack(self._trace).cpu(),
            queries=self._queries,
        )


def project(x: torch.Tensor, x_adv: torch.Tensor, norm: Optional[Norm], eps: Optional[float]) -> torch.Tensor:
    """Project ``x_adv`` onto the ``norm`` ball of radius ``eps`` around ``x``, then into ``[0, 1]``."""
    if norm is None or eps is None:
        return x_adv.clamp(0.0, 1.0)
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    elif norm == "l2":
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        delta = delta * (eps / norms).clamp(max=1.0).view(-1, *([1] * (delta.dim() - 1)))
    elif norm == "l1":
        norms = delta.flatten(1).abs().sum(dim=1).clamp_min(1e-12)
        delta = delta * (eps / norms).clamp(max=1.0).view(-1, *([1] * (delta.dim() - 1)))
    return (x + delta).clamp(0.0, 1.0)


def eps_param(default: float = 4 / 255, high: float = 64 / 255, name: str = "eps") -> Param:
    """The L-infinity budget every norm-bounded attack shares, in image scale."""
    return Param(name, float, default, "largest change per pixel (image scale; k/255 grey levels)",
                 low=0.0, high=high, grey_levels=True)


def seed_param() -> Param:
    return Param("seed", int, 0, "random seed for random starts and sampling", low=0, high=2**31 - 1)


def steps_param(default: int, high: int = 10_000) -> Param:
    return Param("steps", int, default, "number of iterations", low=1, high=high)


def gradient(model: nn.Module, x: torch.Tensor, loss_fn, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of ``loss_fn(logits, *args).sum()`` with respect to ``x``; returns (grad, logits)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        loss = loss_fn(logits, *args)
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return grad.detach(), logits.detach()


def batch_norms(delta: torch.Tensor) -> dict[str, torch.Tensor]:
    """L-infinity, L2 and L0 sizes of a batch of perturbations."""
    flat = delta.flatten(1).float()
    return {"linf": flat.abs().amax(1), "l2": flat.norm(dim=1), "l0": (flat.abs() > 1e-6).sum(1).float()}
