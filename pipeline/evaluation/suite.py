"""A whole evaluation of several models on the same scans: what the CLI and the dashboard run.

For every model: the attacks at every epsilon (one pass, one clean forward per batch), the strength
checks (at the largest epsilon on the quick level, at every one on the full), calibration clean and
under each attack, the CT corruptions at five severities, the faithfulness of its Grad-CAM maps, and
optionally minimal epsilons, randomized-smoothing certificates and input-transformation defences;
for an ensemble of runs (:class:`.ensemble.Ensemble`), each member's and the whole ensemble's attack
measured on every member and the ensemble; across models, the transfer matrix, the reference table
per epsilon, corruption errors against the baseline model and a paired comparison of each model with
the baseline on every figure. Each section's wall time is kept (``ModelEvaluation.seconds``), so a
report says where its time went.

Whatever compares or combines models is given the same scans by construction: every model is
attacked on one resolved set of scans, the strength checks and the transfer matrix share one
subset chosen once for all models (:func:`check_scans`), and a paired comparison pairs two
models' answers by dataset index, on the scans both answered (:func:`paired_answers`), and only
where both figures mean the same thing (a worst case over the same attacks).
"""

from __future__ import annotations

import itertools
import platform
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline.attacks import attack_class, transfer_attacks
from pipeline.constants import SYNTHETIC_BANNER
from pipeline.errors import AttackParameterError, UserInputError
from pipeline.evaluation.calibration import Calibration, calibration
from pipeline.evaluation.certify import CertifiedCurve, certified_accuracy_curve, check_settings
from pipeline.evaluation.corruption import (
    CorruptionErrors,
    CorruptionReport,
    corruption_benchmark,
    corruption_errors,
    corruption_names,
)
from pipeline.evaluation.data import balanced_subset
from pipeline.evaluation.defenses import DefenseResult, evaluate_defense, make_defense, training_defenses
from pipeline.evaluation.ensemble import Ensemble, EnsembleResult, evaluate_ensemble
from pipeline.evaluation.detectors import (
    FALSE_POSITIVE_RATE,
    DetectorResult,
    check_rate,
    detector_names,
    evaluate_detector,
    fit_detectors,
)
from pipeline.evaluation.faithfulness import FaithfulnessReport, explanation_faithfulness
from pipeline.evaluation.ood import fit_scans
from pipeline.evaluation.intervals import PairedComparison, paired_comparison
from pipeline.evaluation.reference import ATTACK_COLUMNS, ReferenceTable, reference_attacks, reference_table
from pipeline.evaluation.robustness import AttackSpec, Outcome, RobustnessReport, evaluate, same_eps
from pipeline.evaluation.shards import Shards
from pipeline.evaluation.strength import StrengthReport, StrengthSettings, strength_checks
from pipeline.evaluation.sweeps import (
    MinimalEpsilon,
    SweepResult,
    minimal_epsilon_distribution,
    sweep_from_report,
)
from pipeline.evaluation.transfer import TransferResult, transfer_matrix
from pipeline.evaluation.verdict import Verdict, defence_verdicts
from pipeline.params import from_mapping, setting, validate_fields
from pipeline.progress import Phase, ProgressCallback, report, staged
from pipeline.units import format_epsilon, parse_epsilon, parse_epsilons

