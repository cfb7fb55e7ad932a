"""A verdict per defence: which robust accuracy to believe, in one table.

Every defence of an evaluation (:class:`.defenses.DefenseResult`: an input transformation, a
distilled model, and any later defence that declares its naive and adaptive attack through
:class:`.defenses.Defense`; an ensemble's :class:`.ensemble.EnsembleResult`; and every
adversarial-example detector, :class:`.detectors.DetectorResult`, where a scan counts as withstood
when it is answered right *or* flagged) gets one row: clean accuracy, robust accuracy under the naive
attack and under the adaptive one, the strength checks' flags, and a sentence saying which number to
believe. An undefended row stands beside them: the evaluation's baseline model, and each model an
input transformation wraps, under PGD and under the worst case of every attack run.

A naive figure clearly above the adaptive one is the signature of a defence that hides the
gradient instead of removing adversarial directions (Athalye, Carlini & Wagner 2018,
https://arxiv.org/abs/1802.00420; Tramèr et al. 2020, https://arxiv.org/abs/2002.08347): only the
adaptive figure is a claim about robustness, and it is still an upper bound. For an ensemble the
naive attack is a transfer from its best member: a gap there is not masking but the difference
between attacking one member and attacking the whole. An adaptive figure clearly above the naive one
says the adaptive attack is weak, and is flagged too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional, Protocol, Sequence

from pipeline.evaluation.detectors import DetectorResult
from pipeline.evaluation.robustness import AttackSpec, RobustnessReport
from pipeline.evaluation.strength import StrengthReport
from pipeline.units import format_epsilon, format_share


class DefenceFigures(Protocol):
    """What the verdict reads of one defence's result: a :class:`.defenses.DefenseResult`, or an
    ensemble's :class:`.ensemble.EnsembleResult` (naive: the best transfer from a member)."""

    defense: str
    attack: AttackSpec
    naive_attack: str  #: in words
    adaptive_attack: str
    adaptive_attacks: tuple[str, ...]
    wraps_model: bool
    gap_means: str  #: what a naive figure clearly above the adaptive one means, in words
    gap_masks: bool  #: whether that gap is gradient masking (not so for an ensemble's transfer)

    @property
    def scans(self) -> int: ...
    @property
    def clean_accuracy(self) -> float: ...
    @property
    def naive_accuracy(self) -> float: ...
    @property
    def adaptive_accuracy(self) -> float: ...


class Evaluated(Protocol):
    """What the verdict reads of one evaluated model (a :class:`.suite.ModelEvaluation`)."""

    name: str
    report: RobustnessReport
    defenses: Sequence[DefenceFigures]
    detectors: list[DetectorResult]

    def strength_at(self, eps: float) -> Optional[StrengthReport]: ...


@dataclass
class Verdict:
    """One row of the verdict table; accuracies are shares in [0, 1] of ``scans`` held-out scans."""

    model: str
    defense: Optional[str]  #: None for an undefended row
    eps: float  #: L∞ budget of both attacks, image scale
    scans: int
    clean: float
    naive: float
    naive_attack: str
    adaptive: float
    adaptive_attack: str
    #: One short line per raised flag: failed strength checks of the deployed model, and the gap.
    flags: list[str] = field(default_factory=list)
    masking: bool = False  #: a masking flag is raised (a strength check, or the naive-adaptive gap)
    believe: str = ""  #: which number to believe, and why

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tolerance(scans: int) -> float:
    """Gap between two accuracies on the same scans that is more than a scan or two of noise
    (the strength checks' rule)."""
    return max(0.02, 2.0 / max(scans, 1))


