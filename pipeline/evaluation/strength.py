"""Is the attack strong enough for its number to mean anything? Checks shown beside every figure.

A robust accuracy is only an upper bound: a weak or fooled attack gives a high number for a
model that is not robust at all (the reference study's 93.6% came from a one-step "PGD"). These
checks rerun the evaluation with stronger or different attacks and compare, following Carlini et
al. 2019 ("On evaluating adversarial robustness") and Croce & Hein 2020 (AutoAttack):

- AutoAttack ensemble versus PGD alone, and PGD with more steps and restarts versus PGD: if either
  is clearly stronger, PGD's figure overstates robustness (a weak-attack warning).
- FGSM versus PGD, the black-box Square attack versus white-box PGD, accuracy along a ladder of
  growing epsilons, and accuracy at the largest epsilon (which must be near zero): failures are
  the classic signs of gradient masking (a masking flag).
- Before all of them: is the model a trained classifier at all (:mod:`.degenerate`)? One that
  answers (nearly) one class for every scan has no robustness to measure (a degenerate flag).

Every check carries a plain-language explanation, whether it passes or not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline.attacks import attack_schema
from pipeline.evaluation.data import balanced_subset
from pipeline.evaluation.degenerate import NOT_TRAINED, check_answers
from pipeline.evaluation.shards import Shards
from pipeline.evaluation.robustness import (
    AttackResult,
    AttackSpec,
    CombinedResult,
    Outcome,
    RobustnessReport,
    combine,
    evaluate,
    same_eps,
)
from pipeline.params import Param, from_mapping, setting, validate_fields
from pipeline.progress import ProgressCallback
from pipeline.units import format_epsilon, format_share

Kind = Literal["degenerate", "masking", "weak-attack"]

#: Accuracy an attack at the largest epsilon may leave before the check fails.
LARGE_EPS_MAX_ACCURACY = 0.05


@dataclass(frozen=True)
class StrengthSettings:
    """How hard the checks push, and on what. The defaults are :data:`QUICK_STRENGTH`, sized so that
    a whole evaluation of two small models ends in minutes on a CPU: every check runs, with fewer
    steps and queries, at the evaluation's largest epsilon, on a class-balanced subset of the scans,
    and with a single Square run (the standalone check; the ensemble keeps its APGD members).
    :data:`FULL_STRENGTH` are the literature's settings (AutoAttack with Square, PGD-50 with
    restarts) at every epsilon on every scan, for a GPU or a final figure. :attr:`level` names
    which one a report used."""

    pgd_steps: int = setting(10, low=1, high=10_000, help="steps of the PGD every check is measured against")
    strong_steps: int = setting(20, low=1, high=100_000, help="steps of the long PGD check")
    strong_restarts: int = setting(2, low=1, high=1000, help="restarts of the long PGD check")
    square_queries: int = setting(
        100, low=1, high=1_000_000, help="queries of the Square attack (and of AutoAttack's Square member)"
    )
    ensemble_steps: int = setting(10, low=1, high=10_000, help="steps of each APGD member of AutoAttack")
    #: Epsilon multiples of the ladder (none: no ladder); its last rung is the largest epsilon PGD accepts.
    ladder: tuple[float, ...] = (4.0,)
    scans: int = setting(
        48, low=0, high=10_000_000, help="scans the checks run on at most, classes in turn (0: every scan)"
    )
    every_epsilon: bool = setting(False, help="run the checks at every epsilon, not only at the largest")
    ensemble_square: bool = setting(
        False, help="finish the AutoAttack ensemble with Square too (the Square check runs regardless)"
    )

    @property
    def level(self) -> str:
        """"quick", "full", or "custom" for any other combination."""
        return next((name for name, preset in STRENGTH_LEVELS.items() if preset == self), "custom")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``level`` is added for people and ignored by :meth:`from_dict`."""
        return {**asdict(self), "level": self.level}

    def __post_init__(self) -> None:
        validate_fields(self)
        rung = Param("ladder", float, 2.0, "epsilon multiples of the ladder", low=1.0, high=64.0)
        object.__setattr__(self, "ladder", tuple(rung.validate(value) for value in self.ladder))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> StrengthSettings:
        return from_mapping(cls, values, what="strength check", ignored=("level",))


