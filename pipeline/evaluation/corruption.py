"""Robustness to what happens by accident: CT corruptions at five severities, the ImageNet-C way.

Each model classifies every evaluated scan under each corruption at severities 1-5
(:mod:`pipeline.attacks.corruptions`), as ImageNet-C does (Hendrycks & Dietterich 2019,
"Benchmarking neural network robustness to common corruptions and perturbations",
https://arxiv.org/abs/1903.12261) and MedMNIST-C for medical images (Di Salvo et al. 2024,
https://arxiv.org/abs/2406.17536). Unlike an attack, a corruption is applied to every scan, the
ones the model already got wrong included, and its error counts all of them.

Against a baseline model (the standardly trained one, by convention), per corruption ``c``:

- corruption error ``CE_c = Σ_s E_{s,c} / Σ_s E^base_{s,c}`` (``E``: error rate at severity ``s``),
  and the mean corruption error ``mCE``, the mean of ``CE_c`` over the corruptions;
- relative corruption error ``Σ_s (E_{s,c} - E_clean) / Σ_s (E^base_{s,c} - E^base_clean)``, how much
  a model *loses* to the corruption compared with the baseline, and its mean, relative mCE.

100% is the baseline's own value; below 100% is better. A ratio whose baseline made no error (or
lost nothing) under a corruption is undefined (NaN) and left out of the mean, which then covers
the corruptions that remain. Every figure carries a 95% interval by the bootstrap of
:mod:`.intervals` (resampling whole groups where the split is grouped).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Final, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline.attacks import attack_class, get_attack
from pipeline.attacks.corruptions import Corruption
from pipeline.errors import AttackParameterError, UserInputError
from pipeline.evaluation.batches import groups_of, iter_batches, model_device, predict, resolve_indices
from pipeline.evaluation.intervals import (
    BOOTSTRAP,
    GROUP_BOOTSTRAP,
    Interval,
    bootstrap_interval,
    dense_groups,
    mean_interval,
    proportion_interval,
)
from pipeline.evaluation.shards import Shards
from pipeline.guard import exclusive_eval
from pipeline.progress import ProgressCallback, report

#: The CT corruptions the evaluation runs, in the order of its tables.
CT_CORRUPTIONS: Final[tuple[str, ...]] = (
    "low-dose",
    "streaks",
    "rings",
    "motion-blur",
    "jpeg",
    "window-shift",
    "downsample",
)
SEVERITIES: Final[tuple[int, ...]] = (1, 2, 3, 4, 5)


@dataclass
class CorruptionReport:
    """One model's answers on the same scans under each corruption and severity."""

    model: str
    corruptions: list[str]
    indices: np.ndarray  #: int [N]: the scans of the dataset, in order
    labels: np.ndarray  #: int [N]
    clean_correct: np.ndarray  #: bool [N]
    correct: np.ndarray  #: bool [corruptions, severities, N]
    groups: Optional[np.ndarray] = None  #: int [N]; None: independent scans
    seconds: float = 0.0

    @property
    def scans(self) -> int:
        return int(self.labels.size)

    @property
    def clean_error(self) -> float:
        return float(1.0 - self.clean_correct.mean())

    def errors(self) -> np.ndarray:
        """Error rate per corruption and severity, float ``[corruptions, severities]``."""
        return 1.0 - self.correct.mean(axis=2)

    def error_interval(self, corruption: int, severity: int) -> Interval:
        """Error rate of corruption number ``corruption`` at severity number ``severity`` (0-based)."""
        return proportion_interval(~self.correct[corruption, severity], self.groups)

    def mean_error_interval(self, corruption: int) -> Interval:
        """Error of corruption number ``corruption`` averaged over the severities, with a bootstrap
        interval over the scans (their groups, where the split is grouped)."""
        return mean_interval((~self.correct[corruption]).mean(axis=0), self.groups)

    def to_dict(self) -> dict[str, Any]:
        errors = self.errors()
        return {
            "model": self.model,
            "scans": self.scans,
            "indices": self.indices.tolist(),
            "labels": self.labels.tolist(),
            "groups": None if self.groups is None else self.groups.tolist(),
            "clean_correct": self.clean_correct.tolist(),
            "severities": list(SEVERITIES),
            "clean_error": self.clean_error,
            "clean_error_ci": proportion_interval(~self.clean_correct, self.groups).to_dict(),
            "seconds": self.seconds,
            "corruptions": [
                {
                    "name": name,
                    "title": attack_class(name).title,
                    "errors": errors[c].tolist(),
                    "errors_ci": [self.error_interval(c, s).to_dict() for s in range(len(SEVERITIES))],
                    "mean_error": float(errors[c].mean()),
                    "mean_error_ci": self.mean_error_interval(c).to_dict(),
                    "correct": self.correct[c].tolist(),
                }
                for c, name in enumerate(self.corruptions)
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CorruptionReport":
        """The report :meth:`to_dict` wrote, every scan's answers included."""
        return cls(
            model=str(data["model"]),
            corruptions=[str(entry["name"]) for entry in data["corruptions"]],
            indices=np.asarray(data["indices"], dtype=np.int64),
            labels=np.asarray(data["labels"], dtype=np.int64),
            clean_correct=np.asarray(data["clean_correct"], dtype=bool),
            correct=np.asarray([entry["correct"] for entry in data["corruptions"]], dtype=bool).reshape(
                len(data["corruptions"]), len(SEVERITIES), len(data["labels"])
            ),
            groups=None if data.get("groups") is None else np.asarray(data["groups"], dtype=np.int64),
            seconds=float(data.get("seconds") or 0.0),
        )


@dataclass
class CorruptionErrors:
    """Corruption errors of one model relative to a baseline model, ImageNet-C's CE and mCE.

    Each value is a fraction (1.0 = the baseline's own), per corruption in ``corruptions`` order.
    """

    model: str
    baseline: str
    corruptions: list[str]
    ce: list[Interval]
    mce: Interval
    relative_ce: list[Interval]
    relative_mce: Interval

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "baseline": self.baseline,
            "ce": {name: value.to_dict() for name, value in zip(self.corruptions, self.ce)},
            "mce": self.mce.to_dict(),
            "relative_ce": {name: value.to_dict() for name, value in zip(self.corruptions, self.relative_ce)},
            "relative_mce": self.relative_mce.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CorruptionErrors":
        names = list(data["ce"])
        return cls(
            model=str(data["model"]),
            baseline=str(data["baseline"]),
            corruptions=names,
            ce=[Interval.from_dict(data["ce"][name]) for name in names],
            mce=Interval.from_dict(data["mce"]),
            relative_ce=[Interval.from_dict(data["relative_ce"][name]) for name in names],
            relative_mce=Interval.from_dict(data["relative_mce"]),
        )


def corruption_names(text: str) -> tuple[str, ...]:
    """The corruptions a user asked for: "" or "none" for none, "ct" for :data:`CT_CORRUPTIONS`, else
    comma-separated registered corruption names. Raises AttackParameterError naming a bad one."""
    wanted = [name.strip().lower() for name in text.split(",") if name.strip()]
    if wanted in ([], ["none"]):
        return ()
    if wanted == ["ct"]:
        return CT_CORRUPTIONS
    for name in wanted:
        _corruptions(name)
    return tuple(dict.fromkeys(wanted))


def corruption_benchmark(
    model: nn.Module,
    dataset: Dataset,
    indices: Optional[Sequence[int]],
    corruptions: Sequence[str] = CT_CORRUPTIONS,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: Optional[ProgressCallback] = None,
    model_name: str = "model",
    groups: Optional[Sequence[int] | np.ndarray] = None,
    shards: Shards = Shards(),
) -> CorruptionReport:
    """Classify ``dataset[indices]`` clean and under each corruption at severities 1-5.

    The five severities of a corruption go through the model as one batch. Random corruptions
    (noise, streak angles) draw from a seed that is the batch's first position, so a run is
    repeatable. ``groups`` gives each scan of ``dataset`` a group id, as in :func:`.evaluate`;
    ``shards`` splits the batches among torchrun's processes, as there.
    Raises AttackParameterError for a name that is not a registered corruption.
    """
    makers = [_corruptions(name) for name in corruptions]  # unknown names fail before any work
    chosen = resolve_indices(dataset, indices)
    chosen_groups = groups_of(groups, dataset, chosen)
    device = model_device(model, device)
    count, levels = chosen.size, len(SEVERITIES)
    labels = np.zeros(count, dtype=np.int64)
    clean_correct = np.zeros(count, dtype=bool)
    correct = np.zeros((len(makers), levels, count), dtype=bool)
    batches = shards.share(math.ceil(count / batch_size))
    total = batches * len(makers)
    started = time.perf_counter()
    with exclusive_eval(model):
        for number, (span, x, y) in enumerate(iter_batches(dataset, chosen, batch_size, device, shards)):
            labels[span] = y.cpu().numpy()
            clean_correct[span] = (predict(model, x) == y).cpu().numpy()
            for c, make in enumerate(makers):
                message = f"{corruptions[c]}, batch {number + 1}/{batches}"
                report(progress, number * len(makers) + c, total, message)
                corrupted = torch.cat([make(severity, span.start).corrupt(x) for severity in SEVERITIES])
                answers = predict(model, corrupted).view(levels, -1)
                correct[c, :, span] = (answers == y).cpu().numpy()
    found = shards.gather_rows(
        count,
        batch_size,
        {"labels": labels, "clean_correct": clean_correct, "correct": correct},
        f"{model_name}'s answers to corrupted scans",
        axes={"correct": 2},
    )
    labels, clean_correct, correct = found["labels"], found["clean_correct"], found["correct"]
    report(progress, total, total, "corruptions done")
    return CorruptionReport(
        model=model_name,
        corruptions=list(corruptions),
        indices=chosen,
        labels=labels,
        clean_correct=clean_correct,
        correct=correct,
        groups=chosen_groups,
        seconds=time.perf_counter() - started,
    )


def corruption_errors(
    result: CorruptionReport, baseline: CorruptionReport, *, seed: int = 0
) -> CorruptionErrors:
    """CE, mCE, relative CE and relative mCE of ``result`` against ``baseline`` (same scans, same
    corruptions), with 95% bootstrap intervals. Raises UserInputError when they do not match."""
    if result.corruptions != baseline.corruptions or not np.array_equal(result.indices, baseline.indices):
        raise UserInputError(
            f"{result.model} and {baseline.model} were not run on the same scans and corruptions; "
            "corruption errors compare models only on the same ones"
        )
    ids = dense_groups(result.groups, result.scans)
    method, group_count = (BOOTSTRAP, None) if ids is None else (GROUP_BOOTSTRAP, int(ids.max()) + 1)
    ids = np.arange(result.scans) if ids is None else ids
    # Per scan and corruption, how many of the five severities it gets wrong: sums of these over the
    # scans are the numerators and denominators of every ratio below.
    wrong = (~result.correct).sum(axis=1).astype(np.float64)  # [C, N]
    wrong_base = (~baseline.correct).sum(axis=1).astype(np.float64)
    lost = wrong - len(SEVERITIES) * (~result.clean_correct)
    lost_base = wrong_base - len(SEVERITIES) * (~baseline.clean_correct)

    def ratios(numerator: np.ndarray, denominator: np.ndarray) -> tuple[list[Interval], Interval]:
        each = _ratio(numerator.sum(axis=1), denominator.sum(axis=1))
        per_corruption = [
            Interval(float(value), *bootstrap_interval(
                lambda weights, c=c: _ratio(weights @ numerator[c], weights @ denominator[c]), ids, seed=seed
            ), method, result.scans, group_count)
            for c, value in enumerate(each)
        ]
        defined = np.isfinite(each)
        if not defined.any():
            return per_corruption, Interval(math.nan, math.nan, math.nan, method, result.scans, group_count)
        top, bottom = numerator[defined], denominator[defined]
        mean = Interval(float(each[defined].mean()), *bootstrap_interval(
            lambda weights: _ratio(weights @ top.T, weights @ bottom.T).mean(axis=1), ids, seed=seed
        ), method, result.scans, group_count)
        return per_corruption, mean

    ce, mce = ratios(wrong, wrong_base)
    relative_ce, relative_mce = ratios(lost, lost_base)
    return CorruptionErrors(
        result.model, baseline.model, result.corruptions, ce, mce, relative_ce, relative_mce
    )


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` where the baseline's figure is positive, NaN where it is not."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


def _corruptions(name: str):
    """A maker ``(severity, seed) -> Corruption`` for the registered corruption ``name``."""
    cls = attack_class(name)
    if not issubclass(cls, Corruption):
        raise AttackParameterError(f"{name} is not a corruption; choose from {', '.join(CT_CORRUPTIONS)}")
    seeded = any(param.name == "seed" for param in cls.params)

    def make(severity: int, seed: int) -> Corruption:
        params = {"severity": severity, **({"seed": seed} if seeded else {})}
        return get_attack(name, **params)  # type: ignore[return-value]

    return make
