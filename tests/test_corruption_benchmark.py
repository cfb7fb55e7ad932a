"""The corruption benchmark on a real trained model: every scan classified under every corruption and
severity, errors that grow with severity, and ImageNet-C's CE/mCE against a baseline model.
Synthetic test data only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pipeline.errors import AttackParameterError, UserInputError
from pipeline.evaluation.corruption import (
    CT_CORRUPTIONS,
    SEVERITIES,
    CorruptionReport,
    corruption_benchmark,
    corruption_errors,
)
from tests.evaluation_helpers import one_thread  # noqa: F401 (autouse fixture)
from tests.models_fixture import nodule_images, trained_model


class Smoothed(nn.Module):
    """The same classifier behind a 5x5 mean filter: it throws away the fine noise a low dose adds."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False))


@pytest.fixture(scope="module")
def scans() -> TensorDataset:
    x, y = nodule_images(30, seed=21)
    return TensorDataset(x, y)


def test_every_scan_under_every_corruption_and_severity(scans: TensorDataset) -> None:
    model = trained_model().model
    result = corruption_benchmark(model, scans, None, batch_size=16, model_name="tiny")
    assert result.correct.shape == (len(CT_CORRUPTIONS), len(SEVERITIES), 30)
    x, y = scans.tensors
    with torch.no_grad():
        assert np.array_equal(result.clean_correct, (model(x).argmax(1) == y).numpy())
    errors = result.errors()
    assert errors.shape == (len(CT_CORRUPTIONS), 5)
    # Severity 5 hurts more than severity 1 on average over the corruptions, and low-dose noise
    # (the faint blobs drown in it) takes the model close to chance.
    assert errors[:, 4].mean() > errors[:, 0].mean()
    assert errors[CT_CORRUPTIONS.index("low-dose"), 4] > 0.4
    record = result.to_dict()
    first = record["corruptions"][0]
    assert first["name"] == "low-dose" and first["title"] == "Low-dose noise"
    assert len(first["errors_ci"]) == 5
    assert all(ci["low"] <= e <= ci["high"] for ci, e in zip(first["errors_ci"], first["errors"]))
    # Repeatable: the noise is drawn from seeds fixed by the batch positions.
    again = corruption_benchmark(model, scans, None, batch_size=16, model_name="tiny")
    assert np.array_equal(again.correct, result.correct)


def test_corruption_errors_follow_imagenet_c(scans: TensorDataset) -> None:
    base = trained_model().model
    plain = corruption_benchmark(base, scans, None, ["low-dose", "downsample"], model_name="plain")
    smoothed = corruption_benchmark(
        Smoothed(base), scans, None, ["low-dose", "downsample"], model_name="smoothed"
    )
    itself = corruption_errors(plain, plain)
    assert all(value.estimate == 1.0 and value.low == value.high == 1.0 for value in itself.ce)
    assert itself.mce.estimate == 1.0
    versus = corruption_errors(smoothed, plain)
    wrong = (~smoothed.correct).sum(axis=(1, 2)) / (~plain.correct).sum(axis=(1, 2))
    np.testing.assert_allclose([value.estimate for value in versus.ce], wrong)
    assert versus.mce.estimate == pytest.approx(wrong.mean())
    lost = ((~smoothed.correct).sum(axis=(1, 2)) - 5 * (~smoothed.clean_correct).sum()) / (
        (~plain.correct).sum(axis=(1, 2)) - 5 * (~plain.clean_correct).sum()
    )
    np.testing.assert_allclose([value.estimate for value in versus.relative_ce], lost)
    # The smoothing front end shrugs off low-dose noise: clearly below the baseline's 100%.
    assert versus.ce[0].estimate < 0.8 and versus.ce[0].high < 1.0
    assert all(value.low <= value.estimate <= value.high for value in versus.ce)
    assert set(versus.to_dict()["ce"]) == {"low-dose", "downsample"}


def test_only_matching_runs_compare_and_only_corruptions_run(scans: TensorDataset) -> None:
    model = trained_model().model
    with pytest.raises(AttackParameterError, match="not a corruption"):
        corruption_benchmark(model, scans, None, ["pgd"])
    with pytest.raises(AttackParameterError):
        corruption_benchmark(model, scans, None, ["no-such-thing"])
    one = corruption_benchmark(model, scans, range(10), ["jpeg"])
    for other in (corruption_benchmark(model, scans, range(10, 20), ["jpeg"]),
                  corruption_benchmark(model, scans, range(10), ["rings"])):
        with pytest.raises(UserInputError, match="same scans"):
            corruption_errors(one, other)
    grouped = corruption_benchmark(model, scans, None, ["jpeg"], groups=np.arange(30) // 3)
    assert grouped.error_interval(0, 4).groups == 10


def test_a_report_can_be_built_by_hand_for_the_formulae() -> None:
    labels = np.zeros(4, dtype=np.int64)
    correct = np.ones((1, 5, 4), dtype=bool)
    correct[0, 4, :2] = False  # severity 5 flips two of four scans
    report = CorruptionReport("m", ["jpeg"], np.arange(4), labels, np.ones(4, dtype=bool), correct)
    np.testing.assert_allclose(report.errors(), [[0, 0, 0, 0, 0.5]])
    assert report.clean_error == 0.0