#: Sized for a CPU: every check runs, each with fewer steps, restarts and queries.
QUICK_STRENGTH = StrengthSettings()
#: The literature's strength: PGD-50 with 3 restarts, APGD-20, AutoAttack with Square and Square
#: with 1,000 queries, a longer ladder, at every epsilon on every scan.
FULL_STRENGTH = StrengthSettings(
    strong_steps=50,
    strong_restarts=3,
    square_queries=1000,
    ensemble_steps=20,
    ladder=(2.0, 4.0),
    scans=0,
    every_epsilon=True,
    ensemble_square=True,
)
STRENGTH_LEVELS: dict[str, StrengthSettings] = {"quick": QUICK_STRENGTH, "full": FULL_STRENGTH}


@dataclass
class StrengthCheck:
    """One comparison between two attacks (or one attack and an expectation)."""

    key: str
    title: str
    kind: Kind
    flagged: bool
    detail: str  #: the numbers compared, e.g. "AutoAttack 41.7% vs PGD 43.8%"
    explanation: str  #: what the outcome means, in plain language

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class StrengthReport:
    """The strength checks for one model at one epsilon."""

    model: str
    eps: float
    checks: list[StrengthCheck]
    accuracies: dict[str, float]  #: accuracy per attack label, every attack run at ``eps``
    ladder: list[tuple[float, float]]  #: (epsilon, PGD accuracy), growing epsilon
    worst_case: CombinedResult  #: per scan, over every attack at ``eps``: the best robustness estimate
    extra: RobustnessReport = field(repr=False)  #: the attacks this check ran itself

    @property
    def scans(self) -> int:
        """How many scans the checks (and :attr:`worst_case`) rest on."""
        return self.extra.size

    @property
    def masking(self) -> bool:
        return any(check.flagged and check.kind == "masking" for check in self.checks)

    @property
    def weak(self) -> bool:
        return any(check.flagged and check.kind == "weak-attack" for check in self.checks)

    @property
    def flagged(self) -> bool:
        """Any check failed: the figure needs its warning beside it."""
        return any(check.flagged for check in self.checks)

    @property
    def degenerate(self) -> bool:
        return any(check.flagged and check.kind == "degenerate" for check in self.checks)

    @property
    def verdict(self) -> str:
        """One short line for tables: what a reader must know before quoting the number."""
        flagged = [f"{check.title} ({check.detail})" for check in self.checks if check.flagged]
        if self.degenerate:
            return f"{NOT_TRAINED.upper()}: " + "; ".join(flagged)
        if self.masking:
            return "GRADIENT MASKING SUSPECTED: " + "; ".join(flagged)
        if self.weak:
            return "PGD alone overstates robustness: " + "; ".join(flagged)
        return f"all {len(self.checks)} strength checks passed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "eps": self.eps,
            "scans": self.scans,
            "indices": self.extra.indices.tolist(),
            "verdict": self.verdict,
            "degenerate": self.degenerate,
            "masking": self.masking,
            "weak_attack": self.weak,
            "checks": [check.to_dict() for check in self.checks],
            "accuracies": self.accuracies,
            "ladder": [{"eps": eps, "accuracy": acc} for eps, acc in self.ladder],
            "worst_case": self.worst_case.to_dict(),
        }