def defence_verdicts(models: Sequence[Evaluated], baseline: Optional[str] = None) -> list[Verdict]:
    """The verdict table of an evaluation: nothing when no model has a defence or a detector; else an
    undefended row (``baseline``, the first model when None, unless it is itself a trained defence,
    and every model an input transformation or a detector wraps), then a row per defence and per
    detector, models in order."""
    if not any(entry.defenses or entry.detectors for entry in models):
        return []
    undefended: list[Evaluated] = []
    for entry in models:
        trained_defence = any(not result.wraps_model for result in entry.defenses)
        is_baseline = entry.name == (baseline if baseline is not None else models[0].name)
        wrapped = any(r.wraps_model for r in entry.defenses) or bool(entry.detectors)
        if not trained_defence and (is_baseline or wrapped):
            undefended.append(entry)
    rows = [row for entry in undefended if (row := _undefended(entry, _eps_of(models))) is not None]
    for entry in models:
        rows += [_defended(entry, result) for result in entry.defenses]
        rows += [_detected(entry, result) for result in entry.detectors]
    return rows


def _eps_of(models: Sequence[Evaluated]) -> float:
    """The budget the defences and detectors were attacked at (the evaluation's largest)."""
    return max(
        [result.attack.eps or 0.0 for entry in models for result in entry.defenses]
        + [result.eps for entry in models for result in entry.detectors]
    )


def _flags(check: Optional[StrengthReport]) -> list[str]:
    if check is None:
        return []
    return [f"{c.title}: {c.detail}" for c in check.checks if c.flagged]


def _undefended(entry: Evaluated, eps: float) -> Optional[Verdict]:
    pgd = entry.report.find("pgd", eps)
    if pgd is None:
        return None
    check = entry.strength_at(eps)
    worst = check.worst_case if check is not None else entry.report.combined_at(eps)
    scans = entry.report.size
    flags = _flags(check)
    masking = bool(check is not None and check.masking)
    sentence = (
        f"No defence: {format_share(worst.accuracy, scans)} under the worst of every attack is the "
        "figure a defence must beat"
        + (" (the checks flag this model too: treat it as an upper bound)." if flags else ".")
    )
    return Verdict(
        model=entry.name,
        defense=None,
        eps=eps,
        scans=scans,
        clean=entry.report.clean.accuracy,
        naive=pgd.accuracy,
        naive_attack=pgd.label,
        adaptive=worst.accuracy,
        adaptive_attack=f"worst case of every attack at ε={format_epsilon(eps)}",
        flags=flags,
        masking=masking,
        believe=sentence,
    )


def _defended(entry: Evaluated, result: DefenceFigures) -> Verdict:
    eps = result.attack.eps or 0.0
    scans = result.scans
    naive = result.naive_accuracy
    adaptive, adaptive_attack = result.adaptive_accuracy, result.adaptive_attack
    for name in result.adaptive_attacks:  # attacks adaptive to this defence as they stand
        found = entry.report.find(name, eps)
        if found is not None and found.accuracy < adaptive:
            adaptive, adaptive_attack = found.accuracy, f"{found.label} (on the deployed model)"
    check = None if result.wraps_model else entry.strength_at(eps)
    flags = _flags(check)
    gap = naive > adaptive + tolerance(scans)
    weak = adaptive > naive + tolerance(scans)  # the attack meant to see through the defence does worse
    shown = (format_share(naive, scans), format_share(adaptive, scans))
    if gap:
        flags.append(f"adaptive attack beats naive: {shown[1]} vs {shown[0]}")
    if weak:
        flags.append(f"adaptive attack weaker than naive: {shown[1]} vs {shown[0]}")
    checks_mask = bool(check is not None and check.masking)
    masking = (gap and result.gap_masks) or checks_mask
    if gap:
        believe = f"Believe {shown[1]} (adaptive attack), not {shown[0]}: {result.gap_means}" + (
            (", as the strength checks flag." if result.gap_masks else "; the strength checks flag masking "
             "on top: treat it as an upper bound.")
            if checks_mask
            else "."
        )
    elif weak:
        believe = (
            f"Believe the lower, {shown[0]} (naive attack), and only as an upper bound: the adaptive attack "
            "does worse than the naive one, so it is not yet adaptive enough."
        )
    elif masking:
        believe = (
            f"Naive and adaptive agree ({shown[0]} vs {shown[1]}), but the strength checks flag masking: "
            "both are upper bounds; believe neither until a stronger adaptive attack agrees."
        )
    else:
        believe = f"Naive and adaptive agree: believe the lower, {format_share(min(naive, adaptive), scans)}."
    return Verdict(
        model=entry.name,
        defense=result.defense,
        eps=eps,
        scans=scans,
        clean=result.clean_accuracy,
        naive=naive,
        naive_attack=f"{result.attack.title}: {result.naive_attack}",
        adaptive=adaptive,
        adaptive_attack=adaptive_attack,
        flags=flags,
        masking=masking,
        believe=believe,
    )


