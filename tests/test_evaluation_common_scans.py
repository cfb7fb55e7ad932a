"""Every section that compares or combines models is given the same scans, by construction.

The fault this guards against (issue 22): with the quick strength checks on a subset of the scans,
the default evaluation of two models failed with "a paired comparison needs both models on the same
scans; got 48 and 200 results". The report written after each section (``on_section``) paired the
first model's worst case, taken over its strength checks on the subset, with the second model's,
whose checks had not run yet, over every scan. Here the suite with the default settings runs on
one, two and three real tiny models, at the quick and the full strength level, saving every partial
report as the CLI and the dashboard do, and each comparison is checked against the answers of both
models on the scans it pairs. Synthetic test data only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from pipeline.attacks import attack_class
from pipeline.evaluation import StrengthSettings, SuiteSettings, evaluate_models
from pipeline.evaluation.report import read_report, save_report
from pipeline.evaluation.robustness import Outcome
from pipeline.evaluation.strength import FULL_STRENGTH, QUICK_STRENGTH
from pipeline.evaluation.suite import Answers, EvaluationSuite, paired_answers
from pipeline.evaluation.sweeps import WORST_CASE
from tests.evaluation_helpers import nodule_dataset, one_thread  # noqa: F401 (autouse fixture)
from tests.models_fixture import trained_model


def cheap(level: StrengthSettings) -> StrengthSettings:
    """The level's shape (which scans, which budgets, which checks) at a few steps and queries, so
    three models fit in a test; the scans and budgets, what this file is about, are the level's."""
    return dataclasses.replace(
        level, pgd_steps=2, strong_steps=2, strong_restarts=1, square_queries=5, ensemble_steps=1
    )


def assert_paired_on_matching_scans(suite: EvaluationSuite) -> None:
    """Each comparison's rates are both models' accuracies on the very scans it says it paired."""
    models = {entry.name: entry for entry in suite.models}
    for comparison in suite.comparisons:
        first, second = models[comparison.first], models[comparison.second]
        (mine,) = [a for a in second.outcomes() if a.condition == comparison.condition]
        (theirs,) = [a for a in first.outcomes() if a.key == mine.key]
        common = np.intersect1d(mine.indices, theirs.indices)
        assert comparison.scans == common.size > 0
        for answers, rate in ((theirs, comparison.first_rate), (mine, comparison.second_rate)):
            rows = np.searchsorted(answers.indices, common)
            assert np.array_equal(answers.indices[rows], common)
            assert rate == pytest.approx(answers.outcome.correct[rows].mean())


def assert_a_curve(suite: EvaluationSuite, quick: bool) -> None:
    """By default accuracy is drawn against ε = 0, 1, 2, 4 and 8/255: PGD at each budget (once at the
    table's), the other attacks and the worst case over all of them at the table's budget only."""
    for entry in suite.models:
        sweep = entry.sweep
        assert sweep.epsilons == pytest.approx([e / 255 for e in (1, 2, 4, 8)])
        assert np.isfinite(sweep.accuracy[attack_class("pgd").title]).all()
        assert np.isfinite(sweep.accuracy[attack_class("fgsm").title]).tolist() == [False, False, True, False]
        assert np.isfinite(sweep.accuracy[WORST_CASE]).tolist() == [False, False, True, False]
        labels = [result.label for result in entry.report.attacks]
        assert len(labels) == len(set(labels)) == 3 + 3  # the table's three, and PGD at 1, 2 and 8/255
        for check in entry.strength:  # the full ladder's 8/255 rung is the curve's PGD, not run again
            ran = [result.spec.eps for result in check.extra.attacks if result.spec.name == "pgd"]
            assert quick or not any(eps == pytest.approx(8 / 255) for eps in ran)
            assert quick or check.ladder[1][0] == pytest.approx(8 / 255)


