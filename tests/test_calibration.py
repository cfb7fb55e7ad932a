"""Calibration: the ECE and reliability diagram by hand on a tiny example, and on a real trained model
clean and under attack, where the evaluation must carry the probabilities behind its predictions.
Synthetic test data only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from pipeline.evaluation import AttackSpec, evaluate
from pipeline.evaluation.calibration import CONFIDENT, calibration
from tests.evaluation_helpers import one_thread  # noqa: F401 (autouse fixture)
from tests.models_fixture import nodule_images, trained_model


def test_ece_and_reliability_by_hand() -> None:
    # Four scans: confident and right, confident and wrong, two unsure ones (one right).
    probabilities = np.array(
        [[0.95, 0.03, 0.02], [0.05, 0.93, 0.02], [0.45, 0.35, 0.20], [0.30, 0.25, 0.45]]
    )
    labels = np.array([0, 0, 0, 2])
    result = calibration(probabilities, labels)
    # Bins: [0.9, 1.0] holds 0.95 (right) and 0.93 (wrong): accuracy 0.5, confidence 0.94;
    # [0.4, 0.5) holds 0.45 (right) and 0.45 (right): accuracy 1.0, confidence 0.45.
    assert result.reliability.scans.tolist() == [0, 0, 0, 0, 2, 0, 0, 0, 0, 2]
    assert result.reliability.accuracy[9] == pytest.approx(0.5)
    assert result.reliability.confidence[9] == pytest.approx(0.94)
    assert result.reliability.accuracy[4] == pytest.approx(1.0)
    assert math.isnan(result.reliability.accuracy[0])
    expected = 0.5 * abs(0.5 - 0.94) + 0.5 * abs(1.0 - 0.45)
    assert result.ece == pytest.approx(expected)
    assert result.accuracy == pytest.approx(0.75)
    assert result.wrong_confidence == pytest.approx(0.93)
    assert result.confidently_wrong.estimate == pytest.approx(0.25)  # one of four, at >= 0.9
    assert result.overconfidence == pytest.approx(np.mean([0.95, 0.93, 0.45, 0.45]) - 0.75)


def test_a_perfectly_calibrated_set_has_zero_ece_and_no_wrong_answers_has_no_wrong_confidence() -> None:
    probabilities = np.tile([[0.8, 0.1, 0.1]], (10, 1))
    labels = np.array([0] * 8 + [1] * 2)  # 80% right at 80% confidence
    assert calibration(probabilities, labels).ece == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(calibration(probabilities[:8], labels[:8]).wrong_confidence)
    with pytest.raises(ValueError):
        calibration(probabilities, labels[:5])


def test_an_attack_makes_the_trained_model_confidently_wrong() -> None:
    """The evaluation keeps each answer's probabilities: the attacked scans the model now gets wrong
    are wrong with high confidence, so the attacked ECE and confidently-wrong share are far above
    the clean ones."""
    model = trained_model().model
    x, y = nodule_images(36, seed=11)
    report = evaluate(model, TensorDataset(x, y), None, [AttackSpec("pgd", {"eps": 16 / 255, "steps": 10})])
    clean, attacked = report.clean, report.attacks[0].outcome
    assert clean.probabilities is not None and attacked.probabilities is not None
    assert clean.probabilities.shape == (36, 3)
    np.testing.assert_allclose(clean.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert np.array_equal(clean.probabilities.argmax(axis=1), clean.predictions)
    assert np.array_equal(attacked.probabilities.argmax(axis=1), attacked.predictions)
    # Scans the model already got wrong were not attacked: they keep their clean probabilities.
    untouched = ~clean.correct
    np.testing.assert_array_equal(attacked.probabilities[untouched], clean.probabilities[untouched])
    with torch.no_grad():
        expected = torch.softmax(model(x), dim=1).numpy()
    np.testing.assert_allclose(clean.probabilities, expected, atol=1e-5)

    before = calibration(clean.probabilities, clean.labels)
    after = calibration(attacked.probabilities, attacked.labels, condition="PGD")
    assert after.accuracy < before.accuracy - 0.3
    assert after.ece > before.ece + 0.2
    assert after.confidently_wrong.estimate > before.confidently_wrong.estimate
    assert after.wrong_confidence > 0.5 and CONFIDENT == 0.9
    # The worst case over attacks carries the fooling attack's probabilities too.
    combined = report.combined[0].outcome
    assert combined.probabilities is not None
    np.testing.assert_array_equal(combined.probabilities, attacked.probabilities)