def strength_checks(
    model: nn.Module,
    dataset: Dataset,
    indices: Optional[Sequence[int]],
    eps: float,
    *,
    baseline: Optional[RobustnessReport] = None,
    settings: StrengthSettings = StrengthSettings(),
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: Optional[ProgressCallback] = None,
    model_name: str = "model",
    groups: Optional[Sequence[int] | np.ndarray] = None,
    early_stop: bool = True,
    shards: Shards = Shards(),
) -> StrengthReport:
    """Run the checks at ``eps``; PGD and FGSM results already in ``baseline`` (any epsilon the
    checks need) are reused rather than run again. ``groups`` as in :func:`.evaluate`;
    ``early_stop`` stops each PGD on a scan once it is fooled (the accuracies compared are the same).

    The checks run on ``indices`` (None: ``baseline``'s scans, else every scan); with
    ``settings.scans`` (0: all) on that many of them, classes in turn (labels from ``baseline``,
    else from ``dataset.labels``), and the reused results are cut to them. ``shards`` as in
    :func:`.evaluate` (on the quick level the few scans are one batch, run by one process).
    """
    chosen = _check_scans(dataset, indices, baseline, settings.scans or None)
    if baseline is not None:
        baseline = baseline.restricted_to(chosen)
    if settings.scans and chosen is not None:
        # A few scans in one batch: Square's queries then reach all of them in one forward pass.
        batch_size = max(batch_size, chosen.size)
    largest = _largest_eps("pgd")
    ladder_eps = sorted({min(eps * factor, largest) for factor in settings.ladder} | {largest})
    ladder_eps = [value for value in ladder_eps if value > eps * (1 + 1e-9)]
    planned = {
        "pgd": _pgd(eps, settings.pgd_steps, early_stop=early_stop),
        "fgsm": AttackSpec("fgsm", {"eps": eps}),
        "strong": _pgd(eps, settings.strong_steps, settings.strong_restarts, early_stop=early_stop),
        "square": AttackSpec(
            "square", {"eps": eps, "n_queries": settings.square_queries}, f"Square ε={format_epsilon(eps)}"
        ),
        "autoattack": AttackSpec(
            "autoattack",
            {
                "eps": eps,
                "steps": settings.ensemble_steps,
                "n_queries": settings.square_queries,
                "square": settings.ensemble_square,
            },
            f"AutoAttack{'' if settings.ensemble_square else ' (APGD members)'} ε={format_epsilon(eps)}",
        ),
        **{
            f"ladder{i}": _pgd(value, settings.pgd_steps, early_stop=early_stop)
            for i, value in enumerate(ladder_eps)
        },
    }
    reusable = [role for role in planned if role in ("pgd", "fgsm") or role.startswith("ladder")]
    found = (
        {role: baseline.find(planned[role].name, planned[role].eps) for role in reusable} if baseline else {}
    )
    reused = {role: result for role, result in found.items() if result is not None}
    extra = evaluate(
        model,
        dataset,
        chosen,
        [spec for role, spec in planned.items() if role not in reused],
        batch_size=batch_size,
        device=device,
        progress=progress,
        model_name=model_name,
        groups=groups,
        shards=shards,
    )
    if baseline is not None and not np.array_equal(baseline.indices, extra.indices):
        raise ValueError("the baseline report was computed on different scans")
    by_role = {
        **reused,
        **{role: extra.attack(spec.title) for role, spec in planned.items() if role not in reused},
    }
    at_eps = [result for result in (baseline.attacks if baseline else []) if same_eps(result.spec.eps, eps)]
    at_eps += [
        result for role, result in by_role.items() if not role.startswith("ladder") and role not in reused
    ]
    accuracy = {role: result.accuracy for role, result in by_role.items()}
    ladder = [(eps, accuracy["pgd"])] + [
        (value, accuracy[f"ladder{i}"]) for i, value in enumerate(ladder_eps)
    ]
    return StrengthReport(
        model=model_name,
        eps=eps,
        checks=[_trained_check(extra.clean), *_judge(by_role, ladder, extra.size)],
        accuracies={result.label: result.accuracy for result in at_eps},
        ladder=ladder,
        worst_case=combine(extra.clean, at_eps)[0],
        extra=extra,
    )


def _check_scans(
    dataset: Dataset,
    indices: Optional[Sequence[int]],
    baseline: Optional[RobustnessReport],
    limit: Optional[int],
) -> Optional[np.ndarray]:
    """The scans the checks run on: ``indices`` (else all of ``baseline``'s), or ``limit`` of them,
    classes in turn. The caller's ``indices`` are kept as given, so a suite that chose one subset
    for every model has its checks on exactly those scans."""
    everything = (
        np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices is not None
        else (None if baseline is None else baseline.indices)
    )
    if limit is None or everything is None or everything.size <= limit:
        return everything
    if baseline is not None:
        labels = baseline.restricted_to(everything).clean.labels  # raises when not among its scans
    else:
        known = getattr(dataset, "labels", None)
        if known is None:
            return everything
        labels = np.asarray(known)[everything]
    return balanced_subset(everything, labels, limit)


def _trained_check(clean: Outcome) -> StrengthCheck:
    """A model whose answers do not depend on the scan cannot be fooled, and is not robust either."""
    answers = check_answers(clean.predictions, clean.labels)
    return StrengthCheck(
        "trained",
        "a trained classifier",
        "degenerate",
        answers.flagged,
        answers.reason,
        answers.advice if answers.flagged else "The model's answers depend on the scan and beat always "
        "answering the most common class, so the attacks have something to change.",
    )


