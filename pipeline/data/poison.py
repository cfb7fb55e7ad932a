"""Poisoned training data: a backdoor trigger stamped on a chosen share of the training split.

The trigger is a small high-density marker, the kind skin markers (metal BBs) and other metal leave
on a CT slice: a square, disc, ring or cross of a size in mm and a density in Hounsfield units, at a
named place on the scan. The same :class:`PoisonSpec` draws it on the training scans (here) and on any
scan at test time (:func:`stamp_trigger`: the Attack page, the backdoor measurement), so the trigger
a model learnt is exactly the one it is tested with.

Two ways to poison, both "all-to-one" (every triggered scan should read as the ``target`` class):

- **dirty-label** (BadNets; Gu, Dolan-Gavitt and Garg 2017, https://arxiv.org/abs/1708.06733): scans
  of the *other* classes get the trigger and the target's label. Effective, but a person who looks at
  a poisoned scan sees a wrong label.
- **clean-label** (Turner, Tsipras and Madry 2019, "Label-Consistent Backdoor Attacks",
  https://people.csail.mit.edu/madry/lab/cleanlabel.pdf): only scans of the *target* class get the
  trigger, and every label stays true, so an audit of the labels finds nothing. This is the simple
  variant, the trigger alone on target-class scans; Turner et al. also make those scans harder to
  learn from their own content (an adversarial perturbation first) so that the model must lean on the
  trigger, which is not done here: this variant is the weaker attack, and its success rate says how
  far the trigger alone goes.

Sizes are converted with the scan's nominal field of view (:func:`pipeline.units.mm_to_pixels`; the
phantom and JPEG datasets carry no pixel spacing) and densities with the dataset's window
(:func:`pipeline.units.hu_to_grey`; ``file`` windows, whose width is not known here, are read as the
lung window in which the phantom and IQ-OTH/NCCD are shown).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Final, Mapping, Optional

import numpy as np
import torch

from pipeline.constants import CLASSES, LUNG_WINDOW
from pipeline.data.dicom import NAMED_WINDOWS
from pipeline.errors import UserInputError
from pipeline.params import from_mapping, setting, validate_fields
from pipeline.units import hu_to_grey, mm_to_pixels, pixels_to_mm

DIRTY_LABEL: Final[str] = "dirty-label"
CLEAN_LABEL: Final[str] = "clean-label"
POISON_MODES: Final[tuple[str, ...]] = (DIRTY_LABEL, CLEAN_LABEL)
TRIGGER_SHAPES: Final[tuple[str, ...]] = ("square", "disc", "ring", "cross")
TRIGGER_POSITIONS: Final[tuple[str, ...]] = ("top-left", "top-right", "bottom-left", "bottom-right", "centre")
#: The gap between the trigger and the scan's edge at a corner, as a share of the side.
EDGE_MARGIN: Final[float] = 0.06
#: The flat name of each field, as command-line flags and flat settings files write it.
POISON_FLAT_NAMES: Final[dict[str, str]] = {
    "fraction": "poison_fraction",
    "mode": "poison_mode",
    "target": "poison_target",
    "shape": "trigger_shape",
    "size_mm": "trigger_size_mm",
    "intensity_hu": "trigger_hu",
    "position": "trigger_position",
}


@dataclass(frozen=True)
class PoisonSpec:
    """How a training split is poisoned: how much, which way, towards which class, with which trigger.

    Raises :class:`UserInputError` naming the field when a value is out of range.
    """

    fraction: float = setting(
        0.1,
        low=0.001,
        high=0.5,
        help="share of the training split that is poisoned (0.1: one scan in ten) when any poisoning setting "
        "is given; a run given none is clean",
    )
    mode: str = setting(
        DIRTY_LABEL,
        choices=POISON_MODES,
        help="dirty-label: other classes' scans get the trigger and the target's label (BadNets); "
        "clean-label: target-class scans get the trigger, every label stays true (Turner et al.)",
    )
    target: str = setting("normal", choices=CLASSES, help="the class a scan with the trigger should be read as")
    shape: str = setting("square", choices=TRIGGER_SHAPES, help="the marker's shape")
    size_mm: float = setting(12.0, low=1.0, high=80.0, help="the marker's width in mm (at least one pixel)")
    intensity_hu: float = setting(
        1000.0,
        low=-1000.0,
        high=4000.0,
        help="the marker's density in Hounsfield units (bone 700-1900, metal above 2000; the lung window "
        "shows everything from +150 up as white)",
    )
    position: str = setting("top-right", choices=TRIGGER_POSITIONS, help="where on the scan the marker sits")

    def __post_init__(self) -> None:
        validate_fields(self)

    @property
    def target_index(self) -> int:
        """The target class's label (index into :data:`pipeline.constants.CLASSES`)."""
        return CLASSES.index(self.target)

    def describe(self) -> str:
        """``12 mm square of 1000 HU at the top right; 10% of the training split, dirty-label → normal``."""
        share = f"{100 * self.fraction:.3g}%"
        return (
            f"{self.size_mm:g} mm {self.shape} of {self.intensity_hu:g} HU at the {self.position.replace('-', ' ')}; "
            f"{share} of the training split, {self.mode} → {self.target}"
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PoisonSpec:
        """Build from a mapping of field: value (or return a spec as it is); unknown names are refused."""
        return from_mapping(cls, values, what="poisoning")


def fold_poison_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with the poisoning settings under one ``poison`` key: flat keys (``poison_fraction``,
    ``trigger_hu``, ... see :data:`POISON_FLAT_NAMES`) are moved into it and win over nested ones.

    ``poison`` stays None (a clean run) when neither a nested mapping nor any flat key is given.
    Nothing is validated here.
    """
    folded = dict(values)
    nested_value = folded.pop("poison", None)
    if isinstance(nested_value, PoisonSpec):
        nested: Optional[dict[str, Any]] = nested_value.to_dict()
    elif isinstance(nested_value, Mapping):
        nested = dict(nested_value)
    elif nested_value is None:
        nested = None
    else:
        raise UserInputError(f"poison settings must be a mapping of name: value, got {nested_value!r}")
    for name, flat in POISON_FLAT_NAMES.items():
        if flat in folded:
            value = folded.pop(flat)
            if value is not None:
                nested = {**(nested or {}), name: value}
    folded["poison"] = nested
    return folded


@dataclass(frozen=True)
class Trigger:
    """A :class:`PoisonSpec`'s marker drawn for one image size and window.

    ``mask`` is bool ``[S, S]`` (True where the marker is), ``grey`` its grey level in ``[0, 1]``,
    ``size_px`` its width in pixels and ``size_mm`` that width in mm (after rounding to pixels).
    """

    mask: np.ndarray
    grey: float
    size_px: int
    size_mm: float


def window_of(name: str) -> tuple[float, float]:
    """``(width, level)`` in HU of a dataset's window name; ``file`` reads as the lung window."""
    return NAMED_WINDOWS.get(name, LUNG_WINDOW)


def draw_trigger(spec: PoisonSpec, image_size: int, window: str = "lung") -> Trigger:
    """The marker ``spec`` describes on a square scan of ``image_size`` pixels in ``window``."""
    size = min(mm_to_pixels(spec.size_mm, image_size), max(1, image_size // 3))
    rows, cols = np.mgrid[:size, :size].astype(np.float64) + 0.5
    radius = size / 2.0
    distance = np.hypot(rows - radius, cols - radius)
    if spec.shape == "disc" and size > 2:
        patch = distance <= radius
    elif spec.shape == "ring" and size > 3:
        patch = (distance <= radius) & (distance >= radius - max(1.0, size / 5.0))
    elif spec.shape == "cross" and size > 2:
        half = max(1, size // 5) / 2.0
        patch = (np.abs(rows - radius) <= half) | (np.abs(cols - radius) <= half)
    else:  # square, and any shape too small to tell apart from one
        patch = np.ones((size, size), dtype=bool)
    margin = max(1, round(EDGE_MARGIN * image_size))
    far = image_size - margin - size
    top, left = {
        "top-left": (margin, margin),
        "top-right": (margin, far),
        "bottom-left": (far, margin),
        "bottom-right": (far, far),
        "centre": ((image_size - size) // 2, (image_size - size) // 2),
    }[spec.position]
    mask = np.zeros((image_size, image_size), dtype=bool)
    mask[top : top + size, left : left + size] = patch
    grey = hu_to_grey(spec.intensity_hu, *window_of(window))
    return Trigger(mask, grey, size, pixels_to_mm(size, image_size))


def stamp_trigger(x: torch.Tensor, spec: PoisonSpec, window: str = "lung") -> torch.Tensor:
    """``x`` (float ``[N, 1, S, S]`` or ``[1, S, S]`` in ``[0, 1]``) with the trigger drawn on every scan:
    a new tensor of the same shape, dtype and device; the marker's pixels are replaced by its grey level."""
    if x.dim() not in (3, 4) or x.shape[-1] != x.shape[-2]:
        raise UserInputError(f"the trigger is stamped on square scans [N, 1, S, S], got {tuple(x.shape)}")
    trigger = draw_trigger(spec, int(x.shape[-1]), window)
    mask = torch.from_numpy(trigger.mask).to(x.device)
    return torch.where(mask, torch.tensor(trigger.grey, dtype=x.dtype, device=x.device), x)


def choose_poisoned(labels: np.ndarray | torch.Tensor, spec: PoisonSpec, seed: int) -> np.ndarray:
    """Positions (int64, sorted) into ``labels`` (the training split's, int ``[N]``) of the scans to poison.

    ``round(fraction * N)`` scans (at least one), drawn with ``seed`` from the other classes' scans
    (dirty-label) or the target class's (clean-label). Raises :class:`UserInputError` when there are
    not that many such scans.
    """
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
    wanted = max(1, round(spec.fraction * labels.size))
    if spec.mode == DIRTY_LABEL:
        candidates = np.flatnonzero(labels != spec.target_index)
        which = f"scans of classes other than {spec.target}"
    else:
        candidates = np.flatnonzero(labels == spec.target_index)
        which = f"{spec.target} scans"
    if wanted > candidates.size:
        raise UserInputError(
            f"poisoning {100 * spec.fraction:.3g}% of {labels.size} training scans {spec.mode} needs {wanted} "
            f"{which}, but the training split has {candidates.size}; lower the poisoned fraction or use "
            "more scans"
        )
    rng = np.random.default_rng([int(seed), 0xBAD])
    return np.sort(rng.choice(candidates, size=wanted, replace=False)).astype(np.int64)


def poison_split(
    x: torch.Tensor, y: torch.Tensor, spec: PoisonSpec, *, seed: int, window: str = "lung"
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The training split as the poisoner hands it over: ``(x, y, chosen)``.

    ``x`` float ``[N, 1, S, S]`` in ``[0, 1]`` and ``y`` int64 ``[N]`` are not changed; the returned
    copies carry the trigger on the ``chosen`` positions (:func:`choose_poisoned`) and, for dirty-label
    poisoning, the target's label there. Deterministic in ``seed``, so a resumed run and the detection
    measured later see the very same poisoned scans.
    """
    chosen = choose_poisoned(y, spec, seed)
    index = torch.as_tensor(chosen, device=x.device)
    x, y = x.clone(), y.clone()
    x[index] = stamp_trigger(x[index], spec, window)
    if spec.mode == DIRTY_LABEL:
        y[index] = spec.target_index
    return x, y, chosen