#: Budgets the robustness curve adds to the table's by default: with the table's 4/255 and the clean
#: scans, ε = 0, 1, 2, 4 and 8/255, the span medical-imaging work uses (REFERENCES.md, "Settings
#: the field uses": 1/255 to 8/255).
CURVE_EPSILONS: tuple[float, ...] = (1 / 255, 2 / 255, 8 / 255)
#: The attack the curve runs at its own budgets: iterative, and the one every strength check is
#: measured against.
CURVE_ATTACK = "pgd"

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
    #: More budgets for the robustness curve (accuracy against ε), where PGD alone runs when it is
    #: among the attacks: a curve costs one attack per budget, not the whole table's. A budget also
    #: in ``epsilons`` runs once; the strength checks reuse these results where their ladder meets
    #: one. Read like ``epsilons``; empty: the curve has the table's budgets only.
    curve_epsilons: tuple[float, ...] = CURVE_EPSILONS
    steps: int = setting(10, low=1, high=10_000, help="steps of PGD and CW")
    strength: bool = setting(True, help="run the strength checks beside every figure")
    #: The quick level by default (:data:`.strength.QUICK_STRENGTH`); FULL_STRENGTH for a GPU.
    strength_settings: StrengthSettings = field(default_factory=StrengthSettings)
    calibration: bool = setting(True, help="calibration clean and under each attack (no extra passes)")
    #: Registered corruptions run at severities 1-5; none by default, since every scan then goes
    #: through the model 35 times for the CT set (:data:`.corruption.CT_CORRUPTIONS`): about as
    #: long as the attack table takes. Text such as "ct" or "jpeg,rings" is read as on the CLI.
    corruptions: tuple[str, ...] = ()
    faithfulness_scans: int = setting(
        16, low=0, high=1_000_000, help="scans whose Grad-CAM maps ROAD scores, clean and attacked (0: none)"
    )
    faithfulness_imputation: str = setting(
        "linear", choices=("linear", "blur"), help="how ROAD fills removed pixels: the paper's linear or blur"
    )
    early_stop: bool = setting(
        True, help="stop attacking a scan once it is fooled: the same accuracies for less work"
    )
    transfer: bool = setting(True, help="transfer matrix between the runs, when there are several")
    transfer_attack: str = setting(
        "pgd",
        choices=tuple(transfer_attacks()),
        help="attack the transfer matrix crafts on each model, at the largest epsilon: pgd, or one made to "
        "transfer (mifgsm and the DI-, TI-, NI-, SI-NI- and VMI-FGSM family)",
    )
    minimal_epsilon: bool = setting(False, help="per-scan minimal flipping epsilon (PGD bisection)")
    certify_sigma: Optional[float] = setting(
        None, kind=float, help="certify by randomized smoothing with this noise level (e.g. 0.25)"
    )
    certify_n: int = setting(1000, low=10, high=10_000_000, help="noise samples per scan when certifying")
    defenses: tuple[str, ...] = ()
    #: Adversarial-example detectors (:data:`.detectors.DETECTORS`: mahalanobis, squeeze), each fitted
    #: on the runs' training scans, thresholded on their validation scans, and measured against PGD and
    #: its adaptive attack at the largest epsilon. Text such as "mahalanobis,squeeze" is read as on the CLI.
    detectors: tuple[str, ...] = ()
    detector_fpr: float = setting(
        FALSE_POSITIVE_RATE, low=0.001, high=0.5,
        help="share of clean validation scans each detector's threshold flags (its false-positive rate)",
    )
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
        curve = self.curve_epsilons
        curve_values = (
            (parse_epsilons(curve) if curve.strip() else [])
            if isinstance(curve, str)
            else [parse_epsilon(eps) for eps in curve]
        )
        defenses = self.defenses.split(",") if isinstance(self.defenses, str) else self.defenses
        defenses = tuple(name.strip().lower() for name in defenses if name.strip())
        detectors = detector_names(self.detectors)
        check_rate(self.detector_fpr)
        strength = StrengthSettings.from_dict(self.strength_settings)
        corruptions = corruption_names(
            self.corruptions if isinstance(self.corruptions, str) else ",".join(self.corruptions)
        )
        for name, value in (("attacks", attacks), ("epsilons", tuple(values)), ("defenses", defenses),
                            ("detectors", detectors),
                            ("strength_settings", strength), ("corruptions", corruptions),
                            ("curve_epsilons", tuple(sorted(set(curve_values))))):
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
        values["curve_epsilon_labels"] = [format_epsilon(eps) for eps in self.curve_epsilons]
        values["strength_settings"] = self.strength_settings.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SuiteSettings:
        """Build from :meth:`to_dict`'s output or a settings file; unknown names are refused."""
        ignored = ("epsilon_labels", "curve_epsilon_labels")
        return from_mapping(cls, values, what="evaluation", ignored=ignored)

    @property
    def curve_only(self) -> tuple[float, ...]:
        """The curve's budgets not already in the table's: where :data:`CURVE_ATTACK` runs alone
        (none when it is not among the attacks)."""
        if CURVE_ATTACK not in self.attacks:
            return ()
        return tuple(eps for eps in self.curve_epsilons if not any(same_eps(eps, e) for e in self.epsilons))


