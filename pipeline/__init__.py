"""Lung CT robustness lab: data, models, attacks, training and evaluation for 3-class lung CT.

The package never imports streamlit; the dashboard is a thin view over it.
"""

from pipeline.constants import CLASSES, NUM_CLASSES

__all__ = ["CLASSES", "NUM_CLASSES"]
