"""The demo: a standard and a robust model on the synthetic phantom, ready to attack side by side.

:func:`install_shipped` copies the two models that ship with the lab into a run store in seconds;
:func:`prepare_demo` trains both anew and records them (``runs/demo.json``); :func:`read_demo` finds
them again; :mod:`.shipped` also regenerates the shipped files; :mod:`.background` runs the
preparation as a dashboard job and :mod:`.cli` as ``python -m pipeline demo``.
"""

from pipeline.demo.core import (
    DEMO_FILE,
    EVAL_EPSILONS,
    EVAL_STEPS,
    RECIPES,
    Demo,
    DemoModel,
    DemoRecipe,
    default_recipe,
    prepare_demo,
    read_demo,
)
from pipeline.demo.shipped import SHIPPED_DIR, StaleShippedDemo, install_shipped, verify_shipped

__all__ = [
    "DEMO_FILE", "EVAL_EPSILONS", "EVAL_STEPS", "RECIPES", "Demo", "DemoModel", "DemoRecipe",
    "SHIPPED_DIR", "StaleShippedDemo", "default_recipe", "install_shipped", "prepare_demo", "read_demo",
    "verify_shipped",
]