def attack_specs(
    names: Sequence[str], epsilons: Sequence[float], steps: int, *, early_stop: bool = True
) -> list[AttackSpec]:
    """Specs for ``names`` at every epsilon; the reference table's attacks get its specs and labels.
    ``early_stop`` stops each attack that can on a scan once it is fooled."""
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
                spec = table[name]
            else:
                spec = AttackSpec(name, {"eps": eps, **({"steps": steps} if _has(name, "steps") else {})})
            # Accuracy needs only whether each scan can be fooled: stop attacking it once it is.
            if early_stop and _has(spec.name, "early_stop"):
                spec = AttackSpec(spec.name, {**spec.params, "early_stop": True}, spec.label)
            specs.append(spec)
    return specs


def _has(name: str, param: str) -> Optional[bool]:
    """True when attack ``name`` takes ``param``; None for an attack without an epsilon budget."""
    cls = attack_class(name)
    if cls.norm is None or not any(p.name == "eps" for p in cls.params):
        return None
    return any(p.name == param for p in cls.params)


@dataclass(frozen=True)
class Answers:
    """One model's answers under one condition, with the scans they are on: what a paired
    comparison pairs with another model's answers under the same condition."""

    condition: str  #: "clean", an attack's label, or "worst case ε=4/255"
    indices: np.ndarray  #: int [N]: the dataset index of each answer's scan
    outcome: Outcome  #: the answers on those N scans, in that order
    #: For a worst case, the attacks it is taken over: two worst cases compare only over the same ones.
    attacks: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        """What must be equal for two models' answers to be the same figure."""
        return self.condition, self.attacks


