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
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline.attacks import attack_class
from pipeline.constants import SYNTHETIC_BANNER
from pipeline.errors import AttackParameterError, UserInputError
from pipeline.evaluation.certify import CertifiedCurve, certified_accuracy_curve, check_settings
from pipeline.evaluation.defenses import DefenseResult, evaluate_defense, make_defense
from pipeline.evaluation.reference import ATTACK_COLUMNS, ReferenceTable, reference_attacks, reference_table
from pipeline.evaluation.robustness import AttackSpec, RobustnessReport, evaluate, same_eps
from pipeline.evaluation.strength import StrengthReport, StrengthSettings, strength_checks
from pipeline.evaluation.sweeps import (
    MinimalEpsilon,
    SweepResult,
    minimal_epsilon_distribution,
    sweep_from_report,
)
from pipeline.evaluation.transfer import TransferResult, transfer_matrix
from pipeline.params import from_mapping, setting, validate_fields
from pipeline.progress import ProgressCallback, report, staged
from pipeline.units import format_epsilon, parse_epsilon, parse_epsilons

#: Radii (L2, image scale) at which certified accuracy is reported.
CERTIFY_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


@dataclass(frozen=True)
class SuiteSettings:
    """What to run; every field has a CLI flag. Each is checked here, before any model is loaded:
    an unknown attack or defence, an epsilon out of range or a count below 1 raises
    :class:`UserInputError` naming it."""

    attacks: tuple[str, ...] = setting(
        ("fgsm", "pgd", "cw-linf"),
        help="registry names of L∞ attacks: fgsm, pgd, cw-linf (the reference table's) and e.g. apgd",
    )
    #: L∞ budgets in image scale; text such as "2/255,4/255" is read as people write it.
    epsilons: tuple[float, ...] = (4 / 255,)
    steps: int = setting(10, low=1, high=10_000, help="steps of PGD and CW")
    strength: bool = setting(True, help="run the strength checks beside every figure")
    strength_settings: StrengthSettings = field(default_factory=StrengthSettings)
    transfer: bool = setting(True, help="transfer matrix between the runs, when there are several")
    minimal_epsilon: bool = setting(False, help="per-scan minimal flipping epsilon (PGD bisection)")
    certify_sigma: Optional[float] = setting(
        None, kind=float, help="certify by randomized smoothing with this noise level (e.g. 0.25)"
    )
    certify_n: int = setting(1000, low=10, high=10_000_000, help="noise samples per scan when certifying")
    defenses: tuple[str, ...] = ()
    batch_size: int = setting(32, low=1, high=4096, help="scans per batch")
    examples: int = setting(2, low=0, high=100, help="example scans kept per attack for the report")

    def __post_init__(self) -> None:
        validate_fields(self)
        attacks = tuple(dict.fromkeys(name.strip().lower() for name in self.attacks if name.strip()))
        if not attacks:
            raise UserInputError("no attack given; choose e.g. fgsm, pgd, cw-linf")
        epsilons = self.epsilons
        if isinstance(epsilons, str):
            values = parse_epsilons(epsilons)
        else:
            values = [parse_epsilon(eps) for eps in epsilons]
        if not values:
            raise UserInputError("no epsilon given; write a comma-separated list like 2/255,4/255")
        defenses = self.defenses.split(",") if isinstance(self.defenses, str) else self.defenses
        defenses = tuple(name.strip().lower() for name in defenses if name.strip())
        strength = StrengthSettings.from_dict(self.strength_settings)
        for name, value in (("attacks", attacks), ("epsilons", tuple(values)), ("defenses", defenses),
                            ("strength_settings", strength)):
            object.__setattr__(self, name, value)
        attack_specs(attacks, values, self.steps)  # unknown names and bad parameters fail here
        for name in defenses:
            make_defense(name)
        if self.certify_sigma is not None:
            check_settings(self.certify_sigma, 100, self.certify_n)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``epsilon_labels`` (k/255) is added for people and ignored by :meth:`from_dict`."""
        values = asdict(self)
        values["epsilon_labels"] = [format_epsilon(eps) for eps in self.epsilons]
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SuiteSettings:
        """Build from :meth:`to_dict`'s output or a settings file; unknown names are refused."""
        return from_mapping(cls, values, what="evaluation", ignored=("epsilon_labels",))


def attack_specs(names: Sequence[str], epsilons: Sequence[float], steps: int) -> list[AttackSpec]:
    """Specs for ``names`` at every epsilon; the reference table's attacks get its specs and labels."""
    specs: list[AttackSpec] = []
    unknown = [name for name in names if _has(name, "eps") is None]
    if unknown:
        raise AttackParameterError(
            f"attack(s) {', '.join(unknown)} have no epsilon budget and cannot be compared at a stated "
            "epsilon; choose from pgd, fgsm, cw-linf (CW's margin loss inside the L∞ ball; cw is "
            "CW-L2) and the other L∞ attacks (e.g. apgd, mifgsm, autoattack, square)"
        )
    for eps in epsilons:
        table = {spec.name: spec for spec in reference_attacks(eps, steps=steps)}
        for name in dict.fromkeys(names):
            if name in table:
                specs.append(table[name])
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
    #: False for the sections finished so far of an evaluation still running, or stopped before its end.
    complete: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "lunglab-evaluation",
            "created": self.created,
            "dataset": self.dataset,
            "synthetic": self.synthetic,
            "notice": SYNTHETIC_BANNER if self.synthetic else None,
            "split": self.split,
            "scans": int(self.indices.size),
            "settings": self.settings.to_dict(),
            "device": self.device,
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
            "seconds": self.seconds,
            "complete": self.complete,
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
    on_section: Optional[Callable[[EvaluationSuite], None]] = None,
) -> EvaluationSuite:
    """Run the whole evaluation; ``info`` adds per-model facts (run directory, strategy) to the report.

    ``on_section`` receives the suite of every section finished so far (``complete=False``) each
    time one ends, so work that is cancelled or fails later is not lost with it.
    """
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
    common = dict(batch_size=settings.batch_size, device=device)
    evaluated: list[ModelEvaluation] = []
    transfer: Optional[TransferResult] = None

    def suite(complete: bool) -> EvaluationSuite:
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
            if any(name in ATTACK_COLUMNS for name in settings.attacks)
            else []
        )
        first = reports[0]
        return EvaluationSuite(
            dataset=first.dataset,
            synthetic=any(r.synthetic for r in reports),
            split=split,
            indices=first.indices,
            settings=settings,
            models=list(evaluated),
            tables=tables,
            transfer=transfer,
            device=first.device,
            seconds=time.perf_counter() - started,
            complete=complete,
        )

    def next_stage(label: str) -> Optional[ProgressCallback]:
        """The progress of the next section; the sections before it are finished: hand them over."""
        if on_section is not None and evaluated:
            on_section(suite(complete=False))
        return staged(progress, next(stage_numbers), stage_count, label, separator=" — ")

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
        evaluated.append(entry)  # filled in section by section below
        for eps in settings.epsilons if settings.strength else ():
            entry.strength.append(
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
            )
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
    if settings.transfer and len(models) > 1:
        transfer = transfer_matrix(
            models,
            dataset,
            evaluated[0].report.indices,
            reference_attacks(max(settings.epsilons), steps=settings.steps)[0],
            progress=next_stage("transfer matrix"),
            **common,
        )
    report(progress, 1, 1, "evaluation done")
    return suite(complete=True)
