"""The choices a person makes on one page and the others follow: which dataset, which model.

Kept under plain (non-widget) keys: Streamlit forgets a widget's state when its page is not
shown, and the sidebar and every page must agree on the current dataset and model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import streamlit as st

from dashboard.ui.settings import default_source

DATASET_KEY = "lunglab.dataset"
RUN_KEY = "lunglab.run"
#: The image size the Data page browses at; models use their own training size.
BROWSE_SIZE = 128


@dataclass(frozen=True)
class DatasetChoice:
    """A dataset as the user chose it on the Data page (or the configured default)."""

    source: str = "synthetic"
    image_size: int = BROWSE_SIZE
    count: int = 600  #: phantom scans (synthetic only)
    strategy: str = "grouped"
    seed: int = 0

    @property
    def synthetic(self) -> bool:
        return self.source.strip().lower() == "synthetic"

    @property
    def label(self) -> str:
        return "Synthetic phantom" if self.synthetic else self.source


def dataset_choice() -> DatasetChoice:
    choice = st.session_state.get(DATASET_KEY)
    if choice is None:
        choice = st.session_state[DATASET_KEY] = DatasetChoice(source=default_source())
    return choice


def set_dataset_choice(choice: DatasetChoice) -> None:
    st.session_state[DATASET_KEY] = choice


def selected_run() -> Optional[str]:
    """The run directory chosen in the sidebar, or None when there is no model yet."""
    return st.session_state.get(RUN_KEY)