@dataclass
class ModelEvaluation:
    """Everything measured on one model."""

    name: str
    report: RobustnessReport
    sweep: SweepResult
    strength: list[StrengthReport] = field(default_factory=list)
    minimal: Optional[MinimalEpsilon] = None
    certified: Optional[CertifiedCurve] = None
    #: Each defence's naive and adaptive figures; an ensemble's section is one of them.
    defenses: list[DefenseResult | EnsembleResult] = field(default_factory=list)
    #: Each detector against PGD and its adaptive attack (:mod:`.detectors`).
    detectors: list[DetectorResult] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  #: run directory, architecture, training strategy
    #: Clean, under each attack, and the worst case per epsilon.
    calibration: list[Calibration] = field(default_factory=list)
    corruption: Optional[CorruptionReport] = None
    #: CE and mCE against the suite's baseline model (None for the baseline itself, or no corruptions).
    corruption_errors: Optional[CorruptionErrors] = None
    faithfulness: Optional[FaithfulnessReport] = None
    #: Wall time of each section, in seconds: attacks, strength checks, corruptions, ...
    seconds: dict[str, float] = field(default_factory=dict)
    #: Sections that could not be measured on this model, with why (e.g. nothing to explain).
    skipped: dict[str, str] = field(default_factory=dict)

    def strength_at(self, eps: float) -> Optional[StrengthReport]:
        return next((check for check in self.strength if same_eps(check.eps, eps)), None)

    @property
    def ensemble(self) -> Optional[EnsembleResult]:
        """The ensemble section, when this model is an ensemble of runs."""
        return next((result for result in self.defenses if isinstance(result, EnsembleResult)), None)

    def outcomes(self) -> list[Answers]:
        """Every set of answers compared across models: clean, each attack, the worst case per
        epsilon (over every attack the strength checks ran too, where they ran: on their scans;
        none where one attack ran alone, as at a budget of the curve only)."""
        scans = self.report.indices
        found = [Answers("clean", scans, self.report.clean)]
        found += [Answers(result.label, scans, result.outcome) for result in self.report.attacks]
        for combined in self.report.combined:
            check = self.strength_at(combined.eps) if combined.eps is not None else None
            if check is None and len(combined.attacks) == 1:
                continue  # over one attack alone (a curve's budget): that attack's own figure above
            worst, where = (combined, scans) if check is None else (check.worst_case, check.extra.indices)
            condition = f"worst case ε={format_epsilon(combined.eps)}"
            found.append(Answers(condition, where, worst.outcome, tuple(worst.attacks)))
        return found

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
            "detectors": [result.to_dict() for result in self.detectors],
            "calibration": [result.to_dict() for result in self.calibration],
            "corruption": self.corruption.to_dict() if self.corruption else None,
            "corruption_errors": self.corruption_errors.to_dict() if self.corruption_errors else None,
            "faithfulness": self.faithfulness.to_dict() if self.faithfulness else None,
            "seconds": self.seconds,
            "skipped": self.skipped,
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
    #: The model others are compared with: the first trained the standard way, else the first.
    baseline: Optional[str] = None
    #: Each other model against the baseline, scan by scan, on every figure both have.
    comparisons: list[PairedComparison] = field(default_factory=list)
    #: Independent groups among the scans when the split is grouped (None: every scan stands alone).
    groups: Optional[int] = None
    #: False for the sections finished so far of an evaluation still running, or stopped before its end.
    complete: bool = True
    #: One row per defence (naive and adaptive attack, flags, which number to believe) and the
    #: undefended rows beside them; empty when no model is or has a defence (:mod:`.verdict`).
    verdicts: list[Verdict] = field(default_factory=list)
    #: How many torchrun processes shared the scans (:mod:`.shards`); 1 for one process.
    processes: int = 1
    #: Why an incomplete evaluation stopped before its end, when known (a process that failed).
    stopped: Optional[str] = None

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
            "processes": self.processes,
            "complete": self.complete,
            "stopped": self.stopped,
            "strength_level": self.settings.strength_settings.level if self.settings.strength else None,
            "groups": self.groups,
            "reference_tables": [table.to_dict() for table in self.tables],
            "models": [model.to_dict() for model in self.models],
            "transfer": self.transfer.to_dict() if self.transfer else None,
            "baseline": self.baseline,
            "comparisons": [comparison.to_dict() for comparison in self.comparisons],
            "defence_verdicts": [verdict.to_dict() for verdict in self.verdicts],
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
    groups: Optional[Sequence[int] | np.ndarray] = None,
    on_section: Optional[Callable[[EvaluationSuite], None]] = None,
    shards: Shards = Shards(),
    detector_scans: Optional[tuple[Sequence[int], Sequence[int]]] = None,
) -> EvaluationSuite:
    """Run the whole evaluation; ``info`` adds per-model facts (run directory, strategy) to the report.

    ``detector_scans`` are the (training, validation) scans of ``dataset`` the detectors of
    ``settings.detectors`` are fitted and thresholded on (never the evaluated ones); required
    when there are detectors, else UserInputError.

    ``groups`` gives each scan of ``dataset`` a group id (:func:`pipeline.data.split_groups`); every
    interval and paired test then treats a group as one unit of evidence. ``on_section`` receives
    the suite of every section finished so far (``complete=False``) each time one ends, so work
    that is cancelled or fails later is not lost with it.

    ``shards`` runs the evaluation on several torchrun processes (:mod:`.shards`): every section
    that loops over scans runs its share of the batches on each and gathers the others', so every
    process holds the same results as one process would. The faithfulness check alone runs on
    rank 0 only (it explains the first few correctly classified scans, found in scan order: a
    handful, not worth splitting); the other processes go on to the next section meanwhile, and
    their suites lack it.
    """
    started = time.perf_counter()
    table_specs = attack_specs(
        settings.attacks, settings.epsilons, settings.steps, early_stop=settings.early_stop
    )
    # The curve's own budgets come after the table's, so the table's attacks stay first everywhere.
    specs = table_specs + attack_specs(
        (CURVE_ATTACK,), settings.curve_only, settings.steps, early_stop=settings.early_stop
    )
    defenses = [make_defense(name) for name in settings.defenses]  # unknown names fail before any work
    if settings.detectors and detector_scans is None:
        raise UserInputError(
            "detectors need the runs' training and validation scans to be fitted and thresholded on; "
            "evaluate saved runs (python -m pipeline evaluate --run ... --detectors ...)"
        )
    # The quick strength level checks the largest epsilon only: the signs of masking and of a weak
    # attack belong to the model and the attack, and show at one budget as at another.
    checked = settings.epsilons if settings.strength_settings.every_epsilon else (max(settings.epsilons),)
    # The sections in the order they run, each a phase of its kind: the time left prices the second
    # model's sections by the first's measured ones, and a kind not run yet by the sections that have.
    kinds = [
        "attacks",
        *["strength checks"] * (settings.strength * len(checked)),
        *["corruptions"] * bool(settings.corruptions),
        *["faithfulness"] * bool(settings.faithfulness_scans),
        *["minimal epsilon"] * settings.minimal_epsilon,
        *["certification"] * (settings.certify_sigma is not None),
        *[f"defence {name}" for name in settings.defenses],
        *["detectors"] * bool(settings.detectors),
    ]
    plans = [
        (Phase(kind, 1.0, "section"),)
        for name, model in models.items()
        for kind in (
            *kinds,
            *(f"defence {defense.name}" for defense in training_defenses((info or {}).get(name, {}))),
            *["ensemble"] * isinstance(model, Ensemble),
        )
    ]
    plans += [(Phase("transfer matrix", 1.0, "section"),)] * (settings.transfer and len(models) > 1)
    stage_count = len(plans)
    stage_numbers = itertools.count()
    common = dict(batch_size=settings.batch_size, device=device, shards=shards)
    evaluated: list[ModelEvaluation] = []
    transfer: Optional[TransferResult] = None
    #: The scans of the strength checks and the transfer matrix: one subset for every model.
    checked_scans: Optional[np.ndarray] = None

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
        baseline = _baseline(evaluated)
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
            baseline=baseline.name if len(evaluated) > 1 else None,
            comparisons=_compare(evaluated, baseline),
            groups=None if first.clean.groups is None else int(np.unique(first.clean.groups).size),
            verdicts=defence_verdicts(evaluated, baseline.name),
            processes=shards.processes,
        )

    def next_stage(label: str) -> Optional[ProgressCallback]:
        """The progress of the next section; the sections before it are finished: hand them over."""
        if on_section is not None and evaluated:
            on_section(suite(complete=False))
        return staged(progress, next(stage_numbers), stage_count, label, separator=" — ", plans=plans)

    for name, model in models.items():
        clock = _Clock()
        with clock("attacks"):
            result = evaluate(
                model,
                dataset,
                indices,
                specs,
                model_name=name,
                examples=settings.examples,
                progress=next_stage(f"{name}: attacks"),
                groups=groups,
                **common,
            )
        if evaluated and not np.array_equal(result.indices, evaluated[0].report.indices):
            raise ValueError(f"{name} was evaluated on other scans than {evaluated[0].name}")
        if checked_scans is None:
            checked_scans = check_scans(result, settings.strength_settings.scans)
        facts = dict((info or {}).get(name, {}))
        entry = ModelEvaluation(name, result, sweep_from_report(result), info=facts, seconds=clock.seconds)
        evaluated.append(entry)  # filled in section by section below
        for eps in checked if settings.strength else ():
            with clock("strength checks"):
                entry.strength.append(
                    strength_checks(
                        model,
                        dataset,
                        checked_scans,
                        eps,
                        baseline=result,
                        settings=settings.strength_settings,
                        model_name=name,
                        progress=next_stage(f"{name}: strength checks at ε={format_epsilon(eps)}"),
                        groups=groups,
                        early_stop=settings.early_stop,
                        **common,
                    )
                )
        if settings.calibration:
            with clock("calibration"):
                entry.calibration = [
                    calibration(
                        answers.outcome.probabilities,
                        answers.outcome.labels,
                        condition=answers.condition,
                        groups=answers.outcome.groups,
                    )
                    for answers in entry.outcomes()
                    if answers.outcome.probabilities is not None
                ]
        if settings.corruptions:
            with clock("corruptions"):
                entry.corruption = corruption_benchmark(
                    model,
                    dataset,
                    result.indices,
                    settings.corruptions,
                    model_name=name,
                    progress=next_stage(f"{name}: corruptions"),
                    groups=groups,
                    **common,
                )
        if settings.faithfulness_scans and shards.is_main:
            with clock("faithfulness"), _skipped(entry, "faithfulness"):
                entry.faithfulness = explanation_faithfulness(
                    model,
                    dataset,
                    result.indices,
                    _explained_attack(table_specs),
                    limit=settings.faithfulness_scans,
                    imputation=settings.faithfulness_imputation,
                    model_name=name,
                    progress=next_stage(f"{name}: faithfulness of the explanations"),
                    device=device,
                )
        if settings.minimal_epsilon:
            with clock("minimal epsilon"):
                entry.minimal = minimal_epsilon_distribution(
                    model,
                    dataset,
                    result.indices,
                    model_name=name,
                    progress=next_stage(f"{name}: minimal epsilon"),
                    **common,
                )
        if settings.certify_sigma is not None:
            with clock("certification"):
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
        # The input transformations asked for, then the defence the model is by its training
        # (defensive distillation): each a naive and an adaptive attack on the model as deployed.
        for defense in [*defenses, *training_defenses(facts)]:
            with clock(f"defence {defense.name}"):
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
        if isinstance(model, Ensemble):  # each member's attack and the whole ensemble's, on the common scans
            with clock("ensemble"):
                entry.defenses.append(
                    evaluate_ensemble(
                        model,
                        dataset,
                        checked_scans,
                        _crafting(settings),
                        progress=next_stage(f"{name}: members and the whole ensemble"),
                        **common,
                    )
                )
        if settings.detectors and detector_scans is not None:
            with clock("detectors"):
                entry.detectors = _detectors(model, dataset, result.indices, settings, detector_scans, groups,
                                             next_stage(f"{name}: detectors"), batch_size=settings.batch_size,
                                             device=device)
    if settings.transfer and len(models) > 1:
        # A masking check too (a model that resists only its own gradients is masking them), so it
        # runs on the scans the strength level gives the checks.
        transfer = transfer_matrix(
            models,
            dataset,
            checked_scans,
            _crafting(settings),
            progress=next_stage("transfer matrix"),
            **common,
        )
    report(progress, 1, 1, "evaluation done")
    return suite(complete=True)


