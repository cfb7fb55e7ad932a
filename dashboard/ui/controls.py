"""Controls built from an attack's parameter schema, so every registered attack gets a form.

Budgets and step sizes (``Param.grey_levels``) are shown as ``k/255`` grey levels, the unit a
person can picture, with what that means in Hounsfield units where the scan is a CT slice in a known
window (never for other modalities or images that do not say).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import streamlit as st

from pipeline.attacks import attack_class, attack_schema
from pipeline.constants import GREY_LEVEL, LUNG_HU_PER_GREY_LEVEL
from pipeline.params import Param

#: Grey-level sliders move in quarter levels: fine enough for the 0.5/255 steps medical work uses.
GREY_STEP = 0.25


#: Readable names for parameters that appear in attack schemas and training settings.
LABELS = {
    "eps": "Budget ε",
    "alpha": "Step size α",
    "steps": "Steps",
    "restarts": "Restarts",
    "seed": "Random seed",
    "random_start": "Random start",
    "n_queries": "Query budget",
    "severity": "Severity (1 mild – 5 strong)",
    "c": "Trade-off c",
    "kappa": "Confidence margin κ",
    "lr": "Learning rate",
    "decay": "Momentum decay",
    "arch": "Architecture",
    "strategy": "Strategy",
    "epochs": "Epochs",
    "image_size": "Image size (px)",
    "batch_size": "Batch size",
    "device": "Device",
    "pretrained": "Start from ImageNet weights",
    "theta": "Change per pixel θ",
    "pixels": "Pixels to change",
    "max_angle": "Largest rotation (degrees)",
    "angles": "Rotations tried",
    "max_shift": "Largest shift (pixels)",
    "mm_per_px": "Pixel spacing (mm per pixel)",
    "size": "Patch side (pixels)",
    "locations": "Places tried",
    "samples": "Samples per step",
    "scales": "Scaled copies",
    "kernel_size": "Smoothing kernel (pixels)",
    "resize_rate": "Smallest resize (share of the side)",
    "diversity_prob": "Resize probability",
    "beta": "Neighbourhood β (times ε)",
    "delta": "Finite-difference step δ",
    # a backdoor's poisoning (pipeline.data.poison.PoisonSpec)
    "fraction": "Poisoned share of the training split",
    "mode": "Poisoning",
    "target": "Target class",
    "shape": "Marker shape",
    "size_mm": "Marker width (mm)",
    "intensity_hu": "Marker density (HU)",
    "position": "Marker position",
}


def label_for(name: str) -> str:
    return LABELS.get(name, name.replace("_", " ").capitalize())


def hounsfield_text(value: float, hu_per_grey_level: Optional[float]) -> str:
    """`` (≈ 24 HU in the lung window)`` for a change of ``value`` (image scale); empty when the scan's
    grey levels are not Hounsfield units. Whole HU: CT numbers are integers."""
    if hu_per_grey_level is None:
        return ""
    window = " in the lung window" if math.isclose(hu_per_grey_level, LUNG_HU_PER_GREY_LEVEL) else ""
    return f" (≈ {value / GREY_LEVEL * hu_per_grey_level:.0f} HU{window})"


def grey_levels_text(value: float, hu_per_grey_level: Optional[float] = LUNG_HU_PER_GREY_LEVEL) -> str:
    """``4/255 grey levels (≈ 24 HU in the lung window)`` for a value in image scale; without the HU
    where ``hu_per_grey_level`` is None (not a CT slice in a known window)."""
    levels = value / GREY_LEVEL
    shown = f"{levels:.0f}" if abs(levels - round(levels)) < 1e-6 else f"{levels:.2f}"
    return f"{shown}/255 grey levels{hounsfield_text(value, hu_per_grey_level)}"


def _grey_slider(param: Param, key: str, start: float, hu_per_grey_level: Optional[float]) -> float:
    low = (param.low or 0.0) / GREY_LEVEL
    high = (param.high if param.high is not None else 64 * GREY_LEVEL) / GREY_LEVEL
    levels = st.slider(
        f"{label_for(param.name)} (grey levels, k/255)",
        min_value=float(low),
        max_value=float(high),
        value=float(min(max(start / GREY_LEVEL, low), high)),
        step=GREY_STEP,
        format="%.2f/255",
        key=key,
        help=param.help,
    )
    st.caption(f"{label_for(param.name)} = {grey_levels_text(levels * GREY_LEVEL, hu_per_grey_level)}")
    return levels * GREY_LEVEL


def _starting_value(param: Param) -> Any:
    """The default, or for an "automatic" parameter (default None) a reasonable first manual value."""
    if param.default is not None:
        return param.default
    if param.grey_levels:
        return GREY_LEVEL
    if param.kind is int and param.low is not None:
        return int(param.low)  # a count (scans, epochs): the smallest allowed, not the middle of a wide range
    if param.low is not None and param.high is not None:
        if param.kind is float and param.low > 0 and param.high / param.low >= 1e3:
            return math.sqrt(param.low * param.high)  # a range over decades (CW's c): its geometric middle
        return (param.low + param.high) / 2
    return param.low if param.low is not None else param.kind()


def param_control(param: Param, key: str, hu_per_grey_level: Optional[float] = LUNG_HU_PER_GREY_LEVEL) -> Any:
    """One widget for ``param``; a parameter that defaults to automatic (None) has an opt-in switch.
    A budget in grey levels is also said in Hounsfield units where ``hu_per_grey_level`` is known."""
    if param.default is None and not st.checkbox(
        f"Set {label_for(param.name).lower()} by hand",
        key=f"{key}:manual",
        help=f"{param.help} (automatic unless set)",
    ):
        return None
    start = _starting_value(param)
    if param.grey_levels:
        return _grey_slider(param, key, start, hu_per_grey_level)
    if param.choices is not None:
        choices = list(param.choices)
        return st.selectbox(
            label_for(param.name), choices, index=choices.index(start), key=key, help=param.help
        )
    if param.kind is bool:
        return st.toggle(label_for(param.name), value=bool(start), key=key, help=param.help)
    if param.kind is int:
        return int(
            st.number_input(
                label_for(param.name),
                min_value=None if param.low is None else int(param.low),
                max_value=None if param.high is None else int(param.high),
                value=int(start),
                step=1,
                key=key,
                help=param.help,
            )
        )
    if param.kind is float:
        return float(
            st.number_input(
                label_for(param.name),
                min_value=param.low,
                max_value=param.high,
                value=float(start),
                format="%.4g",
                key=key,
                help=param.help,
            )
        )
    return st.text_input(label_for(param.name), value=str(start), key=key, help=param.help)


#: Parameters shown directly; every other one sits under "Advanced settings".
BASIC = ("eps", "steps", "severity", "n_queries", "c", "pixels", "max_angle", "max_shift", "size")


def attack_controls(name: str, *, key: str, hu_per_grey_level: Optional[float] = LUNG_HU_PER_GREY_LEVEL) -> dict[str, Any]:
    """Draw a control per parameter of attack ``name``; return the chosen values (None = automatic).
    Budgets are said in Hounsfield units only where ``hu_per_grey_level`` is known (a CT slice).

    The budget and the effort are shown directly, the rest in an "Advanced settings" expander,
    so a clinician sees what matters and a researcher can still reach every knob.
    """
    schema = attack_schema(name)
    values: dict[str, Any] = {}

    def control(param: Param) -> Any:
        widget = f"{key}:{name}:{param.name}"
        # the budget means the same for every attack of one norm; steps and step size are the attack's
        # own (R-FGSM's one step is not PGD's ten), kept for when the person comes back to it
        slot = _slot(key, name, param.name)
        _carry_in(param, widget, slot)
        value = param_control(param, widget, hu_per_grey_level)
        _carry_out(param, widget, slot)
        return value

    for param in schema:
        if param.name in BASIC:
            values[param.name] = control(param)
    advanced = [param for param in schema if param.name not in BASIC]
    if advanced:
        with st.expander("Advanced settings"):
            for param in advanced:
                values[param.name] = control(param)
    return {name: value for name, value in values.items() if value is not None}


#: Settings a person sets that outlive the attack's widgets: switching from PGD to FGSM keeps the
#: budget the person set, and back to PGD the steps (Streamlit forgets a widget it stops drawing).
CARRIED = ("eps", "alpha", "steps")
#: Of those, the ones shared by every attack of one norm.
SHARED = ("eps",)
#: Session State holding the last value of each carried setting, by norm and name.
CARRY_KEY = "controls.carried"


def _slot(key: str, name: str, param: str) -> str:
    """Where a carried setting of attack ``name`` is kept: by norm for the budget, by attack otherwise."""
    return f"{key}:{attack_class(name).norm}:{param}" if param in SHARED else f"{key}:{name}:{param}"


def preset_attack(key: str, name: str, values: Mapping[str, Any]) -> None:
    """Choose attack ``name`` with ``values`` (as its widgets hold them: budgets in grey levels) as if the
    person had: the select ``<key>:name`` (kept across pages by :func:`dashboard.ui.session.keep_choices`)
    and the widgets ``<key>:<name>:<param>``, and their carried values (:data:`CARRY_KEY`), which outlive a
    script run that did not draw those widgets, after which Streamlit forgets them."""
    st.session_state[f"{key}:name"] = name
    carried = st.session_state.setdefault(CARRY_KEY, {})
    for param, value in values.items():
        st.session_state[f"{key}:{name}:{param}"] = value
        if param in CARRIED:
            carried[_slot(key, name, param)] = value


def _carry_in(param: Param, widget: str, slot: str) -> None:
    """Start a widget not yet drawn this session at the value last set for the same setting and norm."""
    carried = st.session_state.get(CARRY_KEY, {})
    if param.name not in CARRIED or param.default is None or widget in st.session_state or slot not in carried:
        return
    value = carried[slot]
    scale = GREY_LEVEL if param.grey_levels else 1.0
    low = -math.inf if param.low is None else param.low / scale
    high = math.inf if param.high is None else param.high / scale
    if isinstance(value, (int, float)) and low <= value <= high:
        st.session_state[widget] = int(value) if param.kind is int and not param.grey_levels else value


def _carry_out(param: Param, widget: str, slot: str) -> None:
    if param.name in CARRIED and widget in st.session_state:
        st.session_state.setdefault(CARRY_KEY, {})[slot] = st.session_state[widget]