#: Attacks compared with PGD at the same epsilon: (key, role, title, kind, explanation when the attack
#: is clearly stronger than PGD, explanation when it is not).
_VERSUS_PGD: tuple[tuple[str, str, str, Kind, str, str], ...] = (
    (
        "ensemble",
        "autoattack",
        "AutoAttack vs PGD",
        "weak-attack",
        "The AutoAttack ensemble (APGD with two losses, targeted and untargeted) found clearly more "
        "adversarial scans than PGD alone, so PGD's figure overstates robustness: quote the ensemble's.",
        "The AutoAttack ensemble agrees with PGD, so PGD's figure is not an artefact of one weak attack.",
    ),
    (
        "more-steps",
        "strong",
        "longer PGD with restarts vs PGD",
        "weak-attack",
        "Running PGD longer and from several random starts fooled clearly more scans: the short PGD had "
        "not converged and its figure is too optimistic.",
        "Longer PGD with random restarts gives about the same accuracy: the attack has converged.",
    ),
    (
        "one-step",
        "fgsm",
        "one-step FGSM vs iterative PGD",
        "masking",
        "A single gradient step (FGSM) beat many steps (PGD). An iterative attack that works is at least "
        "as strong as its first step, so the gradients PGD follows are likely misleading (gradient "
        "masking).",
        "Iterative PGD is at least as strong as one-step FGSM, as it should be.",
    ),
    (
        "black-box",
        "square",
        "black-box Square vs white-box PGD",
        "masking",
        "An attack that only sees the model's outputs beat one that sees its gradients. That happens when "
        "the gradients are useless (masked), not when the model is robust.",
        "The gradient-free attack is no stronger than the gradient-based one, as expected without masking.",
    ),
)


def _judge(
    by_role: dict[str, AttackResult], ladder: list[tuple[float, float]], scans: int
) -> list[StrengthCheck]:
    """Turn the accuracies into checks with explanations."""
    tolerance = max(0.02, 2.0 / scans)  # a scan or two of noise between attacks is not a signal
    acc = {role: result.accuracy for role, result in by_role.items()}
    name = {role: result.label for role, result in by_role.items()}

    def pct(role: str) -> str:
        return f"{name[role]} {format_share(acc[role], scans)}"

    checks = []
    for key, role, title, kind, beaten, holds in _VERSUS_PGD:
        flagged = acc[role] < acc["pgd"] - tolerance
        checks.append(
            StrengthCheck(
                key, title, kind, flagged, f"{pct(role)} vs {pct('pgd')}", beaten if flagged else holds
            )
        )
    rises = any(later > earlier + tolerance for (_, earlier), (_, later) in zip(ladder, ladder[1:]))
    flat = ladder[0][1] > tolerance and ladder[-1][1] >= ladder[0][1] - tolerance
    curve = " → ".join(f"{format_epsilon(e)}: {format_share(a, scans)}" for e, a in ladder)
    checks.append(
        StrengthCheck(
            "epsilon",
            "accuracy against growing epsilon",
            "masking",
            rises or flat,
            curve,
            "Accuracy did not fall as the allowed perturbation grew. A larger budget contains every smaller "
            "one, so a working attack can only do better; this points to masked gradients or a broken "
            "attack."
            if rises or flat
            else "Accuracy falls as the allowed perturbation grows, as it must.",
        )
    )
    largest, last = ladder[-1]
    checks.append(
        StrengthCheck(
            "large-eps",
            f"accuracy at ε={format_epsilon(largest)} (must be near zero)",
            "masking",
            last > LARGE_EPS_MAX_ACCURACY,
            f"PGD ε={format_epsilon(largest)}: {format_share(last, scans)}",
            f"At ε={format_epsilon(largest)} the attack may repaint a quarter of the grey range, enough to "
            "turn any scan into another class; an attack that still fails is not reaching the model "
            "(masking), is broken, or faces a model that ignores its input (one class for every scan): none "
            "of these is robustness."
            if last > LARGE_EPS_MAX_ACCURACY
            else f"At ε={format_epsilon(largest)} the attack fools nearly every scan: it reaches the model.",
        )
    )
    return checks


def _pgd(eps: float, steps: int, restarts: int = 1, *, early_stop: bool = True) -> AttackSpec:
    """PGD, by default stopping on each scan once fooled: the checks compare accuracies, which that keeps."""
    title = "PGD" if restarts == 1 else f"PGD {steps} steps ×{restarts}"
    return AttackSpec(
        "pgd",
        {"eps": eps, "steps": steps, "restarts": restarts, "early_stop": early_stop},
        f"{title} ε={format_epsilon(eps)}",
    )


def _largest_eps(name: str) -> float:
    high = next((param.high for param in attack_schema(name) if param.name == "eps"), None)
    return float(high) if high is not None else 64 / 255