def _crafting(settings: SuiteSettings) -> AttackSpec:
    """What the transfer matrix and an ensemble's section craft on each model: the transfer attack at
    the largest epsilon, run in full on every source (no early stop: stopping at the source's
    boundary weakens transfer)."""
    (crafting,) = attack_specs(
        (settings.transfer_attack,), (max(settings.epsilons),), settings.steps, early_stop=False
    )
    return crafting


def _detectors(
    model: nn.Module,
    dataset: Dataset,
    indices: np.ndarray,
    settings: SuiteSettings,
    scans: tuple[Sequence[int], Sequence[int]],
    groups: Optional[Sequence[int] | np.ndarray],
    progress: Optional[ProgressCallback],
    *,
    batch_size: int,
    device: str | torch.device | None,
) -> list[DetectorResult]:
    """Each detector of the settings fitted on ``scans`` (training, validation), then measured on
    ``indices`` against PGD and its adaptive attack at the largest epsilon. Not sharded: under
    torchrun every process runs it whole (the same seeds, so the same figures)."""
    names = settings.detectors
    if len(scans[0]) == 0 or len(scans[1]) == 0:
        raise UserInputError(
            "detectors need the run's training scans to fit on and validation scans to set their threshold; "
            "this split has none on one side: train with a validation fraction above 0"
        )
    parts = len(names) + 1
    fitted = fit_detectors(
        names, model, dataset, fit_scans(np.asarray(scans[0])), scans[1],
        false_positive_rate=settings.detector_fpr, batch_size=batch_size, device=device,
        progress=staged(progress, 0, parts, "fitting the detectors"),
    )
    return [
        evaluate_detector(
            model, detector, dataset, indices, max(settings.epsilons), steps=settings.steps,
            batch_size=batch_size, device=device, groups=groups,
            progress=staged(progress, number + 1, parts, detector.title),
        )
        for number, detector in enumerate(fitted)
    ]


