"""Epsilons as people write them (``4/255``, ``0.0157``) and as the code uses them (``[0, 1]`` scale),
and shares of scans as percentages no more precise than their count.

The command line, the dashboard and reports all show perturbation budgets as ``k/255`` grey
levels, while attacks take floats in image scale; this module converts both ways, and rejects
values that cannot be what the user meant (``4`` for ``4/255``, negative, above the attacks' cap).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Final, Iterable

from pipeline.constants import CHEST_FIELD_OF_VIEW_MM, GREY_LEVEL
from pipeline.errors import UserInputError

#: The largest L-infinity budget any norm-bounded attack accepts (a quarter of the grey range).
MAX_EPSILON: Final[float] = 64 * GREY_LEVEL


def parse_epsilon(text: str | float, *, maximum: float = MAX_EPSILON, allow_zero: bool = False) -> float:
    """Read one epsilon: ``"4/255"``, ``"0.0157"`` or a float; raise a helpful error otherwise."""
    raw = str(text).strip().replace(" ", "")
    try:
        value = float(Fraction(raw)) if isinstance(text, str) else float(text)
    except (ValueError, ZeroDivisionError):
        raise UserInputError(
            f"cannot read epsilon {raw!r}: write a fraction of the grey range like 4/255 or a decimal like "
            "0.0157"
        ) from None
    if not math.isfinite(value):
        raise UserInputError(f"epsilon {raw!r} is not a finite number; write e.g. 4/255")
    if value < 0 or (value == 0 and not allow_zero):
        raise UserInputError(f"epsilon {raw!r} must be positive; write e.g. 4/255")
    if value >= 1:
        raise UserInputError(
            f"epsilon {raw!r} is at least the whole grey range [0, 1]; epsilons are in image scale, so write "
            f"{_as_grey_levels(raw)} for {raw} grey levels"
        )
    if value > maximum + 1e-12:
        raise UserInputError(
            f"epsilon {raw!r} ({format_epsilon(value)}) is above the largest supported budget "
            f"{format_epsilon(maximum)}; such perturbations no longer leave the scan readable"
        )
    return value


def parse_epsilons(text: str, *, maximum: float = MAX_EPSILON) -> list[float]:
    """Read a comma-separated list like ``"2/255,4/255"``; duplicates removed, order kept."""
    parts = [part for part in str(text).split(",") if part.strip()]
    if not parts:
        raise UserInputError("no epsilon given; write a comma-separated list like 2/255,4/255")
    values: list[float] = []
    for part in parts:
        value = parse_epsilon(part, maximum=maximum)
        if not any(math.isclose(value, seen, abs_tol=1e-12) for seen in values):
            values.append(value)
    return values


def format_epsilons(values: Iterable[float], separator: str = ",") -> str:
    """The inverse of :func:`parse_epsilons`: ``2/255,4/255``."""
    return separator.join(format_epsilon(value) for value in values)


def format_epsilon(value: float | None) -> str:
    """``4/255`` when ``value`` is a whole number of grey levels, else a short decimal."""
    if value is None:
        return "-"
    levels = value / GREY_LEVEL
    if abs(levels - round(levels)) < 1e-6:
        return f"{round(levels)}/255"
    return f"{value:.4g}"


#: From this many scans on, one scan moves a share by at most 0.1 points and a decimal means something.
DECIMAL_SCANS: Final[int] = 1000


def format_share(value: float | None, scans: int | None = None) -> str:
    """A fraction in ``[0, 1]`` as a percentage, as precise as the number of scans behind it allows.

    One scan moves a share by ``100 / scans`` points, so below :data:`DECIMAL_SCANS` scans (or when
    the count is not known) a decimal would claim a precision the data lacks: ``44%`` on 9 scans,
    ``93.1%`` on 2,000. A missing or NaN value is ``—``.
    """
    if value is None or not math.isfinite(value):
        return "—"
    return f"{100 * value:.{share_decimals(scans)}f}%"


def share_decimals(scans: int | None) -> int:
    """Decimals of a percentage backed by ``scans`` scans: 1 from :data:`DECIMAL_SCANS` on, else 0."""
    return 1 if scans is not None and scans >= DECIMAL_SCANS else 0


def _as_grey_levels(raw: str) -> str:
    try:
        return f"{Fraction(raw)}/255"
    except (ValueError, ZeroDivisionError):
        return "k/255"


def hu_to_grey(hu: float, width: float, level: float) -> float:
    """The grey level in ``[0, 1]`` a value of ``hu`` Hounsfield units shows as under the window
    ``(width, level)``: linear from ``level - width/2`` (0) to ``level + width/2`` (1), clipped, as
    :func:`pipeline.data.dicom.apply_window` maps a scan (before its rounding to 8 bits). Under the lung
    window (1500/-600) everything from +150 HU up (bone, contrast, metal, skin markers) is white."""
    if not (math.isfinite(hu) and math.isfinite(width) and math.isfinite(level) and width > 0):
        raise UserInputError(
            f"a grey level needs a finite value in HU and a window of positive width, got {hu!r} HU "
            f"under ({width!r}, {level!r})"
        )
    return min(max((hu - (level - width / 2.0)) / width, 0.0), 1.0)


def mm_to_pixels(mm: float, image_size: int, field_of_view_mm: float = CHEST_FIELD_OF_VIEW_MM) -> int:
    """A length of ``mm`` millimetres in whole pixels (at least 1) of a square scan ``image_size``
    pixels a side showing ``field_of_view_mm`` (default :data:`CHEST_FIELD_OF_VIEW_MM`, for scans whose
    spacing is not known: the phantom, JPEG datasets); raises UserInputError for a non-positive value."""
    if not (math.isfinite(mm) and mm > 0 and image_size > 0 and field_of_view_mm > 0):
        raise UserInputError(
            f"a length needs positive mm, image size and field of view, got {mm!r} mm at {image_size!r} px "
            f"over {field_of_view_mm!r} mm"
        )
    return max(1, round(mm * image_size / field_of_view_mm))


def pixels_to_mm(pixels: float, image_size: int, field_of_view_mm: float = CHEST_FIELD_OF_VIEW_MM) -> float:
    """The inverse of :func:`mm_to_pixels` (without its rounding): ``pixels`` of a scan as millimetres."""
    return pixels * field_of_view_mm / image_size
