"""Accuracy against epsilon, and how much perturbation each scan takes to flip.

A single number at one epsilon hides the shape of the curve; the curve shows whether robustness
degrades gracefully and (see :mod:`pipeline.evaluation.strength`) whether it falls at all. The
sweep is one :func:`evaluate` call over the grid of attacks and epsilons, so each batch gets one
clean forward pass and every attack reuses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline.attacks import attack_class, minimal_epsilon
from pipeline.evaluation.batches import iter_batches, model_device, resolve_indices
from pipeline.evaluation.intervals import Interval
from pipeline.evaluation.robustness import AttackSpec, RobustnessReport, evaluate, same_eps
from pipeline.evaluation.shards import Shards
from pipeline.json_object import json_float, json_floats
from pipeline.progress import ProgressCallback, report
from pipeline.units import format_epsilon

WORST_CASE = "worst case"


@dataclass
class SweepResult:
    """Accuracy per attack (and the per-scan worst case) at each epsilon, for one model."""

    model: str
    epsilons: list[float]
    clean: float
    accuracy: dict[str, list[float]]  #: attack name (or "worst case") -> accuracy per epsilon; NaN: not run
    #: The 95% interval of each accuracy (None where not run), and of the clean one.
    intervals: dict[str, list[Optional[Interval]]] = field(default_factory=dict)
    clean_interval: Optional[Interval] = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "epsilons": self.epsilons,
            "clean": self.clean,
            "accuracy": self.accuracy,
            "clean_ci": None if self.clean_interval is None else self.clean_interval.to_dict(),
            "accuracy_ci": {
                name: [None if interval is None else interval.to_dict() for interval in values]
                for name, values in self.intervals.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SweepResult":
        """The sweep :meth:`to_dict` wrote; reports written before intervals were kept have none."""
        intervals = {
            name: [None if item is None else Interval.from_dict(item) for item in values]
            for name, values in (data.get("accuracy_ci") or {}).items()
        }
        clean = data.get("clean_ci")
        return cls(
            model=str(data["model"]),
            epsilons=[float(eps) for eps in data["epsilons"]],
            clean=json_float(data["clean"]),
            accuracy={name: json_floats(values).tolist() for name, values in data["accuracy"].items()},
            intervals=intervals,
            clean_interval=None if clean is None else Interval.from_dict(clean),
        )


def sweep_from_report(report: RobustnessReport) -> SweepResult:
    """Arrange a report holding attacks at several epsilons as curves (no new computation)."""
    epsilons: list[float] = []
    for result in report.attacks:
        eps = result.spec.eps
        if eps is not None and not any(same_eps(eps, seen) for seen in epsilons):
            epsilons.append(eps)
    epsilons.sort()
    names = list(dict.fromkeys(result.spec.name for result in report.attacks if result.spec.eps is not None))
    accuracy, intervals = {}, {}
    for name in names:
        found = [report.find(name, eps) for eps in epsilons]
        title = attack_class(name).title
        accuracy[title] = [r.accuracy if r is not None else float("nan") for r in found]
        intervals[title] = [r.outcome.accuracy_interval if r is not None else None for r in found]
    # The worst case only where every attack ran (not at a budget where one ran alone for the curve):
    # over fewer attacks it would be a different figure drawn on the same line.
    combined = [report.combined_at(eps) for eps in epsilons]
    most = max((len(result.attacks) for result in combined), default=0)
    full = [len(result.attacks) == most for result in combined]
    accuracy[WORST_CASE] = [r.accuracy if ok else float("nan") for r, ok in zip(combined, full)]
    intervals[WORST_CASE] = [r.outcome.accuracy_interval if ok else None for r, ok in zip(combined, full)]
    return SweepResult(
        report.model, epsilons, report.clean.accuracy, accuracy, intervals, report.clean.accuracy_interval
    )


def epsilon_sweep(
    model: nn.Module,
    dataset: Dataset,
    indices: Optional[Sequence[int]],
    epsilons: Sequence[float],
    attacks: Sequence[str] = ("fgsm", "pgd"),
    *,
    params: Optional[Mapping[str, Mapping[str, Any]]] = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: Optional[ProgressCallback] = None,
    model_name: str = "model",
) -> SweepResult:
    """Run every attack at every epsilon (extra ``params`` per attack name) and return the curves."""
    params = params or {}
    specs = [
        AttackSpec(name, {**params.get(name, {}), "eps": eps}, f"{name} ε={format_epsilon(eps)}")
        for eps in sorted(epsilons)
        for name in attacks
    ]
    result = evaluate(
        model,
        dataset,
        indices,
        specs,
        batch_size=batch_size,
        device=device,
        progress=progress,
        model_name=model_name,
    )
    return sweep_from_report(result)


@dataclass
class MinimalEpsilon:
    """Per scan, the smallest L∞ budget found that flips it (``inf``: not flipped up to the cap)."""

    model: str
    attack: str
    values: np.ndarray  #: float [N]; 0 for scans the model already misclassifies
    labels: np.ndarray  #: int [N]
    correct: np.ndarray  #: bool [N]: classified correctly without attack

    def share_flipped(self, eps: float) -> float:
        """Fraction of correctly classified scans flipped within ``eps``."""
        attacked = self.values[self.correct]
        return float(np.mean(attacked <= eps)) if attacked.size else float("nan")

    def quantiles(self, q: Sequence[float] = (0.1, 0.25, 0.5, 0.75, 0.9)) -> dict[str, float]:
        attacked = self.values[self.correct]
        if not attacked.size:
            return {f"q{round(p * 100)}": float("nan") for p in q}
        # an actual scan's value (no interpolation): a quantile among never-flipped scans is inf, not NaN
        return {f"q{round(p * 100)}": float(np.quantile(attacked, p, method="inverted_cdf")) for p in q}

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "attack": self.attack,
            "values": [v if np.isfinite(v) else None for v in self.values.tolist()],
            "labels": self.labels.tolist(),
            "correct": self.correct.tolist(),
            "quantiles": self.quantiles(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MinimalEpsilon:
        """The result :meth:`to_dict` wrote; a null value (never flipped) reads as ``inf`` again."""
        values = np.array([np.inf if v is None else float(v) for v in data["values"]], dtype=np.float64)
        return cls(
            str(data["model"]),
            str(data["attack"]),
            values,
            np.asarray(data["labels"], dtype=np.int64),
            np.asarray(data["correct"], dtype=bool),
        )


def minimal_epsilon_distribution(
    model: nn.Module,
    dataset: Dataset,
    indices: Optional[Sequence[int]],
    *,
    attack: str = "pgd",
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: Optional[ProgressCallback] = None,
    model_name: str = "model",
    shards: Shards = Shards(),
    **search: Any,
) -> MinimalEpsilon:
    """Minimal flipping epsilon of every scan (``search`` goes to :func:`minimal_epsilon`);
    ``shards`` splits the batches among torchrun's processes, as in :func:`.evaluate`."""
    chosen = resolve_indices(dataset, indices)
    device = model_device(model, device)
    values = np.zeros(chosen.size)
    labels = np.zeros(chosen.size, dtype=np.int64)
    batches = shards.share(-(-chosen.size // batch_size))
    for number, (span, x, y) in enumerate(iter_batches(dataset, chosen, batch_size, device, shards)):
        report(progress, number, batches, f"minimal epsilon, batch {number + 1}/{batches}")
        labels[span] = y.cpu().numpy()
        values[span] = minimal_epsilon(model, x, y, attack=attack, **search).numpy()
    found = shards.gather_rows(
        chosen.size, batch_size, {"values": values, "labels": labels}, f"{model_name}'s minimal epsilons"
    )
    values, labels = found["values"], found["labels"]
    report(progress, batches, batches, "done")
    # minimal_epsilon gives 0 exactly for scans misclassified without attack, > 0 otherwise
    return MinimalEpsilon(model_name, attack, values, labels, values > 0)
