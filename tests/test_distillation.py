"""Defensive distillation (issue 24.1, 24.4): the strategy, and the verdict that sees through it.

A distilled model looks robust to PGD on its softmax only because its logits are about T times an
ordinary model's and the softmax's gradient underflows; the adaptive attacks (PGD on the logits over
T, CW's margin) fool it as easily as the teacher. The fast tests distil the fixture's tiny CNN with
the strategy's own loss.
Synthetic test data only; nothing here is a medical result.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from pipeline.errors import UserInputError
from pipeline.evaluation import SuiteSettings, evaluate_models
from pipeline.evaluation.report import report_csv, report_html, report_json
from pipeline.evaluation.strength import StrengthSettings
from pipeline.evaluation.verdict import verdict_table
from pipeline.training import TrainConfig
from pipeline.training.strategies import DistillationTraining, strategy_class, training_temperature
from tests.evaluation_helpers import nodule_dataset, one_thread  # noqa: F401  (autouse fixture)
from tests.models_fixture import nodule_images, trained_model

TEMPERATURE = 100.0
EPS = 16 / 255
#: Every strength check, cut to the few scans and steps a test affords.
CHECKS = StrengthSettings(
    pgd_steps=5, strong_steps=5, strong_restarts=1, square_queries=60, ensemble_steps=3, ladder=(4.0,), scans=24
)


def test_distillation_needs_a_teacher_and_a_sensible_temperature() -> None:
    with pytest.raises(UserInputError, match="teacher_run"):
        TrainConfig(strategy="distillation")
    with pytest.raises(UserInputError, match="temperature"):
        TrainConfig(strategy="distillation", teacher_run="somewhere", temperature=0.5)
    assert strategy_class("distillation").uses == ("teacher_run", "temperature")
    assert TrainConfig(strategy="distillation", teacher_run="x").selection == "balanced"  # PGD is masked
    assert training_temperature({"strategy": "distillation", "temperature": 40}) == 40.0
    assert training_temperature({"strategy": "pgd", "temperature": 40}) == 1.0


@pytest.fixture(scope="module")
def distilled() -> tuple[torch.nn.Module, torch.nn.Module]:
    """The fixture's tiny CNN as teacher, and a copy of it distilled at T with the strategy's loss."""
    teacher = trained_model().model
    config = TrainConfig(strategy="distillation", teacher_run="(in memory)", temperature=TEMPERATURE)
    strategy = DistillationTraining(config, class_weights=None)
    strategy.teacher, strategy.teacher_temperature = teacher, 1.0  # what prepare() loads from a run
    student = copy.deepcopy(teacher).train()
    optimiser = torch.optim.Adam(student.parameters(), lr=3e-2)
    x, y = nodule_images(300, seed=0)
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for _ in range(8):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), 50):
                batch = order[start : start + 50]
                loss, _, _ = strategy.step(student, student, x[batch], y[batch], seed=0)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
    return teacher, student.eval()


@pytest.mark.slow
def test_the_student_keeps_the_teachers_answers_with_logits_about_t_times_larger(distilled) -> None:
    teacher, student = distilled
    x, y = nodule_images(60, seed=3)
    with torch.no_grad():
        theirs, ours = teacher(x), student(x)
    assert (ours.argmax(1) == theirs.argmax(1)).float().mean() > 0.9
    spread = lambda z: (z.max(1).values - z.min(1).values).median()  # noqa: E731
    assert spread(ours) > 10 * spread(theirs)  # the deployed softmax saturates


@pytest.fixture(scope="module")
def suite(distilled):
    teacher, student = distilled
    settings = SuiteSettings(
        attacks=("pgd", "cw-linf"),
        epsilons=(EPS,),
        steps=5,
        batch_size=24,
        strength_settings=CHECKS,
        calibration=False,
        faithfulness_scans=0,
        transfer=False,
    )
    info = {
        "teacher": {"strategy": "standard"},
        "distilled": {"strategy": "distillation", "temperature": TEMPERATURE},
    }
    return evaluate_models({"teacher": teacher, "distilled": student}, nodule_dataset(24), None, settings, info=info)


@pytest.mark.slow
def test_the_verdict_believes_the_adaptive_attack_on_a_distilled_model(suite) -> None:
    baseline, distilled = suite.verdicts
    assert baseline.model == "teacher" and baseline.defense is None
    assert distilled.model == "distilled" and distilled.defense == f"defensive distillation T={TEMPERATURE:g}"
    assert distilled.clean > 0.8
    assert distilled.naive > 0.5  # PGD on the saturated softmax barely moves
    assert distilled.adaptive < distilled.naive - 0.3  # on the logits it fools the model after all
    assert baseline.naive < 0.1  # the teacher, undefended, falls to plain PGD
    assert distilled.masking and "Believe" in distilled.believe and "masked" in distilled.believe
    check = next(entry for entry in suite.models if entry.name == "distilled").strength_at(EPS)
    assert check is not None and check.masking  # the strength checks fire on the naive figure
    flagged = {c.key for c in check.checks if c.flagged}
    assert flagged & {"black-box", "epsilon", "large-eps"}, flagged
    assert not baseline.masking


@pytest.mark.slow
def test_the_verdict_table_is_in_the_json_and_html_reports(suite) -> None:
    saved = json.loads(json.dumps(suite.to_dict()))["defence_verdicts"]
    rows = verdict_table(saved)
    assert [row["defence"] for row in rows] == ["none (baseline)", f"defensive distillation T={TEMPERATURE:g}"]
    csv_rows = [line for line in report_csv(suite).splitlines() if "defence verdict" in line]
    assert len(csv_rows) == 4 and any("naive attack" in line for line in csv_rows)
    html = report_html(suite)
    assert "Defence verdicts" in html and rows[1]["which number to believe"].split(":")[0] in html


@pytest.mark.slow
def test_the_evaluate_page_shows_the_verdict_table(suite, tmp_path) -> None:
    """The Evaluate page's drawing of a saved report (dashboard.ui.report_views) shows the same rows."""
    from streamlit.testing.v1 import AppTest

    saved = tmp_path / "report.json"
    saved.write_text(report_json(suite))

    def page(path: str) -> None:
        from dashboard.ui.report_views import defence_verdicts
        from pipeline.evaluation.report import read_report

        defence_verdicts(read_report(path))

    at = AppTest.from_function(page, args=(str(saved),)).run(timeout=60)
    assert not at.exception
    assert any("Defence verdicts" in item.value for item in at.markdown)
    shown = at.table[0].value
    assert list(shown["defence"]) == ["none (baseline)", f"defensive distillation T={TEMPERATURE:g}"]
    assert "Believe" in shown["which number to believe"].iloc[1]