def _detected(entry: Evaluated, result: DetectorResult) -> Verdict:
    """A detector's row: a scan withstands an attack when it is answered right or flagged; PGD, blind
    to the detector, is the naive attack, :class:`pipeline.attacks.adaptive.DetectorAwarePGD` the
    adaptive one."""
    scans = result.scans
    naive, adaptive = result.accuracy("pgd"), result.accuracy("adaptive")
    caught = result.detection("pgd"), result.detection("adaptive")
    false_alarms = result.false_positives
    target = result.detector["false_positive_rate"]
    flags = [f"flags {false_alarms.format()} of clean scans (threshold set for {target:.0%})"]
    gap = naive > adaptive + tolerance(scans)
    if gap:
        flags.append(
            f"detection falls under the adaptive attack: {caught[0].format()} of PGD's successful scans "
            f"flagged, {caught[1].format()} of the adaptive attack's"
        )
    shown = (format_share(naive, scans), format_share(adaptive, scans))
    if gap:
        believe = (
            f"Believe {shown[1]} (right or flagged under the adaptive attack), not {shown[0]}: the "
            "detector catches PGD, which does not try to hide, and lets wrong answers through once the "
            "attack knows it."
        )
    else:
        believe = (
            "PGD and the adaptive attack agree: believe the lower, "
            f"{format_share(min(naive, adaptive), scans)} right or flagged; a stronger adaptive attack may "
            "still lower it."
        )
    return Verdict(
        model=entry.name,
        defense=f"detector: {result.name}",
        eps=result.eps,
        scans=scans,
        clean=float((result.predictions["clean"] == result.labels).mean()),
        naive=naive,
        naive_attack=f"{result.attack} (right or flagged)",
        adaptive=adaptive,
        adaptive_attack=f"{result.adaptive_attack} (right or flagged)",
        flags=flags,
        masking=gap,
        believe=believe,
    )


#: The verdict table's columns, as the HTML report and the dashboard show them.
VERDICT_COLUMNS = (
    "model",
    "defence",
    "clean",
    "naive attack",
    "adaptive attack",
    "flags",
    "which number to believe",
)


def verdict_table(verdicts: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Display rows of :data:`VERDICT_COLUMNS` from saved verdicts (``report.json``'s
    ``defence_verdicts``): one formatting for the HTML report and the dashboard."""
    rows = []
    for v in verdicts:
        scans = int(v["scans"])
        rows.append(
            {
                "model": str(v["model"]),
                "defence": v["defense"] or "none (baseline)",
                "clean": format_share(v["clean"], scans),
                "naive attack": f"{format_share(v['naive'], scans)} ({v['naive_attack']})",
                "adaptive attack": f"{format_share(v['adaptive'], scans)} ({v['adaptive_attack']})",
                "flags": "; ".join(v["flags"]) or "none",
                "which number to believe": str(v["believe"]),
            }
        )
    return rows


#: Under the table, in the HTML report and on the dashboard.
VERDICT_NOTE = (
    "The naive attack is the usual one, run straight on the deployed defence; the adaptive attack is "
    "built to see through it (BPDA/EOT for input transformations; the logits instead of the saturated "
    "softmax for defensive distillation; the whole ensemble, a vote through its soft-vote surrogate, "
    "where the naive attack is a transfer from the ensemble's best member; the classifier's loss and the "
    "detector's score together for a detector, where a scan counts when answered right or flagged). A "
    "naive figure clearly above the adaptive one is gradient masking, or a detector that only catches "
    "attacks blind to it, not robustness (Athalye, Carlini & Wagner 2018; Carlini & Wagner 2017), except "
    "for an ensemble, where it is what a transfer misses. Flags list the failed strength checks of the "
    "deployed model, and a detector's false alarms on clean scans."
)
