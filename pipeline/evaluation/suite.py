"""A whole evaluation of several models on the same scans: what the CLI and the dashboard run.

For every model: the attacks at every epsilon (one pass, one clean forward per batch), the
strength checks at every epsilon, and optionally minimal epsilons, randomized-smoothing
certificates and input-transformation defences; across models, the transfer matrix and the
reference table per epsilon.
"""

from __future__ import annotations

import itertools
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline.attacks import attack_class
from pipeline.errors import AttackParameterError
from pipeline.evaluation.certify import CertifiedCurve, certified_accuracy_curve
from pipeline.evaluation.defenses import DefenseResult, evaluate_defense, make_defense
from pipeline.evaluation.reference import ReferenceTable, reference_attacks, reference_table
from pipeline.evaluation.robustness import AttackSpec, RobustnessReport, evaluate, same_eps
from pipeline.evaluation.strength import StrengthReport, StrengthSettings, strength_checks
from pipeline.evaluation.sweeps import (
    MinimalEpsilon,
    SweepResult,
    minimal_epsilon_distribution,
    sweep_from_report,
)
from pipeline.evaluation.transfer import TransferResult, transfer_matrix
from pipeline.progress import ProgressCallback, report, staged
from pipeline.units import format_epsilon

#: Names of the reference table's columns on the command line; ``cw`` is CW inside the L∞ ball.
TABLE_ATTACKS = {"pgd": "pgd", "fgsm": "fgsm", "cw": "cw-linf"}
#: Radii (L2, image scale) at which certified accuracy is reported.
CERTIFY_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


@dataclass(frozen=True)
class SuiteSettings:
    """What to run; every field has a CLI flag."""

    attacks: tuple[str, ...] = ("fgsm", "pgd", "cw")
    epsilons: tuple[float, ...] = (4 / 255,)
    steps: int = 10
    strength: bool = True
    strength_settings: StrengthSettings = StrengthSettings()
    transfer: bool = True
    minimal_epsilon: bool = False
    certify_sigma: Optional[float] = None
    certify_n: int = 1000
    defenses: tuple[str, ...] = ()
    batch_size: int = 32
    examples: int = 2

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["epsilon_labels"] = [format_epsilon(eps) for eps in self.epsilons]
        return values


def attack_specs(names: Sequence[str], epsilons: Sequence[float], steps: int) -> list[AttackSpec]:
    """Specs for ``names`` at every epsilon; ``pgd``/``fgsm``/``cw`` are the reference table's attacks."""
    specs: list[AttackSpec] = []
    unknown = [name for name in names if name not in TABLE_ATTACKS and _has(name, "eps") is None]
    if unknown:
        raise AttackParameterError(
            f"attack(s) {', '.join(unknown)} have no epsilon budget and cannot be compared at a stated "
            "epsilon; choose from pgd, fgsm, cw and the other L∞ attacks (e.g. apgd, mifgsm, autoattack, "
            "square)"
        )
    for eps in epsilons:
        table = {spec.name: spec for spec in reference_attacks(eps, steps=steps)}
        for name in dict.fromkeys(names):
            if name in TABLE_ATTACKS:
                specs.append(table[TABLE_ATTACKS[name]])
            else:
                params = {"eps": eps, **({"steps": steps} if _has(name, "steps") else {})}
                specs.append(AttackSpec(name, params))
    return specs


def _has(name: str, param: str) -> Optional[bool]:
    """True when attack ``name`` takes ``param``; None for an attack without an epsilon budget."""
    cls = attack_class(name)
    if cls.norm is None or not any(p.name == "eps" for p in cls.params):
        return None
    return any(p.name == param for p in cls.params)


@dataclass
class ModelEvaluation:
    """Everything measured on one model."""

    name: str
    report: RobustnessReport
    sweep: SweepResult
    strength: list[StrengthReport] = field(default_factory=list)
    minimal: Optional[MinimalEpsilon] = None
    certified: Optional[CertifiedCurve] = None
    defenses: list[DefenseResult] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  #: run directory, architecture, training strategy

    def strength_at(self, eps: float) -> Optional[StrengthReport]:
        return next((check for check in self.strength if same_eps(check.eps, eps)), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "info": self.info,
            "report": self.report.to_dict(),
            "sweep": self.sweep.to_dict(),
            "strength": [check.to_dict() for check in self.strength],
            "minimal_epsilon": self.minimal.to_dict() if self.minimal else None,
            "certified": self.certified.to_dict() if self.certified else None,
            "defenses": [result.to_dict() for result in self.defenses],
        }