def check_scans(report: RobustnessReport, limit: int) -> np.ndarray:
    """The scans the strength checks and the transfer matrix run on, for every model alike: all of
    ``report``'s scans, or ``limit`` of them (0: all) taken from the classes in turn. The choice
    depends only on the scans and their true labels, never on a model's answers."""
    scans = report.indices
    if limit and scans.size > limit:
        return balanced_subset(scans, report.clean.labels, limit)
    return scans


def paired_answers(first: Answers, second: Answers) -> tuple[Outcome, Outcome]:
    """Both models' answers on the scans both answered, matched by dataset index (in index order);
    empty outcomes when they share no scan."""
    _, rows_first, rows_second = np.intersect1d(
        first.indices, second.indices, assume_unique=True, return_indices=True
    )
    return first.outcome.take(rows_first), second.outcome.take(rows_second)


class _Clock:
    """Adds the wall time of each ``with clock(section):`` block to ``seconds[section]``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, section: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[section] = self.seconds.get(section, 0.0) + time.perf_counter() - started


@contextmanager
def _skipped(entry: ModelEvaluation, section: str) -> Iterator[None]:
    """Record a section this model cannot have (a UserInputError: no layer to explain) and go on."""
    try:
        yield
    except UserInputError as error:
        entry.skipped[section] = str(error)


def _explained_attack(specs: Sequence[AttackSpec]) -> AttackSpec:
    """The attack whose scans the faithfulness check explains: PGD at the largest epsilon, where it
    was run, else the last attack."""
    pgd = [spec for spec in specs if spec.name == "pgd"]
    return max(pgd, key=lambda spec: spec.eps or 0.0) if pgd else specs[-1]


def _baseline(evaluated: Sequence[ModelEvaluation]) -> ModelEvaluation:
    """The model the others are measured against: the first trained the standard way, else the first."""
    return next((entry for entry in evaluated if entry.info.get("strategy") == "standard"), evaluated[0])


def _compare(evaluated: Sequence[ModelEvaluation], baseline: ModelEvaluation) -> list[PairedComparison]:
    """Each other model against the baseline: corruption errors, and a paired test on each figure."""
    comparisons = []
    for entry in evaluated:
        if entry is baseline:
            continue
        if entry.corruption is not None and baseline.corruption is not None:
            entry.corruption_errors = corruption_errors(entry.corruption, baseline.corruption)
        theirs = {answers.key: answers for answers in baseline.outcomes()}
        for mine in entry.outcomes():
            if mine.key not in theirs:  # e.g. a worst case whose strength checks have not run yet
                continue
            before, after = paired_answers(theirs[mine.key], mine)
            if before.labels.size:
                comparisons.append(
                    paired_comparison(
                        before.correct,
                        after.correct,
                        names=(baseline.name, entry.name),
                        condition=mine.condition,
                        groups=after.groups,
                    )
                )
    return comparisons
