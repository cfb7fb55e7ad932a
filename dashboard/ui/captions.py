"""One-line readings for a clinician: what changed, whether one could see it, what the model said,
and whether a split can be trusted.

The wording thresholds are for captions only (how to describe a number), never used as results.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from dashboard.ui.controls import HU_PER_GREY_LEVEL
from pipeline.attacks import attack_class
from pipeline.constants import GREY_LEVEL
from pipeline.scan_report import ScanReport

#: PSNR above which a change is generally invisible on a monitor, and below which it is plain to see.
INVISIBLE_DB = 40.0
VISIBLE_DB = 30.0


def percent(value: float) -> str:
    return f"{100 * value:.0f}%"


def grey_levels(value: float) -> str:
    levels = value / GREY_LEVEL
    return f"{levels:.0f}" if abs(levels - round(levels)) < 0.05 else f"{levels:.1f}"


def visibility(psnr_db: float) -> str:
    if not math.isfinite(psnr_db) or psnr_db >= INVISIBLE_DB:
        return "invisible to the eye"
    if psnr_db >= VISIBLE_DB:
        return "hard to see without comparing side by side"
    return "visible on close inspection"


def change_sentence(report: ScanReport) -> str:
    """How big the change is, in grey levels and Hounsfield units, and whether one would notice it;
    for an attack whose budget is not in grey levels (a move, a patch), what it did in its own units."""
    if report.change is not None:
        return report.change
    if report.linf == 0:
        return "The attack left the scan unchanged."
    levels = report.linf / GREY_LEVEL
    share = report.l0 / report.clean.size
    return (
        f"The attacked scan differs from the original by at most {grey_levels(report.linf)} grey "
        f"level{'s' if levels >= 1.5 else ''} per pixel (≈ {levels * HU_PER_GREY_LEVEL:.0f} HU in the lung "
        f"window), in {percent(share)} of the pixels: {visibility(report.psnr)}."
    )


def verdict(report: ScanReport) -> str:
    """What the model said before and after, in words."""
    names = report.classes
    before, after = names[report.prediction_clean], names[report.prediction_attacked]
    p_before = report.probs_clean[report.label]
    p_after = report.probs_attacked[report.label]
    basis = (
        ""
        if report.label_known
        else " (the true diagnosis was not given, so the attack pushed away from the model's own answer)"
    )
    if report.label_known and report.prediction_clean != report.label:
        return (
            f"The model already misreads the original: it says **{before}** for a scan labelled "
            f"{names[report.label]}, and **{after}** after the attack."
        )
    if before != after:
        return f"The model said **{before}** for the original and now says **{after}**{basis}."
    return (
        f"The model still says **{after}**: its confidence in {names[report.label]} went from "
        f"{percent(p_before)} to {percent(p_after)}{basis}."
    )


def summary(report: ScanReport) -> str:
    """The headline: the change, then the verdict ("…invisible to the eye, yet the model now says benign")."""
    return f"{change_sentence(report)} {verdict(report)}"


def minimal_eps_sentence(report: ScanReport, high_text: str) -> str:
    """What the search for the smallest flipping budget found, naming the attack it searched with."""
    value = report.minimal_eps
    if value is None:
        return "The smallest flipping budget was not searched."
    if value == 0:
        return "The model already gets this scan wrong, so no change is needed to fool it."
    if not math.isfinite(value):
        return f"Even the largest budget searched ({high_text}) did not change the model's answer."
    return (
        f"{attack_class(report.attack).title} with a budget of {grey_levels(value)}/255 grey levels "
        f"(≈ {value / GREY_LEVEL * HU_PER_GREY_LEVEL:.0f} HU) is the smallest found that changes the "
        "model's answer on this scan."
    )


#: How each explanation-shift measure reads: (name, value -> "same" / "partly" / "moved").
SHIFT_READINGS = ("barely moved", "moved partly", "moved to a different place")


def _reading(value: float, same: float, partly: float, higher_is_same: bool = True) -> int:
    """0 (same), 1 (partly) or 2 (moved) for one measure against its two wording thresholds."""
    if higher_is_same:
        return 0 if value >= same else 1 if value >= partly else 2
    return 0 if value <= same else 1 if value <= partly else 2


def shift_sentence(shift: dict[str, float], size: int) -> str:
    """What the three measures say together, naming them when they disagree.

    Correlation reads "same" from 0.8 and "moved" below 0.4; the overlap of the hottest 10% from 50%
    and below 20%; the centre's move up to 5% and beyond 15% of the scan's width (``size`` pixels).
    """
    correlation, overlap, centre = shift["pearson"], shift["top_iou"], shift["centre_shift"]
    readings = {
        f"correlation {correlation:.2f}": _reading(correlation, 0.8, 0.4),
        f"overlap of the hottest 10% {percent(overlap)}": _reading(overlap, 0.5, 0.2),
        f"centre moved {centre:.1f} px ({percent(centre / size)} of the width)": _reading(
            centre, 0.05 * size, 0.15 * size, higher_is_same=False
        ),
    }
    values = set(readings.values())
    if len(values) == 1:
        how = SHIFT_READINGS[values.pop()]
        return f"Where the model looks {how} under the attack: all three measures agree."
    parts = "; ".join(f"{text}: {SHIFT_READINGS[reading]}" for text, reading in readings.items())
    return (
        f"The measures disagree ({parts}), so no one word fits: the broad pattern and its hottest spots "
        "moved by different amounts; compare the two maps themselves."
    )


def leak_verdict(random_split: bool, leaks: Mapping[str, Any]) -> tuple[str, str]:
    """One message about the split, consistent with the measured leaks beside it.

    Returns ``(level, text)``, level "warning", "info" or "success". A random split is never
    called clean, but its message states what was measured on this dataset, so it cannot
    contradict the figures beside it.
    """
    share, adjacent = leaks["test_with_similar_in_train_fraction"], leaks["adjacent_slices_across"]
    if random_split and (share > 0 or adjacent > 0):
        return "warning", (
            f"This random split leaks: {100 * share:.0f}% of the test scans have a near-twin in training and "
            f"{adjacent} pairs of neighbouring slices fall on different sides, so accuracy on it measures "
            "memorisation as much as diagnosis. Use the grouped split for any figure you report."
        )
    if random_split:
        return "info", (
            "This random split ignores duplicates and slice order. On this dataset it happens to put no "
            "near-twin or neighbouring slice on both sides; on real scans it would. Use the grouped split "
            "for any figure you report."
        )
    if share == 0:
        return "success", "No test scan has a near-identical twin in training."
    return "info", f"{100 * share:.0f}% of the test scans resemble a training scan."
