"""The smallest budget that flips each scan: per-sample bisection over an attack's ``eps``.

One number per scan ("this scan falls at 3/255") says more than a success rate at one budget, and
it is what a robustness curve is read from. Bisection assumes success grows with ``eps``; strong
attacks nearly obey that, so read the result as "fooled at this budget, not (reliably) below it".
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

from pipeline.attacks.registry import attack_class, available, get_attack
from pipeline.errors import AttackParameterError
from pipeline.guard import exclusive_eval
from pipeline.progress import ProgressCallback, report

#: How close to the flip point the search gets: a quarter grey level.
PRECISION = 0.25 / 255
NORM_NAMES = {"linf": "L∞", "l2": "L2", "l1": "L1", "l0": "L0"}


def search_refusal(attack: str, norm: Optional[str] = None) -> Optional[str]:
    """Why the budget of ``attack`` cannot be searched (in ``norm`` budgets, if given), or None.

    An attack without an ``eps`` budget (DeepFool, CW-L2, corruptions) sizes its change itself;
    one bounded in another norm has budgets on another scale.
    """
    cls = attack_class(attack)
    if cls.budget_units is not None:
        return f"{cls.title} has no budget ε to search: its budget is in {cls.budget_units}, not grey levels"
    if cls.norm is None or not any(param.name == "eps" for param in cls.params):
        return f"{cls.title} has no budget ε to search: it decides the size of its change itself"
    if norm is not None and cls.norm != norm:
        return (
            f"{cls.title} bounds its change in the {NORM_NAMES[cls.norm]} norm, and this search is over "
            f"{NORM_NAMES[norm]} budgets"
        )
    return None


def search_runs(high: float, low: float = 0.0, precision: float = PRECISION) -> int:
    """How many times :func:`minimal_epsilon` runs its attack at most: once at ``high``, then once
    per bisection round."""
    return max(math.ceil(math.log2((high - low) / precision)), 0) + 1


def minimal_epsilon(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: str = "pgd",
    *,
    low: float = 0.0,
    high: float = 32 / 255,
    precision: float = PRECISION,
    progress: Optional[ProgressCallback] = None,
    **attack_params: Any,
) -> torch.Tensor:
    """Per scan, the smallest ``eps`` in ``(low, high]`` at which ``attack`` flips the prediction.

    Returns a float tensor ``[N]`` on the CPU, within ``precision`` of the flip point: 0 for a scan
    already misclassified, ``inf`` where even ``high`` fails. Each scan has its own interval; the
    scans whose midpoints coincide are attacked together, so a batch needs no more rounds than
    one scan. ``attack_params`` go to the attack (all but ``eps``, which is searched).
    """
    if search_refusal(attack) is not None:
        bounded = [name for name in available() if search_refusal(name) is None]
        raise AttackParameterError(
            f"minimal_epsilon needs an attack with an eps budget; {attack!r} has none. Choose one of: "
            f"{', '.join(bounded)}"
        )
    if "eps" in attack_params:
        raise AttackParameterError("minimal_epsilon searches eps itself; pass low and high instead of eps")
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low < high):
        raise AttackParameterError(f"need 0 <= low < high, got low={low}, high={high}")
    if not (math.isfinite(precision) and precision > 0):
        raise AttackParameterError(f"precision must be a positive number, got {precision}")
    # Fail now on a bad parameter or input, not after the first round.
    x, y, _ = get_attack(attack, eps=high, **attack_params).check_inputs(model, x, y)
    rounds = search_runs(high, low, precision) - 1
    result = torch.full((x.shape[0],), math.inf, dtype=torch.float64)

    def fools(eps: float, index: torch.Tensor) -> torch.Tensor:
        _, info = get_attack(attack, eps=eps, **attack_params)(model, x[index], y[index], return_info=True)
        return info.success

    with exclusive_eval(model), torch.no_grad():
        wrong = (model(x).argmax(1) != y).cpu()
    result[wrong] = 0.0
    report(progress, 0, rounds + 1, f"{attack} at eps={high * 255:.2f}/255")
    index = (~wrong).nonzero().flatten()
    if index.numel():
        index = index[fools(high, index.to(x.device)).cpu()]
    lo = torch.full((index.numel(),), float(low), dtype=torch.float64)
    hi = torch.full((index.numel(),), float(high), dtype=torch.float64)
    for round_ in range(rounds):
        mid = (lo + hi) / 2
        for value in mid.unique().tolist():
            group = (mid == value).nonzero().flatten()
            flipped = fools(value, index[group].to(x.device)).cpu()
            hi[group[flipped]] = value
            lo[group[~flipped]] = value
        report(progress, round_ + 1, rounds + 1, f"bisection round {round_ + 1}/{rounds}")
    result[index] = hi
    report(progress, rounds + 1, rounds + 1, "minimal epsilon: done")
    return result.float()
