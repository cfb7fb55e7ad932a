"""Lung CT robustness lab: data, models, attacks, training and evaluation for 3-class lung CT.

The package never imports streamlit; the dashboard is a thin view over it.
"""

from pipeline.constants import CLASSES, NUM_CLASSES

# The composition root: the run store checks every record's training settings with the training
# configuration's schema, which the store (a lower layer) cannot import itself. Importing the
# configuration here registers that check before any run can be opened, whichever module of the
# package a program imports first.
import pipeline.training.config  # noqa: E402,F401

__all__ = ["CLASSES", "NUM_CLASSES"]
