"""One-line readings for a clinician: what changed, whether one could see it, what the model said.

The wording thresholds are for captions only (how to describe a number), never used as results.
"""

from __future__ import annotations

import math
from typing import Optional

from dashboard.ui.controls import HU_PER_GREY_LEVEL
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
    """How big the change is, in grey levels and Hounsfield units, and whether one would notice it."""
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


def minimal_eps_sentence(value: Optional[float], high_text: str) -> str:
    if value is None:
        return "The smallest flipping budget was not searched."
    if value == 0:
        return "The model already gets this scan wrong, so no change is needed to fool it."
    if not math.isfinite(value):
        return f"Even the largest budget searched ({high_text}) did not change the model's answer."
    return (
        f"A PGD attack of {grey_levels(value)}/255 grey levels "
        f"(≈ {value / GREY_LEVEL * HU_PER_GREY_LEVEL:.0f} HU) "
        "is the smallest budget found that changes the model's answer on this scan."
    )


def shift_sentence(shift: dict[str, float]) -> str:
    pearson = shift.get("pearson", float("nan"))
    if pearson >= 0.8:
        how = "barely moved"
    elif pearson >= 0.4:
        how = "moved partly"
    else:
        how = "moved to a different place"
    return f"Where the model looks {how} under the attack."
