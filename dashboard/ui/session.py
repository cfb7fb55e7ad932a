"""The choices a person makes on one page and the others follow: which dataset, which model.

Kept under plain (non-widget) keys: Streamlit forgets a widget's state when its page is not
shown, and the sidebar and every page must agree on the current dataset and model. The dataset
is a :class:`pipeline.data.DataSpec`: the Data page previews it and training trains on it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import streamlit as st

from dashboard.ui.settings import default_source
from pipeline.data import DataSpec
from pipeline.store import read_record
from pipeline.training import TrainConfig

DATASET_KEY = "lunglab.dataset"
RUN_KEY = "lunglab.run"
#: A fresh session starts with the data of the preset a first training uses.
DEFAULT_PRESET = "quick"


def dataset_choice() -> DataSpec:
    """The dataset chosen on the Data page; before any choice, the data of the model in use (on a first
    start, the demo's), so that one session shows one dataset; with no model, the quick preset's data
    from the configured source."""
    choice = st.session_state.get(DATASET_KEY)
    if choice is None:
        choice = st.session_state[DATASET_KEY] = _model_data() or dataclasses.replace(
            TrainConfig.from_preset(DEFAULT_PRESET).data, source=default_source()
        )
    return choice


def _model_data() -> Optional[DataSpec]:
    """The DataSpec the selected model was trained on, when it was trained here (imported weights say
    nothing about their data)."""
    run = selected_run()
    if run is None:
        return None
    record = read_record(Path(run))
    if record.error is not None or "split" not in record.config:
        return None
    return record.data


def set_dataset_choice(choice: DataSpec) -> None:
    st.session_state[DATASET_KEY] = choice


def dataset_label(spec: DataSpec) -> str:
    """``Synthetic phantom`` or the folder's path."""
    return "Synthetic phantom" if spec.synthetic else spec.source


def dataset_summary(spec: DataSpec) -> str:
    """``Synthetic phantom, 1200 scans at 64 px, grouped split (seed 0)``: what a model trains on."""
    scans = f"{spec.count} scans at {spec.image_size} px" if spec.synthetic else f"{spec.image_size} px"
    return f"{dataset_label(spec)}, {scans}, {spec.split_strategy} split (seed {spec.split_seed})"


def selected_run() -> Optional[str]:
    """The run directory chosen in the sidebar, or None when there is no model yet."""
    return st.session_state.get(RUN_KEY)


#: Choices of the Attack page that outlive a visit to another page (the scan, the attack, the model
#: beside it): Streamlit forgets a widget's value in a run that does not draw it. The attack's own
#: settings are carried by :mod:`dashboard.ui.controls`.
KEPT_CHOICES = ("attack:source", "attack:class", "attack:position", "attack:name", "attack:compare")


def keep_choices() -> None:
    """Keep :data:`KEPT_CHOICES` across pages: called on every run before the page runs, it hands each
    value set so far back to Session State as the person's own, which Streamlit does not forget."""
    for key in KEPT_CHOICES:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]
