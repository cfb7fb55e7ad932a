"""The shape every attack shares: validated parameters, one call signature, a safe model.

``attack(model, x, y)`` returns a new tensor in ``[0, 1]`` (and inside the attack's norm ball,
where it has one); ``x``, the model's mode and its parameters' ``requires_grad`` are untouched.
Subclasses list their parameters as :class:`pipeline.params.Param` (the schema training and
data settings use too), declare them as typed attributes, and implement ``_run`` and nothing
else; this class validates the parameters into those attributes (``PGD(eps=...).eps``, as in
torchattacks), checks every input once (:meth:`Attack.check_inputs`: dtype, device, range, NaN,
labels and targets against the model's own output), borrows the model through
:func:`pipeline.guard.exclusive_eval`, projects the result a last time, and measures it. No
subclass re-checks what the base has checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.attacks.objectives import label_probability
from pipeline.errors import AttackParameterError
from pipeline.guard import exclusive_eval
from pipeline.params import Param
from pipeline.progress import ProgressCallback
from pipeline.units import format_epsilon

Norm = Literal["linf", "l2", "l1", "l0"]
Family = Literal["white-box", "black-box", "corruption", "ensemble"]


@dataclass
class AttackInfo:
    """Per-sample facts about one attack call, for tables and the step-by-step plot."""

    success: torch.Tensor  #: bool [N]: prediction left the true class (or reached the target)
    loss: torch.Tensor  #: float [N]: cross-entropy of the true class at the result
    linf: torch.Tensor  #: float [N]
    l2: torch.Tensor  #: float [N]
    l0: torch.Tensor  #: float [N]: number of changed pixels
    #: float [points, N]: true-class probability along the attack: the clean scan first, the returned
    #: scan last; a step-based attack has ``steps + 1`` rows (its random start, if any, is no row)
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
    #: Units of a budget that is not a norm ball (a rotation in degrees, a patch in pixels), or None.
    #: Such an attack overrides :meth:`describe_budget` and :meth:`within_budget`, says in ``bound``
    #: what holds its result, and has no ``eps`` to compare at or to search.
    budget_units: ClassVar[Optional[str]] = None
    #: What bounds the result, for the docstring, when it is not one of the norm balls.
    bound: ClassVar[Optional[str]] = None
    #: Made to transfer from the model it is crafted on to others (offered by the transfer matrix).
    transfer_oriented: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        known = {param.name: param for param in self.params}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise AttackParameterError(
                f"{self.name} has no parameter {', '.join(map(repr, unknown))}; "
                f"valid parameters: {', '.join(known) or 'none'}"
            )
        for name, param in known.items():
            if name in params:
                setattr(self, name, param.validate(params[name], error=AttackParameterError))
            else:
                setattr(self, name, param.default)
        self._trace: list[torch.Tensor] = []
        self._tracing = False
        self._queries: Optional[torch.Tensor] = None

    @property
    def config(self) -> dict[str, Any]:
        """Every parameter by name, as validated (defaults included): what a report records."""
        return {param.name: getattr(self, param.name) for param in self.params}

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
        with exclusive_eval(model):
            x_run, y, target = self.check_inputs(model, x, y, target)
            self._trace = []
            self._tracing = return_info
            self._queries = None
            x_adv = self._run(model, x_run.detach().clone(), y, target, progress)
            x_adv = self._finalise(x.detach(), x_adv.detach())
            if not return_info:
                return x_adv
            return x_adv, self._measure(model, x_run, x_adv.to(x_run.dtype), y, target)

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
        return getattr(self, "eps", None) if self.norm is not None else None

    def describe_budget(self) -> str:
        """The budget in words, in its own units: ``L∞ ε = 4/255 grey levels``, ``rotation within ±5°``."""
        if self.norm is None:
            return "no norm budget: the attack sizes its change itself"
        name = {"linf": "L∞", "l2": "L2", "l1": "L1", "l0": "L0"}[self.norm]
        if self.budget is None:
            return f"{name}: no fixed budget"
        if self.norm == "linf":
            return f"{name} ε = {format_epsilon(self.budget)} grey levels per pixel"
        return f"{name} ε = {self.budget:.4g} (image scale, whole scan)"

    def describe_change(self, info: AttackInfo, index: int) -> Optional[str]:
        """What was done to scan ``index`` in the budget's own units, or None where grey levels say it
        (norm-bounded attacks); spatial and patch attacks say where and how far."""
        return None

    def within_budget(self, x: torch.Tensor, x_adv: torch.Tensor, info: AttackInfo) -> torch.Tensor:
        """Bool ``[N]``: each result keeps this attack's budget (its norm ball, or its own kind of
        budget for attacks with ``budget_units``); the attack contract's check. ``x`` and ``x_adv``
        are the call's input and output, ``info`` what it returned with ``return_info=True``."""
        size = {"linf": info.linf, "l2": info.l2}.get(self.norm or "")
        if self.budget is None or size is None:
            return torch.ones(x.shape[0], dtype=torch.bool)
        return size <= self.budget * (1 + 1e-5) + 1e-6

    def generator(self, device: torch.device) -> torch.Generator:
        """A private RNG seeded from the ``seed`` parameter: deterministic, global RNG untouched."""
        generator = torch.Generator(device=device)
        generator.manual_seed(int(getattr(self, "seed", 0)))
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

    def check_inputs(
        self, model: nn.Module, x: torch.Tensor, y: Any, target: Optional[Any] = None
    ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Check a call's inputs once, before any work; return them ready for :meth:`_run`.

        ``x`` must be a floating tensor ``[N, C, H, W]`` in ``[0, 1]`` without NaN or infinity, on the
        model's device; it is cast to the model's floating dtype (a float64 scan runs in float32 and
        comes back as float64). ``y`` and ``target`` are class numbers, one per scan, in the range of
        the model's output; they are moved to the model's device as int64. One forward pass on the
        first scan checks that the model returns finite logits shaped ``[N, classes]`` with at least
        two classes. Raises :class:`AttackParameterError` saying what is wrong and what to do.
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise AttackParameterError(
                f"scans must be a tensor shaped [N, 1, H, W] (one scan is [1, 1, H, W]), got {shape}"
            )
        if not x.is_floating_point():
            raise AttackParameterError(
                f"scans must be floating point in [0, 1], got {x.dtype}; divide 8-bit pixels by 255 first"
            )
        if x.shape[0] == 0:
            raise AttackParameterError("the batch is empty: give at least one scan")
        device, dtype = _model_device_dtype(model)
        if device is not None and x.device != device:
            raise AttackParameterError(
                f"the scans are on {x.device} but the model is on {device}; "
                f"move the scans with x.to({str(device)!r})"
            )
        finite = torch.isfinite(x.flatten(1)).all(dim=1)
        if not bool(finite.all()):
            raise AttackParameterError(
                f"{int((~finite).sum())} of {x.shape[0]} scans contain NaN or infinite pixels; "
                "fix or drop them before attacking"
            )
        low, high = float(x.min()), float(x.max())
        if low < 0 or high > 1:
            raise AttackParameterError(
                f"scans must lie in [0, 1], got values from {low:.4g} to {high:.4g}; "
                "rescale them (8-bit pixels: divide by 255)"
            )
        x = x.to(dtype=dtype or x.dtype)
        y = _class_numbers(y, x, "labels")
        if target is not None:
            if not self.supports_target:
                raise AttackParameterError(f"{self.name} is untargeted; leave target unset")
            target = _class_numbers(target, x, "targets")
        classes = _output_classes(model, x[:1])
        for name, values in (("label", y), ("target", target)):
            if values is not None and (int(values.min()) < 0 or int(values.max()) >= classes):
                bad = sorted({int(v) for v in values.tolist() if not 0 <= v < classes})
                raise AttackParameterError(
                    f"{name} {', '.join(map(str, bad))} is out of range: the model predicts "
                    f"{classes} classes, numbered 0..{classes - 1}"
                )
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


def _model_device_dtype(model: nn.Module) -> tuple[Optional[torch.device], Optional[torch.dtype]]:
    """The device and floating dtype of the model's first floating tensor (None for a stateless model)."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return None, None


def _class_numbers(values: Any, x: torch.Tensor, what: str) -> torch.Tensor:
    """``values`` as int64 class numbers ``[N]`` on ``x``'s device, one per scan; refuse anything else."""
    try:
        values = torch.as_tensor(values, device=x.device)
    except (TypeError, ValueError, RuntimeError):
        raise AttackParameterError(
            f"{what} must be class numbers, one per scan, got {type(values).__name__}"
        ) from None
    if values.dtype == torch.bool or values.is_complex() or (
        values.is_floating_point() and not bool((values == values.round()).all())
    ):
        raise AttackParameterError(f"{what} must be whole class numbers, got {values.dtype} values")
    values = values.reshape(-1)
    if values.shape[0] != x.shape[0]:
        raise AttackParameterError(
            f"got {x.shape[0]} scans but {values.shape[0]} {what}; "
            "give one class number per scan (not one-hot)"
        )
    return values.long()


@torch.no_grad()
def _output_classes(model: nn.Module, probe: torch.Tensor) -> int:
    """Run ``model`` on one scan and return its number of classes, refusing outputs an attack cannot use."""
    with exclusive_eval(model):
        try:
            logits = model(probe)
        except RuntimeError as error:
            raise AttackParameterError(
                f"the model cannot read scans shaped {tuple(probe.shape[1:])} ({probe.dtype}): {error}"
            ) from error
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != probe.shape[0]:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise AttackParameterError(
            f"the model returned {shape} for one scan; attacks need logits shaped [N, classes]"
        )
    if logits.shape[1] < 2:
        raise AttackParameterError(
            f"the model returns {logits.shape[1]} class score; attacks need at least 2"
        )
    if not bool(torch.isfinite(logits).all()):
        raise AttackParameterError(
            "the model returned NaN or infinite scores for a valid scan; its weights are broken: retrain or "
            "reload the checkpoint"
        )
    return int(logits.shape[1])


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


def gradient(model: nn.Module, x: torch.Tensor, loss_fn, *args: torch.Tensor,
             transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of ``loss_fn(logits, *args).sum()`` with respect to ``x``; returns (grad, logits).

    With ``transform`` the model sees ``transform(x)`` (a resized or scaled copy) and the gradient
    flows back through it to ``x``; the logits are then those of the transformed copy.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x if transform is None else transform(x))
        loss = loss_fn(logits, *args)
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return grad.detach(), logits.detach()


def batch_norms(delta: torch.Tensor) -> dict[str, torch.Tensor]:
    """L-infinity, L2 and L0 sizes of a batch of perturbations."""
    flat = delta.flatten(1).float()
    return {"linf": flat.abs().amax(1), "l2": flat.norm(dim=1), "l0": (flat.abs() > 1e-6).sum(1).float()}
