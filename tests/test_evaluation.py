"""Honesty of the robustness evaluation, on a small CNN trained in the test (tests/models_fixture.py).

Every figure must add up (confusion matrices sum to the scans, success rate over the scans the
model got right, worst case never better than an attack), strong attacks must break a normally
trained model at a large epsilon, the ensemble must never be weaker than its members, and the
strength checks must flag a model that hides its gradients while passing a normal one.
Synthetic test data only.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import nn
from torch.utils.data import TensorDataset

from pipeline.errors import AttackParameterError, UserInputError
from pipeline.evaluation import (
    AttackSpec,
    StrengthSettings,
    confusion_matrix,
    epsilon_sweep,
    evaluate,
    minimal_epsilon_distribution,
    per_class_recall,
    psnr,
    reference_attacks,
    reference_table,
    ssim,
    strength_checks,
    transfer_matrix,
)
from pipeline.units import format_epsilon, format_share, parse_epsilon, parse_epsilons
from tests.evaluation_helpers import one_thread  # noqa: F401 (autouse fixture)
from tests.models_fixture import nodule_images, trained_model

EPS = 4 / 255
#: Turned down so a strength run takes seconds on one core.
QUICK = StrengthSettings(
    pgd_steps=5, strong_steps=8, strong_restarts=2, square_queries=60, ensemble_steps=4, ladder=(4.0,)
)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return trained_model().model


@pytest.fixture(scope="module")
def scans() -> TensorDataset:
    """Fresh held-out scans; every eighth carries a wrong label, so some scans are misclassified."""
    x, y = nodule_images(48, seed=7)
    y[::8] = (y[::8] + 1) % 3
    return TensorDataset(x, y)


class RoundedInput(nn.Module):
    """Quantises its input before the model: the classic accidental gradient masking (zero gradient)."""

    def __init__(self, model: nn.Module, levels: int = 8) -> None:
        super().__init__()
        self.model, self.levels = model, levels - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * self.levels) / self.levels)


# ----------------------------------------------------------------------------- metrics, units
def test_image_metrics_match_scikit_image() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 36, 40, generator=generator)
    noisy = (x + 0.05 * torch.randn(x.shape, generator=generator)).clamp(0, 1)
    expected_ssim = [
        structural_similarity(
            a[0].numpy(),
            b[0].numpy(),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        for a, b in zip(x, noisy)
    ]
    expected_psnr = [
        peak_signal_noise_ratio(a[0].numpy(), b[0].numpy(), data_range=1.0) for a, b in zip(x, noisy)
    ]
    assert np.allclose(ssim(x, noisy).numpy(), expected_ssim, atol=1e-4)
    assert np.allclose(psnr(x, noisy).numpy(), expected_psnr, atol=1e-3)
    assert torch.isinf(psnr(x, x)).all() and torch.allclose(ssim(x, x), torch.ones(3))


def test_confusion_matrix_and_recall() -> None:
    matrix = confusion_matrix(np.array([0, 0, 1, 1, 1]), np.array([0, 2, 1, 1, 0]))
    assert matrix.tolist() == [[1, 0, 1], [1, 2, 0], [0, 0, 0]]
    recall = per_class_recall(matrix)
    assert recall[:2].tolist() == [0.5, 2 / 3] and math.isnan(recall[2])  # no normal scans: unknown, not 0


def test_epsilons_parse_as_people_write_them() -> None:
    assert parse_epsilon("4/255") == pytest.approx(4 / 255)
    assert parse_epsilon(" 4 / 255 ") == pytest.approx(4 / 255)
    assert parse_epsilon("0.0157") == pytest.approx(0.0157)
    assert parse_epsilons("2/255,4/255,2/255") == pytest.approx([2 / 255, 4 / 255])
    assert format_epsilon(8 / 255) == "8/255" and format_epsilon(0.003) == "0.003"
    for text, hint in (
        ("4", "4/255"),
        ("-1/255", "positive"),
        ("abc", "fraction"),
        ("1/0", "fraction"),
        ("100/255", "largest"),
        ("nan", "cannot read"),
        ("", "no epsilon"),
    ):
        with pytest.raises(UserInputError, match=hint):
            parse_epsilons(text)


def test_shares_are_no_more_precise_than_their_scans() -> None:
    """4 of 9 scans is 44%, not 44.4%: one scan moves the share by 11 points."""
    assert format_share(4 / 9, 9) == "44%" and format_share(4 / 9) == "44%"
    assert format_share(1862 / 2000, 2000) == "93.1%"
    assert format_share(None) == format_share(math.nan, 50) == "—"


# ------------------------------------------------------------------------------- the figures
def test_every_figure_adds_up(model: nn.Module, scans: TensorDataset) -> None:
    report = evaluate(model, scans, None, reference_attacks(EPS, steps=5), batch_size=20)
    x, y = scans.tensors
    with torch.no_grad():
        clean_correct = (model(x).argmax(1) == y).numpy()
    assert 0 < clean_correct.sum() < len(y), "the check needs both right and wrong scans"
    assert report.clean.accuracy == pytest.approx(clean_correct.mean())
    for result in report.attacks:
        assert result.outcome.confusion.sum() == len(y)
        assert result.accuracy == pytest.approx(np.trace(result.outcome.confusion) / len(y))
        assert result.accuracy <= report.clean.accuracy
        # success rate: flipped among the scans the model got right, never among all scans
        flipped = clean_correct & (result.outcome.predictions != y.numpy())
        assert result.success_rate == pytest.approx(flipped.sum() / clean_correct.sum())
        # scans already wrong are not attacked: no perturbation measured, clean prediction kept
        assert np.isnan(result.linf[~clean_correct]).all()
        assert (result.linf[clean_correct] <= EPS + 1e-6).all()
        assert np.array_equal(
            result.outcome.predictions[~clean_correct], report.clean.predictions[~clean_correct]
        )
    (combined,) = report.combined
    assert combined.outcome.confusion.sum() == len(y)
    assert combined.accuracy <= min(result.accuracy for result in report.attacks)
    every = np.logical_and.reduce([result.outcome.correct for result in report.attacks])
    assert np.array_equal(combined.robust, every & clean_correct)
    assert combined.accuracy == pytest.approx(combined.robust.mean())
    table = reference_table([report], EPS)
    assert table.rows[0].values["combined"] == pytest.approx(combined.accuracy)
    assert "reported by the reference study" in table.format()


def test_pgd_at_a_large_epsilon_breaks_a_normally_trained_model(
    model: nn.Module, scans: TensorDataset
) -> None:
    report = evaluate(model, scans, range(24), [AttackSpec("pgd", {"eps": 32 / 255, "steps": 5})])
    assert report.clean.accuracy > 0.8
    assert report.attacks[0].accuracy <= 0.05


def test_ensemble_is_never_weaker_than_its_members(model: nn.Module, scans: TensorDataset) -> None:
    common = {"eps": EPS, "steps": 4, "seed": 3}
    members = [
        ("apgd", common),
        ("apgd-dlr", common),
        ("apgd-t", {**common, "n_target_classes": 2}),
        ("square", {"eps": EPS, "n_queries": 60, "seed": 3}),
    ]
    report = evaluate(model, scans, range(24), [*members, ("autoattack", {**common, "n_queries": 60})])
    *singles, ensemble = report.attacks
    for member in singles:
        assert ensemble.accuracy <= member.accuracy, member.label
    # the first member runs on the same scans with the same seed: every scan it fools, the ensemble fools
    assert not (singles[0].fooled & ~ensemble.fooled).any()


def test_sweep_reuses_one_pass_and_falls_with_epsilon(model: nn.Module, scans: TensorDataset) -> None:
    sweep = epsilon_sweep(
        model, scans, range(24), [16 / 255, 2 / 255, 8 / 255], ("pgd",), params={"pgd": {"steps": 5}}
    )
    assert sweep.epsilons == pytest.approx([2 / 255, 8 / 255, 16 / 255])
    curve = sweep.accuracy["PGD (L∞)"]
    assert curve[0] <= sweep.clean and curve[-1] <= curve[0] and curve[-1] < 0.2
    assert sweep.accuracy["worst case"] == pytest.approx(curve)


def test_minimal_epsilon_distribution(model: nn.Module, scans: TensorDataset) -> None:
    result = minimal_epsilon_distribution(model, scans, range(8), steps=3, high=32 / 255, precision=2 / 255)
    assert (result.values[~result.correct] == 0).all()
    assert (result.values[result.correct] > 0).all()
    assert result.share_flipped(2 / 255) <= result.share_flipped(32 / 255) == 1.0


def test_transfer_between_identical_models_equals_white_box(model: nn.Module, scans: TensorDataset) -> None:
    result = transfer_matrix(
        {"a": model, "b": copy.deepcopy(model)}, scans, range(24), ("fgsm", {"eps": 8 / 255})
    )
    assert result.accuracy.shape == (2, 2)
    assert np.allclose(result.accuracy, result.accuracy[0, 0])  # one model twice: every cell the same
    assert (result.accuracy <= result.clean[None, :] + 1e-9).all()


def test_bad_attacks_are_refused_before_any_work(model: nn.Module, scans: TensorDataset) -> None:
    with pytest.raises(AttackParameterError, match="unknown attack"):
        evaluate(model, scans, None, ["pgd", "no-such-attack"])
    with pytest.raises(AttackParameterError, match="eps"):
        evaluate(model, scans, None, [("pgd", {"eps": 2.0})])
    with pytest.raises(AttackParameterError, match="label"):
        evaluate(model, scans, None, ["pgd", "pgd"])
    with pytest.raises(UserInputError, match="indices"):
        evaluate(model, scans, [0, 999], ["fgsm"])


# ---------------------------------------------------------------------------- strength checks
def test_strength_checks_pass_a_normal_model(model: nn.Module, scans: TensorDataset) -> None:
    report = strength_checks(model, scans, range(24), EPS, settings=QUICK)
    assert not report.masking, report.verdict
    assert report.worst_case.accuracy <= min(report.accuracies.values())
    assert report.ladder[-1][1] <= 0.05
    assert all(check.explanation for check in report.checks)


def test_strength_checks_flag_a_gradient_masking_model(model: nn.Module, scans: TensorDataset) -> None:
    masked = RoundedInput(model)
    # a black-box search needs a few hundred queries to find what the zero gradient hides
    report = strength_checks(
        masked, scans, range(24), EPS, settings=dataclasses.replace(QUICK, square_queries=200)
    )
    assert report.masking
    flagged = {check.key for check in report.checks if check.flagged}
    assert "black-box" in flagged  # the score-based attack needs no gradient and wins
    # Quantised to 8 levels it also never answers "normal": that verdict leads, the masking flags follow.
    assert report.degenerate and report.verdict.startswith("NOT A TRAINED CLASSIFIER")
    assert "black-box Square vs white-box PGD" in report.verdict
    assert report.worst_case.accuracy < report.accuracies[f"PGD ε={format_epsilon(EPS)}"]
