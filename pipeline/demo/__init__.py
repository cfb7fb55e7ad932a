"""The demo: a standard and a robust model on the synthetic phantom, ready to attack side by side.

:func:`prepare_demo` trains both and records them (``runs/demo.json``); :func:`read_demo` finds
them again; :mod:`.background` runs the preparation as a dashboard job and :mod:`.cli` as
``python -m pipeline demo``.
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

__all__ = [
    "DEMO_FILE", "EVAL_EPSILONS", "EVAL_STEPS", "RECIPES", "Demo", "DemoModel", "DemoRecipe",
    "default_recipe", "prepare_demo", "read_demo",
]
