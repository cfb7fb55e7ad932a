"""One-line readings for a clinician: what changed, whether one could see it, what the model said,
and whether a split can be trusted.

The wording thresholds are for captions only (how to describe a number), never used as results.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from dashboard.ui.controls import hounsfield_text
from dashboard.ui.figures import probability_text
from pipeline.attacks import attack_class
from pipeline.constants import GREY_LEVEL
from pipeline.scan_report import ScanReport

#: How a change is worded, by the most any one pixel changed (grey levels of the 8-bit image shown).
#: On a display calibrated to the DICOM Grayscale Standard Display Function (DICOM PS3.14,
#: https://dicom.nema.org/medical/dicom/current/output/html/part14.html) an 8-bit grey level spans
#: about one just-noticeable luminance difference or more, so a change of a whole level can in
#: principle be seen on a flat area; below half a level the 8-bit image shown does not change at all.
UNSEEN_LEVELS = 0.5
#: Up to this many levels per pixel, with a PSNR of at least :data:`INVISIBLE_DB`, a noise-like
#: change passes unnoticed without a side-by-side comparison (a few just-noticeable differences).
SUBTLE_LEVELS = 4.0
#: PSNR (dB) above which image-processing practice calls a change imperceptible, below which plain.
INVISIBLE_DB = 40.0
VISIBLE_DB = 30.0


def percent(value: float) -> str:
    return f"{100 * value:.0f}%"


def grey_levels(value: float) -> str:
    levels = value / GREY_LEVEL
    return f"{levels:.0f}" if abs(levels - round(levels)) < 0.05 else f"{levels:.1f}"


def visibility(linf: float, psnr_db: float) -> str:
    """Whether a person would notice a change of at most ``linf`` (image scale) per pixel with this PSNR.

    "Invisible" only below half a grey level, where the 8-bit image shown is the same; larger changes
    are "hard to notice" (at most :data:`SUBTLE_LEVELS` levels and PSNR >= :data:`INVISIBLE_DB`), "hard
    to see without comparing side by side" (PSNR >= :data:`VISIBLE_DB`) or "visible on close inspection".
    """
    levels = linf / GREY_LEVEL
    if levels < UNSEEN_LEVELS:
        return "invisible: no pixel of the 8-bit image shown changes"
    quiet = not math.isfinite(psnr_db) or psnr_db >= INVISIBLE_DB
    if quiet and levels <= SUBTLE_LEVELS:
        return (f"hard to notice without the original beside it (each changed pixel moves by a few "
                f"just-noticeable differences at most; PSNR {psnr_db:.0f} dB)")
    if quiet or psnr_db >= VISIBLE_DB:
        return (f"hard to see without comparing side by side, though single pixels change by up to "
                f"{grey_levels(linf)} grey levels (PSNR {psnr_db:.0f} dB)")
    return f"visible on close inspection (PSNR {psnr_db:.0f} dB)"


def change_sentence(report: ScanReport) -> str:
    """How big the change is, in grey levels (and Hounsfield units for a CT slice), and whether one
    would notice it (:func:`visibility`); for an attack whose budget is not in grey levels (a move, a
    patch), what it did in its own units."""
    if report.change is not None:
        return report.change
    if report.linf == 0:
        return "The attack left the scan unchanged."
    levels = report.linf / GREY_LEVEL
    share = report.l0 / report.clean.size
    return (
        f"The attacked scan differs from the original by at most {grey_levels(report.linf)} grey "
        f"level{'s' if levels >= 1.5 else ''} per pixel{hounsfield_text(report.linf, report.hu_per_grey_level)}, "
        f"in {percent(share)} of the pixels: {visibility(report.linf, report.psnr)}."
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
        f"{probability_text(p_before)} to {probability_text(p_after)}{basis}."
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
        f"{attack_class(report.attack).title} with a budget of {grey_levels(value)}/255 grey levels"
        f"{hounsfield_text(value, report.hu_per_grey_level)} is the smallest found that changes the "
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
