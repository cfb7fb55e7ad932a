"""Carlini-Wagner L2 (Carlini & Wagner 2017, "Towards evaluating the robustness of neural networks",
https://arxiv.org/abs/1608.04644).

Minimises ``distance + c * f`` with ``f`` the CW margin, for the smallest perturbation that still
fools the model. The trade-off ``c`` is bisected per scan over ``binary_search_steps`` rounds, as
in the paper (torchattacks keeps one fixed ``c``). :class:`ConstantSearch` holds the bisection and
the best-so-far bookkeeping, shared with EAD.

Our CW spends its passes where they buy something, so that at its defaults it costs about what one
torchattacks run costs (``bench/attacks.py``) while fooling at least as many scans:

- **a starting ``c`` per scan** from a linear model of the margin: with margin ``f0`` and its
  gradient ``g`` at the scan, ``|delta|^2 + c * f`` balances at ``|delta| = c |g| / 2``, which
  reaches the linearised boundary ``f0 / |g|`` (the step DeepFool takes) for ``c = 2 f0 / |g|^2``.
  We start at twice that, ``4 f0 / |g|^2``, so that the first round lands past the boundary on a
  curved model and the bisection walks back. One gradient replaces the rounds a fixed ``c`` wastes
  on scans it is far too small or large for (on a small CNN trained in the tests, twice the balance
  point gave a smaller median L2 than once or four times it, in fewer passes than once);
- **warm starts**: each round starts from the scan's smallest fooling point so far (else from where
  its last round ended), not from the clean scan, so it refines instead of repeating the way there;
- **no pass twice at one point**: the gradient that sets the starting ``c`` is taken at the first
  round's first point and serves as that step's gradient; every later round starts at a point whose
  margin and gradient were computed when it was reached (each scan's best or last point), so its first
  step runs no model;
- **shorter later rounds**: round ``r`` runs at most ``steps / 2^r`` steps, so all rounds together
  cost at most twice the first;
- **per-scan early abort** (Carlini's abort, per scan): every tenth of a round, a scan whose loss fell
  by less than 0.01% since the previous check, or that is fooled and whose smallest fooling distance
  shrank by less than 1%, leaves the round, and later steps run on the scans left. A scan that left
  for the second reason has converged and sits out the later rounds: a later round would start it
  from that same best point with fresh Adam moments, whose first step (``lr`` per coordinate in tanh
  space) never shrank its distance by 1% in our measurements, so it left again after one pass.

On ``bench/attacks.py``'s ResNet-18 (64 px, batch 16, randomly initialised) this makes 730
forward-backward rows in 54 model calls (before: 866 in 61; torchattacks at c = 1: 800 in 50) with
the same 16/16 scans fooled and a median L2 of 2.113 (before: 2.131); on the tests' small CNN 557 rows
instead of 701, to the same perturbations.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Optional

import torch
from torch import nn

from pipeline.attacks.base import Attack, Param, gradient, steps_param
from pipeline.attacks.losses import cw_loss
from pipeline.attacks.objectives import margin
from pipeline.attacks.pgd import kappa_param, per_sample
from pipeline.attacks.registry import register
from pipeline.progress import ProgressCallback, report

Tick = Callable[[int], None]
C_LOW, C_HIGH = 1e-6, 1e6


def c_param(default: Optional[float] = 1.0) -> Param:
    automatic = " (automatic: estimated per scan from its margin and gradient)" if default is None else ""
    return Param("c", float, default, f"starting weight of the misclassification term against the distance"
                 f"{automatic}", low=C_LOW, high=C_HIGH)


def binary_search_param() -> Param:
    return Param("binary_search_steps", int, 5,
                 "rounds of per-scan bisection over c (each round up to `steps` iterations)", low=1, high=30)


def lr_param(default: float) -> Param:
    return Param("lr", float, default, "learning rate of the optimiser", low=1e-6, high=10.0)


class EarlyAbort:
    """Carlini's early abort, kept per row: every tenth of a round, a row whose loss fell by less
    than 0.01% since the previous check has stalled.

    A row is a scan (CW) or the whole batch's summed loss (EAD, as in Carlini's code). Losses are
    read back from the device only at those checks, ten times a round.
    """

    def __init__(self, steps: int, rows: int = 1, device: Optional[torch.device] = None) -> None:
        self.every = max(steps // 10, 1)
        self.previous = torch.full((rows,), math.inf, device=device)

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def stalled(self, loss: torch.Tensor, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Bool per row of ``loss`` (rows ``index``, all when None); remembers ``loss`` for the next check.

        The loss may be negative (``kappa > 0``), hence the relative test on its absolute value.
        """
        rows = slice(None) if index is None else index
        previous = self.previous[rows].clone()
        self.previous[rows] = loss.detach()
        return loss.detach() > previous - 1e-4 * previous.abs()


