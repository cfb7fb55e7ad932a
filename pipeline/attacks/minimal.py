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


def minimal_epsilon(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: str = "pgd",
    *,
    low: float = 0.0,
    high: float = 32 / 255,
    precision: float = 0.25 / 255,
    progress: Optional[ProgressCallback] = None,
    **attack_params: Any,
) -> torch.Tensor:
    """Per scan, the smallest ``eps`` in ``(low, high]`` at which ``attack`` flips the prediction.

    Returns a float tensor ``[N]`` on the CPU, within ``precision`` of the flip point: 0 for a scan
    already misclassified, ``inf`` where even ``high`` fails. Each scan has its own interval; the
    scans whose midpoints coincide are attacked together, so a batch needs no more rounds than
    one scan. ``attack_params`` go to the attack (all but ``eps``, which is searched).
    """
    bounded = [name for name in available() if any(p.name == "eps" for p in attack_class(name).params)
               and attack_class(name).norm is not None]
    if attack_class(attack).name not in bounded:
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
    rounds = max(math.ceil(math.log2((high - low) / precision)), 0)
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
