"""The whole evaluation with its new sections, on two real trained models: calibration, corruptions
with CE against the baseline, faithfulness of the maps, paired comparisons, intervals that follow
the split's groups, and the strength level and wall time per section in the record.
Synthetic test data only."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from torch import nn

from pipeline.errors import UserInputError
from pipeline.evaluation import StrengthSettings, SuiteSettings, evaluate_models
from pipeline.evaluation.strength import FULL_STRENGTH, QUICK_STRENGTH
from tests.evaluation_helpers import nodule_dataset, one_thread  # noqa: F401 (autouse fixture)
from tests.models_fixture import trained_model

TINY_CHECKS = StrengthSettings(
    pgd_steps=3, strong_steps=3, strong_restarts=1, square_queries=10, ensemble_steps=2
)
CONDITIONS = ["clean", "FGSM ε=8/255", "PGD ε=8/255", "worst case ε=8/255"]
SETTINGS = SuiteSettings(
    attacks=("fgsm", "pgd"),
    epsilons=(8 / 255,),
    steps=3,
    strength_settings=TINY_CHECKS,
    corruptions=("low-dose", "jpeg"),
    faithfulness_scans=4,
    transfer=False,
    curve_epsilons=(),  # the conditions below are the table's; the curve's budgets are tested elsewhere
)


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {"robust": trained_model(seed=1).model, "standard": trained_model(seed=0).model}


def test_every_section_is_measured_and_recorded(models: dict[str, nn.Module]) -> None:
    dataset = nodule_dataset(18)
    info = {"robust": {"strategy": "pgd"}, "standard": {"strategy": "standard"}}
    suite = evaluate_models(models, dataset, None, SETTINGS, info=info)
    # The baseline is the standardly trained model even when it is not listed first.
    assert suite.baseline == "standard"
    robust, standard = suite.models
    assert standard.corruption_errors is None and robust.corruption_errors is not None
    assert [c.condition for c in robust.calibration] == CONDITIONS
    assert robust.corruption is not None and robust.corruption.correct.shape == (2, 5, 18)
    assert robust.faithfulness is not None and robust.faithfulness.clean.road.size <= 4
    assert set(robust.seconds) == {
        "attacks", "strength checks", "calibration", "corruptions", "faithfulness"
    }
    # One paired comparison per figure both models have: clean, two attacks, the worst case.
    assert [c.condition for c in suite.comparisons] == CONDITIONS
    clean = suite.comparisons[0]
    assert (clean.first, clean.second) == ("standard", "robust")
    expected = robust.report.clean.correct.astype(int) - standard.report.clean.correct.astype(int)
    assert clean.difference.estimate == pytest.approx(expected.mean())
    record = suite.to_dict()
    assert record["strength_level"] == "custom"
    assert record["settings"]["strength_settings"]["level"] == "custom"
    assert record["comparisons"][0]["sentence"]
    assert record["models"][0]["corruption_errors"]["baseline"] == "standard"
    assert record["groups"] is None


def test_grouped_scans_reach_every_interval_and_the_paired_test(models: dict[str, nn.Module]) -> None:
    dataset = nodule_dataset(18)
    groups = np.arange(18) // 3
    settings = SuiteSettings(
        attacks=("fgsm",), epsilons=(8 / 255,), strength=False, corruptions=("jpeg",), faithfulness_scans=0,
        transfer=False,
    )
    suite = evaluate_models(models, dataset, None, settings, groups=groups)
    assert suite.groups == 6 and suite.baseline == "robust"  # no strategy given: the first model
    first = suite.models[0]
    assert first.report.clean.accuracy_interval.groups == 6
    assert first.report.attacks[0].success_interval.groups in (None, *range(1, 7))
    assert first.calibration[0].confidently_wrong.groups == 6
    assert first.corruption is not None and first.corruption.error_interval(0, 0).groups == 6
    assert first.faithfulness is None and "faithfulness" not in first.seconds
    assert suite.comparisons[0].test == "clustered McNemar"


def test_strength_levels_and_bad_settings() -> None:
    assert SuiteSettings().strength_settings == QUICK_STRENGTH and QUICK_STRENGTH.level == "quick"
    assert FULL_STRENGTH.level == "full"
    assert (FULL_STRENGTH.strong_steps, FULL_STRENGTH.square_queries) == (50, 1000)
    assert QUICK_STRENGTH.strong_steps < FULL_STRENGTH.strong_steps
    with pytest.raises(UserInputError, match="faithfulness"):
        evaluate_models(
            {"m": trained_model().model}, nodule_dataset(6), None, SuiteSettings(faithfulness_scans=-1)
        )


def test_quick_checks_run_at_the_largest_epsilon_on_a_balanced_subset(models: dict[str, nn.Module]) -> None:
    """The quick level checks one epsilon on a few scans, classes in turn; the reused PGD result is
    cut to the same scans, and the level that did it is on record."""
    dataset = nodule_dataset(18)
    quick = dataclasses.replace(TINY_CHECKS, scans=6)
    settings = dataclasses.replace(
        SETTINGS, epsilons=(4 / 255, 8 / 255), strength_settings=quick, corruptions=(), faithfulness_scans=0,
        transfer=True,
    )
    suite = evaluate_models(models, dataset, None, settings)
    assert suite.transfer is not None and suite.transfer.scans == 6  # a masking check: the checks' scans
    check = suite.models[1].strength[0]
    assert len(suite.models[1].strength) == 1
    assert check.eps == pytest.approx(8 / 255) and check.scans == 6
    assert np.bincount(dataset.labels[check.extra.indices], minlength=3).tolist() == [2, 2, 2]
    table_pgd = suite.models[1].report.find("pgd", 8 / 255)
    rows = np.searchsorted(suite.models[1].report.indices, check.extra.indices)
    assert check.accuracies[table_pgd.label] == pytest.approx(table_pgd.outcome.correct[rows].mean())
    every = dataclasses.replace(settings, strength_settings=dataclasses.replace(quick, every_epsilon=True))
    (again,) = evaluate_models({"standard": models["standard"]}, dataset, None, every).models
    assert len(again.strength) == 2


def test_a_report_restricted_to_some_scans_keeps_their_answers(models: dict[str, nn.Module]) -> None:
    from pipeline.evaluation import evaluate

    dataset = nodule_dataset(12)
    report = evaluate(models["standard"], dataset, None, [("fgsm", {"eps": 8 / 255})])
    part = report.restricted_to(np.array([1, 4, 9]))
    assert part.size == 3
    assert part.clean.predictions.tolist() == report.clean.predictions[[1, 4, 9]].tolist()
    assert part.attacks[0].outcome.probabilities.shape == (3, 3)
    assert part.combined[0].accuracy == pytest.approx(report.combined[0].outcome.correct[[1, 4, 9]].mean())
    assert report.restricted_to(None) is report
    with pytest.raises(ValueError, match="not among"):
        report.restricted_to(np.array([50]))


def test_a_section_a_model_cannot_have_is_skipped_with_the_reason() -> None:
    """A model with no convolution has no Grad-CAM to score; the rest of its evaluation goes on."""
    linear = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 3))
    settings = dataclasses.replace(SETTINGS, strength=False, corruptions=(), faithfulness_scans=2)
    (entry,) = evaluate_models({"linear": linear}, nodule_dataset(6), None, settings).models
    assert entry.faithfulness is None and "no convolution" in entry.skipped["faithfulness"]
    assert entry.report.attacks and entry.to_dict()["skipped"] == entry.skipped


def test_every_new_section_reads_back_from_its_json(models: dict[str, nn.Module]) -> None:
    """The dashboard draws from report.json: each section rebuilt with from_dict says what it said."""
    import json

    from pipeline.evaluation.calibration import Calibration
    from pipeline.evaluation.corruption import CorruptionErrors, CorruptionReport
    from pipeline.evaluation.faithfulness import FaithfulnessReport
    from pipeline.evaluation.intervals import PairedComparison
    from pipeline.evaluation.report import jsonable

    info = {"robust": {"strategy": "pgd"}, "standard": {"strategy": "standard"}}
    suite = evaluate_models(models, nodule_dataset(12), None, SETTINGS, info=info, groups=np.arange(12) // 2)
    record = json.loads(json.dumps(jsonable(suite.to_dict())))
    robust, saved = suite.models[0], record["models"][0]

    def same(original: object, rebuilt: object) -> None:
        assert jsonable(rebuilt.to_dict()) == jsonable(original.to_dict())  # type: ignore[attr-defined]

    for original, data in zip(robust.calibration, saved["calibration"]):
        same(original, Calibration.from_dict(data))
    same(robust.corruption, CorruptionReport.from_dict(saved["corruption"]))
    same(robust.corruption_errors, CorruptionErrors.from_dict(saved["corruption_errors"]))
    same(robust.faithfulness, FaithfulnessReport.from_dict(saved["faithfulness"]))
    for original, data in zip(suite.comparisons, record["comparisons"]):
        assert PairedComparison.from_dict(data).sentence == original.sentence


def test_the_transfer_matrix_crafts_with_the_chosen_transfer_attack(models: dict[str, nn.Module]) -> None:
    """Issue 24: the matrix offers the transfer family (settings, command line); PGD stays the default."""
    from pipeline.__main__ import build_parser
    from pipeline.evaluation.cli import _request

    assert SuiteSettings().transfer_attack == "pgd"
    settings = dataclasses.replace(SETTINGS, strength=False, corruptions=(), faithfulness_scans=0,
                                   transfer=True, transfer_attack="tifgsm", calibration=False)
    suite = evaluate_models(models, nodule_dataset(6), None, settings)
    assert suite.transfer is not None and suite.transfer.attack.name == "tifgsm"
    assert suite.transfer.attack.params == {"eps": 8 / 255, "steps": 3}  # in full: no early stop
    assert suite.transfer.attack.title.startswith("TI-FGSM")
    assert suite.to_dict()["transfer"]["attack"]["name"] == "tifgsm"
    with pytest.raises(UserInputError, match="transfer_attack must be one of pgd, mifgsm, difgsm"):
        SuiteSettings(transfer_attack="cw")
    flags = build_parser().parse_args(["evaluate", "--run", "any", "--transfer-attack", "vmifgsm"])
    assert _request(flags).suite.transfer_attack == "vmifgsm"