@pytest.mark.parametrize("level", ["quick", "full"])
@pytest.mark.parametrize("count", [1, 2, 3])
def test_the_default_evaluation_completes_on_any_set_of_models(
    count: int, level: str, tmp_path: Path
) -> None:
    quick = level == "quick"
    # The quick level checks at most 48 scans: more scans than that make the subset the fault needed
    # (one model compares with none, so a few scans do).
    dataset = nodule_dataset(QUICK_STRENGTH.scans + 6 if quick and count > 1 else 9)
    # The defaults but for the cost of each check and the number of maps scored: one model's own
    # sections, which compare nothing.
    settings = SuiteSettings(
        strength_settings=cheap(QUICK_STRENGTH if quick else FULL_STRENGTH), faithfulness_scans=2
    )
    models = {f"model {n}": trained_model(seed=n).model for n in range(count)}
    info = {"model 1": {"strategy": "standard"}}  # the baseline need not be the first model
    partial: list[EvaluationSuite] = []

    def keep(suite: EvaluationSuite) -> None:  # as the CLI and the dashboard's job do after each section
        partial.append(suite)
        save_report(suite, tmp_path / "partial")

    suite = evaluate_models(models, dataset, None, settings, info=info, on_section=keep)
    assert suite.complete and len(suite.models) == count
    assert len(partial) >= count
    for each in [*partial, suite]:
        assert_paired_on_matching_scans(each)
    written = read_report(save_report(suite, tmp_path / "final")["json"])
    assert written["complete"] is True and len(written["models"]) == count
    assert_a_curve(suite, quick)
    if count == 1:
        assert suite.comparisons == [] and suite.transfer is None
        return
    assert suite.baseline == "model 1"
    checked = suite.models[0].strength[0].extra.indices
    assert checked.size == (QUICK_STRENGTH.scans if quick else len(dataset))  # quick: fewer than all
    for entry in suite.models:  # one subset of scans for the checks of every model and for the transfer
        assert all(np.array_equal(check.extra.indices, checked) for check in entry.strength)
    assert suite.transfer is not None and suite.transfer.scans == checked.size
    conditions = [c.condition for c in suite.comparisons]
    assert conditions.count("clean") == count - 1
    worst = [c for c in suite.comparisons if c.condition.startswith("worst case")]
    assert worst and all(c.scans == checked.size for c in worst)
    clean = [c for c in suite.comparisons if c.condition == "clean"]
    assert all(c.scans == len(dataset) for c in clean)


def test_a_partial_report_pairs_only_figures_that_mean_the_same(tmp_path: Path) -> None:
    """The original fault, section by section: once the first model's checks have run and the
    second's not yet, the worst cases differ (over other attacks, on other scans) and are not paired;
    every other figure is, on every scan."""
    settings = SuiteSettings(
        attacks=("fgsm", "pgd"),
        steps=2,
        strength_settings=dataclasses.replace(cheap(QUICK_STRENGTH), scans=6),
        faithfulness_scans=0,
        transfer=False,
        curve_epsilons=(),
    )
    models = {"first": trained_model(seed=0).model, "second": trained_model(seed=1).model}
    seen: list[tuple[list[int], list[tuple[str, int]]]] = []  # checked scans per model; comparisons

    def look(suite: EvaluationSuite) -> None:  # the entries fill in later: note what they hold now
        checked = [sum(check.scans for check in entry.strength) for entry in suite.models]
        seen.append((checked, [(c.condition, c.scans) for c in suite.comparisons]))

    final = evaluate_models(models, nodule_dataset(12), None, settings, on_section=look)
    # Sections end: first's attacks, first's checks, second's attacks; then the whole suite.
    assert [checked for checked, _ in seen] == [[0], [6], [6, 0]]
    assert seen[-1][1] == [("clean", 12), ("FGSM ε=4/255", 12), ("PGD ε=4/255", 12)]
    assert [(c.condition, c.scans) for c in final.comparisons][-1] == ("worst case ε=4/255", 6)


def test_answers_are_paired_by_dataset_index_not_by_position() -> None:
    def answers(indices: list[int], correct: list[bool]) -> Answers:
        labels = np.zeros(len(indices), dtype=np.int64)
        predictions = np.where(correct, 0, 1)
        return Answers("clean", np.array(indices), Outcome(predictions, labels))

    first = answers([3, 5, 7, 9], [True, False, True, False])
    second = answers([5, 9, 11], [True, True, False])
    a, b = paired_answers(first, second)
    assert a.correct.tolist() == [False, False]  # scans 5 and 9, in index order
    assert b.correct.tolist() == [True, True]
    none, _ = paired_answers(first, answers([1, 2], [True, True]))
    assert none.labels.size == 0