@dataclass
class EvaluationSuite:
    """Several models evaluated on the same scans with the same settings."""

    dataset: str
    synthetic: bool
    split: str
    indices: np.ndarray
    settings: SuiteSettings
    models: list[ModelEvaluation]
    tables: list[ReferenceTable]
    transfer: Optional[TransferResult]
    device: str
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "lunglab-evaluation",
            "created": self.created,
            "dataset": self.dataset,
            "synthetic": self.synthetic,
            "notice": "synthetic data — not a medical result" if self.synthetic else None,
            "split": self.split,
            "scans": int(self.indices.size),
            "settings": self.settings.to_dict(),
            "device": self.device,
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
            "seconds": self.seconds,
            "reference_tables": [table.to_dict() for table in self.tables],
            "models": [model.to_dict() for model in self.models],
            "transfer": self.transfer.to_dict() if self.transfer else None,
        }


def evaluate_models(
    models: Mapping[str, nn.Module],
    dataset: Dataset,
    indices: Optional[Sequence[int]],
    settings: SuiteSettings = SuiteSettings(),
    *,
    split: str = "test",
    info: Optional[Mapping[str, dict[str, Any]]] = None,
    device: str | torch.device | None = None,
    progress: Optional[ProgressCallback] = None,
) -> EvaluationSuite:
    """Run the whole evaluation; ``info`` adds per-model facts (run directory, strategy) to the report."""
    started = time.perf_counter()
    specs = attack_specs(settings.attacks, settings.epsilons, settings.steps)
    defenses = [make_defense(name) for name in settings.defenses]  # unknown names fail before any work
    stage_count = (
        len(models)
        * (
            1
            + settings.strength * len(settings.epsilons)
            + settings.minimal_epsilon
            + (settings.certify_sigma is not None)
            + len(settings.defenses)
        )
        + (settings.transfer and len(models) > 1)
    )
    stage_numbers = itertools.count()

    def next_stage(label: str) -> Optional[ProgressCallback]:
        return staged(progress, next(stage_numbers), stage_count, label, separator=" — ")

    common = dict(batch_size=settings.batch_size, device=device)
    evaluated = []
    for name, model in models.items():
        result = evaluate(
            model,
            dataset,
            indices,
            specs,
            model_name=name,
            examples=settings.examples,
            progress=next_stage(f"{name}: attacks"),
            **common,
        )
        entry = ModelEvaluation(
            name, result, sweep_from_report(result), info=dict((info or {}).get(name, {}))
        )
        if settings.strength:
            entry.strength = [
                strength_checks(
                    model,
                    dataset,
                    result.indices,
                    eps,
                    baseline=result,
                    settings=settings.strength_settings,
                    model_name=name,
                    progress=next_stage(f"{name}: strength checks at ε={format_epsilon(eps)}"),
                    **common,
                )
                for eps in settings.epsilons
            ]
        if settings.minimal_epsilon:
            entry.minimal = minimal_epsilon_distribution(
                model,
                dataset,
                result.indices,
                model_name=name,
                progress=next_stage(f"{name}: minimal epsilon"),
                **common,
            )
        if settings.certify_sigma is not None:
            entry.certified = certified_accuracy_curve(
                model,
                dataset,
                result.indices,
                settings.certify_sigma,
                CERTIFY_RADII,
                settings.certify_n,
                device=device,
                progress=next_stage(f"{name}: certification"),
            )
        for defense in defenses:
            entry.defenses.append(
                evaluate_defense(
                    model,
                    defense,
                    dataset,
                    result.indices,
                    reference_attacks(max(settings.epsilons), steps=settings.steps)[0],
                    progress=next_stage(f"{name}: defence {defense.name}"),
                    **common,
                )
            )
        evaluated.append(entry)
    transfer = None
    if settings.transfer and len(models) > 1:
        transfer = transfer_matrix(
            models,
            dataset,
            evaluated[0].report.indices,
            reference_attacks(max(settings.epsilons), steps=settings.steps)[0],
            progress=next_stage("transfer matrix"),
            **common,
        )
    reports = [entry.report for entry in evaluated]
    tables = (
        [
            reference_table(
                reports,
                eps,
                {
                    entry.name: entry.strength_at(eps)
                    for entry in evaluated
                    if entry.strength_at(eps) is not None
                },
            )
            for eps in settings.epsilons
        ]
        if any(name in TABLE_ATTACKS for name in settings.attacks)
        else []
    )
    report(progress, 1, 1, "evaluation done")
    first = reports[0]
    return EvaluationSuite(
        dataset=first.dataset,
        synthetic=any(r.synthetic for r in reports),
        split=split,
        indices=first.indices,
        settings=settings,
        models=evaluated,
        tables=tables,
        transfer=transfer,
        device=first.device,
        seconds=time.perf_counter() - started,
    )
