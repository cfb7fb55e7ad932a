"""Controls built from an attack's parameter schema, so every registered attack gets a form.

Budgets and step sizes (``Param.grey_levels``) are shown as ``k/255`` grey levels, the unit a
person can picture, with what that means in Hounsfield units under the lung window.
"""

from __future__ import annotations

import math
from typing import Any

import streamlit as st

from pipeline.attacks import attack_schema
from pipeline.constants import GREY_LEVEL, LUNG_WINDOW
from pipeline.params import Param

#: One 8-bit grey level under the lung window spans this many Hounsfield units (1500/255 ≈ 5.9).
HU_PER_GREY_LEVEL = LUNG_WINDOW[0] / 255.0
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
}


def label_for(name: str) -> str:
    return LABELS.get(name, name.replace("_", " ").capitalize())


def grey_levels_text(value: float) -> str:
    """``4/255 grey levels (≈ 23.5 HU in the lung window)`` for a value in image scale."""
    levels = value / GREY_LEVEL
    shown = f"{levels:.0f}" if abs(levels - round(levels)) < 1e-6 else f"{levels:.2f}"
    return f"{shown}/255 grey levels (≈ {levels * HU_PER_GREY_LEVEL:.1f} HU in the lung window)"


def _grey_slider(param: Param, key: str, start: float) -> float:
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
    st.caption(f"{label_for(param.name)} = {grey_levels_text(levels * GREY_LEVEL)}")
    return levels * GREY_LEVEL


def _starting_value(param: Param) -> Any:
    """The default, or for an "automatic" parameter (default None) a reasonable first manual value."""
    if param.default is not None:
        return param.default
    if param.grey_levels:
        return GREY_LEVEL
    if param.low is not None and param.high is not None:
        if param.kind is float and param.low > 0 and param.high / param.low >= 1e3:
            return math.sqrt(param.low * param.high)  # a range over decades (CW's c): its geometric middle
        middle = (param.low + param.high) / 2
        return int(round(middle)) if param.kind is int else middle
    return param.kind()


def param_control(param: Param, key: str) -> Any:
    """One widget for ``param``; a parameter that defaults to automatic (None) has an opt-in switch."""
    if param.default is None and not st.checkbox(
        f"Set {label_for(param.name).lower()} by hand",
        key=f"{key}:manual",
        help=f"{param.help} (automatic unless set)",
    ):
        return None
    start = _starting_value(param)
    if param.grey_levels:
        return _grey_slider(param, key, start)
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


def attack_controls(name: str, *, key: str) -> dict[str, Any]:
    """Draw a control per parameter of attack ``name``; return the chosen values (None = automatic).

    The budget and the effort are shown directly, the rest in an "Advanced settings" expander,
    so a clinician sees what matters and a researcher can still reach every knob.
    """
    schema = attack_schema(name)
    values: dict[str, Any] = {}
    for param in schema:
        if param.name in BASIC:
            values[param.name] = param_control(param, f"{key}:{name}:{param.name}")
    advanced = [param for param in schema if param.name not in BASIC]
    if advanced:
        with st.expander("Advanced settings"):
            for param in advanced:
                values[param.name] = param_control(param, f"{key}:{name}:{param.name}")
    return {name: value for name, value in values.items() if value is not None}