class ConstantSearch(Attack):
    """Attacks that trade a distance against ``c`` times the CW margin, bisecting ``c`` per sample."""

    supports_target = True

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
             progress: Optional[ProgressCallback]) -> torch.Tensor:
        self.record_clean(model, x, y)
        c = self.starting_c(model, x, y, target)
        low, high = torch.zeros_like(c), torch.full_like(c, math.inf)
        self.best, self.best_distance = x.clone(), torch.full_like(c, math.inf)
        #: Where each scan's last round ended (a warm start for scans not fooled yet).
        self.ended = x.clone()
        budgets = [self.round_steps(round_) for round_ in range(self.binary_search_steps)]
        total = sum(budgets)
        for round_, steps in enumerate(budgets):
            tick = partial(self._tick, progress, sum(budgets[:round_]), total, round_)
            found = self._optimise(model, x, y, target, c, steps, tick)
            # Fooled at c: try a smaller c; not fooled: a larger one (times ten until bracketed).
            high = torch.where(found, torch.minimum(high, c), high)
            low = torch.where(found, low, torch.maximum(low, c))
            c = torch.where(torch.isfinite(high), (low + high) / 2, c * 10)
        report(progress, total, total, f"{self.name}: done")
        return self.best

    def starting_c(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   target: Optional[torch.Tensor]) -> torch.Tensor:
        """The first round's ``c`` per scan ``[N]``: the ``c`` parameter for every scan."""
        return torch.full((x.shape[0],), self.c, device=x.device, dtype=x.dtype)

    def round_steps(self, round_: int) -> int:
        """The most steps round ``round_`` (from 0) may take: ``steps`` in every round."""
        return self.steps

    def _tick(self, progress: Optional[ProgressCallback], before: int, total: int, round_: int,
              step: int) -> None:
        report(progress, before + step, total, f"{self.name}: round {round_ + 1}, step {step}")

    def _optimise(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
                  c: torch.Tensor, steps: int, tick: Tick) -> torch.Tensor:
        """One round of at most ``steps`` steps at the per-sample constants ``c``; returns whom it fooled."""
        raise NotImplementedError

    def penalty(self, logits: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
                c: torch.Tensor) -> torch.Tensor:
        """``c * f``: CW's margin term, zero gradient once the wrong class leads by ``kappa``."""
        return -c * cw_loss(logits, y, target, self.kappa)

    def keep(self, candidate: torch.Tensor, logits: torch.Tensor, distance: torch.Tensor, y: torch.Tensor,
             target: Optional[torch.Tensor], index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Keep ``candidate`` (the scans ``index``, all when None) where it fools by ``kappa`` at a
        smaller distance than the best so far; return whom it fools."""
        fooled = cw_loss(logits, y, target) > self.kappa
        if index is None:
            index = torch.arange(candidate.shape[0], device=candidate.device)
        better = fooled & (distance < self.best_distance[index])
        chosen = index[better]
        self.best[chosen] = candidate[better]
        self.best_distance[chosen] = distance[better]
        return fooled


@register
class CW(ConstantSearch):
    """Carlini-Wagner L2: the smallest L2 change that fools the model, optimised in tanh space.

    Paper: Carlini and Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017.
    https://arxiv.org/abs/1608.04644
    """

    name = "cw"
    title = "Carlini-Wagner L2"
    description = ("Optimises in tanh space for the smallest L2 change that fools the model, bisecting the "
                   "trade-off c per scan; a scan it cannot fool is returned unchanged.")
    c: Optional[float]
    kappa: float
    steps: int
    lr: float
    binary_search_steps: int
    params = (c_param(None), kappa_param(0.0), steps_param(50), lr_param(0.01), binary_search_param())

    def starting_c(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   target: Optional[torch.Tensor]) -> torch.Tensor:
        """``c`` as given, else ``4 (f0 + kappa) / |g|^2`` per scan (see the module docstring).

        Also sets up the per-scan caches of the margin's gradient. With automatic ``c`` the gradient
        it needs is taken at the first round's first point, so that round's first step reuses it.
        """
        self.at_best, self.at_end = _Known.empty(x), _Known.empty(x)
        #: Scans that converged (fooled, fooling distance shrinking by < 1% a check): no more rounds.
        self.converged = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        self.latest: Optional[torch.Tensor] = None  # every scan's logits at its current point, for the trace
        if self.c is not None:
            return super().starting_c(model, x, y, target)
        goal, targeted = (y, False) if target is None else (target, True)
        first = _to_image(_to_tanh(x))  # the point the first step evaluates, x up to rounding
        grad, logits = gradient(model, first, margin, goal, targeted)
        gap = margin(logits, goal, targeted).float() + self.kappa
        # The first step's misclassification term is CW's margin capped at kappa: its gradient is
        # minus the margin's where the cap is not reached (clamp passes the gradient at the cap).
        lead = cw_loss(logits, y, target, self.kappa)
        self.at_end.store(torch.arange(x.shape[0], device=x.device), -grad * per_sample(
            (-margin(logits, goal, targeted) <= self.kappa).to(grad.dtype), grad), lead, logits)
        estimate = 4 * gap / grad.flatten(1).float().pow(2).sum(1)
        return torch.nan_to_num(estimate, nan=C_HIGH, posinf=C_HIGH).clamp(C_LOW, C_HIGH).to(x.dtype)

    def round_steps(self, round_: int) -> int:
        return max(self.steps >> round_, 1)

    def _optimise(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
                  c: torch.Tensor, steps: int, tick: Tick) -> torch.Tensor:
        warm = torch.isfinite(self.best_distance)
        start = torch.where(per_sample(warm, x), self.best, self.ended)
        # Every scan's starting point was evaluated before (by the last round, or by starting_c):
        # its margin and gradient are known, so the first step runs no model on it.
        known = self.at_best.where(warm, self.at_end)
        w = _to_tanh(start)
        moments = torch.zeros_like(w), torch.zeros_like(w)  # Adam's, per scan: rows leave the round
        found = self.converged.clone()  # a converged scan is fooled: its c only halves
        abort = EarlyAbort(steps, x.shape[0], x.device)
        gained = self.best_distance.clone()  # the smallest fooling distance at the last check
        active = (~self.converged).nonzero().flatten()
        if active.numel() == 0:
            return found
        for step in range(steps):
            point = w[active]
            x_adv = _to_image(point)
            goal = None if target is None else target[active]
            if step == 0 and known.complete:
                lead_grad, lead, logits = known.grad[active], known.lead[active], known.logits[active]
            else:
                lead_grad, lead, logits = self._lead(model, x_adv, y[active], goal)
            # d/dw of |x_adv - x|^2 - c * lead, with x_adv = (tanh(w) + 1) / 2: what autograd gives
            # through tanh, written out so that a known gradient of the lead can stand in for a pass.
            delta = x_adv - x[active]
            distance = delta.flatten(1).pow(2).sum(1)
            loss = distance - c[active] * lead
            grad = (2 * delta - per_sample(c[active], delta) * lead_grad) * (2 * x_adv * (1 - x_adv))
            w[active] = _adam(point, grad, moments, active, step + 1, self.lr)
            before = self.best_distance[active]
            found[active] |= self.keep(x_adv, logits, distance, y[active], goal, active)
            improved = self.best_distance[active] < before
            self.at_best.store(active[improved], lead_grad[improved], lead[improved], logits[improved])
            self.at_end.store(active, lead_grad, lead, logits)
            self.ended[active] = x_adv
            if self._tracing:
                self.latest = logits if self.latest is None else self.latest.index_copy(0, active, logits)
                self.record(self.latest, y)
            tick(step + 1)
            if abort.due(step):
                done = abort.stalled(loss, active)
                if step:  # a fooled scan whose fooling distance shrank by less than 1% has converged
                    settled = found[active] & (self.best_distance[active] >= 0.99 * gained[active])
                    self.converged[active[settled]] = True
                    done |= settled
                gained[active] = self.best_distance[active]
                active = active[~done]
                if active.numel() == 0:
                    break
        return found

    def _lead(self, model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor,
              goal: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CW's capped margin ``[n]`` at ``x_adv``, its gradient (shaped like ``x_adv``) and the logits."""
        point = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(point)
            lead = cw_loss(logits, y, goal, self.kappa)
            (lead_grad,) = torch.autograd.grad(lead.sum(), point)
        return lead_grad, lead.detach(), logits.detach()


class _Known:
    """Per scan: CW's capped margin, its gradient and the logits at one remembered point."""

    def __init__(self, grad: torch.Tensor, lead: torch.Tensor, logits: Optional[torch.Tensor],
                 have: torch.Tensor) -> None:
        self.grad, self.lead, self.logits, self.have = grad, lead, logits, have

    @classmethod
    def empty(cls, x: torch.Tensor) -> "_Known":
        return cls(torch.zeros_like(x), x.new_zeros(x.shape[0]), None,
                   torch.zeros(x.shape[0], dtype=torch.bool, device=x.device))

    @property
    def complete(self) -> bool:
        return self.logits is not None and bool(self.have.all())

    def store(self, rows: torch.Tensor, grad: torch.Tensor, lead: torch.Tensor, logits: torch.Tensor) -> None:
        if self.logits is None:
            self.logits = logits.new_zeros(self.have.shape[0], logits.shape[1])
        self.grad[rows] = grad
        self.lead[rows] = lead.to(self.lead.dtype)
        self.logits[rows] = logits
        self.have[rows] = True

    def where(self, choose: torch.Tensor, other: "_Known") -> "_Known":
        """``self``'s entry where ``choose`` is True, else ``other``'s."""
        if self.logits is None or other.logits is None:
            return self if other.logits is None else other
        return _Known(torch.where(per_sample(choose, self.grad), self.grad, other.grad),
                      torch.where(choose, self.lead, other.lead),
                      torch.where(choose[:, None], self.logits, other.logits),
                      torch.where(choose, self.have, other.have))


def _to_tanh(x: torch.Tensor) -> torch.Tensor:
    """CW's change of variables: the ``w`` with ``(tanh(w) + 1) / 2 = x`` (x kept off 0 and 1)."""
    return torch.atanh((2 * x - 1).clamp(-1 + 1e-6, 1 - 1e-6))


def _to_image(w: torch.Tensor) -> torch.Tensor:
    return (torch.tanh(w) + 1) / 2


def _adam(w: torch.Tensor, grad: torch.Tensor, moments: tuple[torch.Tensor, torch.Tensor],
          rows: torch.Tensor, step: int, lr: float, betas: tuple[float, float] = (0.9, 0.999),
          eps: float = 1e-8) -> torch.Tensor:
    """One Adam step (Kingma & Ba 2015) for the rows ``rows`` of ``w``; updates their moments in place.

    torch.optim.Adam holds one state for the whole tensor; CW drops converged scans mid-round, so the
    first and second moments are kept per row here and only the rows still running are touched.
    """
    first, second = moments
    first[rows] = betas[0] * first[rows] + (1 - betas[0]) * grad
    second[rows] = betas[1] * second[rows] + (1 - betas[1]) * grad * grad
    corrected = first[rows] / (1 - betas[0] ** step)
    scale = (second[rows] / (1 - betas[1] ** step)).sqrt() + eps
    return w - lr * corrected / scale
