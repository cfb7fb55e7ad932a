"""What the dashboard suites share: tiny trained runs, a finished evaluation, rerunning an app until done."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from streamlit.testing.v1 import AppTest

from pipeline.evaluation import StrengthSettings, SuiteSettings, evaluate_models
from pipeline.evaluation.data import run_data
from pipeline.evaluation.report import save_report
from pipeline.store import load_model

#: ResNet-18s on 36 phantom scans, one epoch: seconds to train, enough for every page to draw.
TINY = dict(
    arch="resnet18",
    count=36,
    epochs=1,
    batch_size=8,
    eval_size=8,
    val_steps=1,
    device="cpu",
    test_fraction=0.25,
)
#: Every part of a report, each at its smallest: strength checks, transfer, minimal ε, certification,
#: two CT corruptions and the faithfulness of a few maps.
SMALL_SUITE = SuiteSettings(
    attacks=("fgsm", "pgd", "cw-linf"),
    epsilons=(2 / 255, 4 / 255),
    curve_epsilons=(),  # two budgets already; the default curve is drawn in test_dashboard_evaluate.py
    steps=2,
    strength=True,
    strength_settings=StrengthSettings(
        pgd_steps=2, strong_steps=3, strong_restarts=1, square_queries=20, ensemble_steps=2
    ),
    transfer=True,
    minimal_epsilon=True,
    certify_sigma=0.25,
    certify_n=20,
    corruptions=("jpeg", "rings"),
    faithfulness_scans=4,
)


def finished_evaluation(run_dirs: list[Path]) -> Path:
    """Evaluate the runs on the first one's test scans and save the report where the dashboard looks."""
    loaded = {}
    for run_dir in run_dirs:
        model, record = load_model(run_dir)
        loaded[record.name] = model
    dataset, split = run_data(load_model(run_dirs[0])[1])
    folder = run_dirs[0] / "evaluations" / "20260101-000000"
    save_report(evaluate_models(loaded, dataset, split.test, SMALL_SUITE), folder)
    return folder


def run_until(at: AppTest, done: Callable[[AppTest], bool]) -> AppTest:
    """Rerun the app (as the page's polling fragment would) until ``done`` holds; an exception on the
    page fails at once. No clock of its own: a loaded machine is only slower, and a hang is left to
    the test's own time limit (pytest-timeout, pyproject.toml)."""
    while not done(at):
        assert not at.exception, [item.value for item in at.exception]
        time.sleep(0.3)
        at.run()
    return at
