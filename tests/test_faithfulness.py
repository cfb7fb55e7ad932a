"""ROAD faithfulness of Grad-CAM maps on a real trained model: the metric must tell a faithful map
from its inverse, the fast imputation must fill holes smoothly, and the report must cover clean and
attacked scans. Synthetic test data only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from pipeline.errors import UserInputError
from pipeline.evaluation.faithfulness import BlurImputer, explanation_faithfulness, road_scores
from pipeline.explain import explain
from tests.evaluation_helpers import one_thread  # noqa: F401 (autouse fixture)
from tests.models_fixture import nodule_images, trained_model


def test_the_blur_imputer_keeps_kept_pixels_and_fills_a_hole_from_its_border() -> None:
    ramp = torch.linspace(0, 1, 32).repeat(32, 1)[None]  # [1, 32, 32], brighter to the right
    mask = torch.ones(32, 32)
    mask[8:24, 8:24] = 0
    filled = BlurImputer(seed=0)(ramp, mask)
    assert torch.equal(filled[:, mask > 0], ramp[:, mask > 0])
    hole = filled[0, 8:24, 8:24]
    # Smooth and from the border: the fill still rises left to right and stays near the ramp.
    assert float((hole - ramp[0, 8:24, 8:24]).abs().mean()) < 0.06
    assert float(hole[:, -4:].mean()) > float(hole[:, :4].mean()) + 0.2
    everything = BlurImputer()(ramp, torch.zeros(32, 32) + (torch.arange(32) == 0).float()[None, :])
    assert bool(torch.isfinite(everything).all())  # a hole spanning nearly the whole scan is filled too


@pytest.mark.parametrize("imputation", ["blur", "linear"])
def test_road_tells_a_faithful_map_from_its_inverse(imputation: str) -> None:
    """Removing what Grad-CAM marks hurts the answer more than removing the rest (score > 0); the
    inverted map says the opposite (score < 0). Both imputations agree on the sign."""
    model = trained_model().model
    x, y = nodule_images(24, seed=9)
    with torch.no_grad():
        right = model(x).argmax(1) == y
    x, y = x[right][:8], y[right][:8]
    maps = explain(model, x, y).maps
    faithful, morf, lerf = road_scores(model, x, maps, y.tolist(), imputation=imputation)
    inverse, _, _ = road_scores(model, x, 1.0 - maps, y.tolist(), imputation=imputation)
    assert faithful.shape == (8,) and morf.shape == lerf.shape == (8,)
    assert float(faithful.mean()) > 0.1 and float(inverse.mean()) < 0.0
    assert float(morf.mean()) < float(lerf.mean())  # removing the marked pixels lowers the probability
    np.testing.assert_allclose(faithful, (lerf - morf) / 2, atol=1e-6)
    with pytest.raises(UserInputError, match="one map"):
        road_scores(model, x, maps[:3], y.tolist())
    with pytest.raises(UserInputError, match="imputation"):
        road_scores(model, x, maps, y.tolist(), imputation="zeros")  # type: ignore[arg-type]


def test_faithfulness_clean_and_under_attack() -> None:
    model = trained_model().model
    x, y = nodule_images(30, seed=13)
    report = explanation_faithfulness(
        model, TensorDataset(x, y), None, ("pgd", {"eps": 16 / 255, "steps": 10}), limit=10, batch_size=8
    )
    with torch.no_grad():
        right = (model(x).argmax(1) == y).numpy()
    expected = np.flatnonzero(right)[:10]
    # Every scan is explained twice; a map that cannot localise (empty, say) is counted, never measured.
    for side in (report.clean, report.attacked):
        assert set(side.indices) <= set(expected) and side.indices.size + side.unreadable == 10
        assert (side.problem is None) == (side.unreadable == 0)
    assert report.clean.indices.size >= 8 and report.attacked.indices.size >= 6
    rows = np.searchsorted(expected, report.clean.indices)
    # the clean answer: the true class
    assert np.array_equal(report.clean.explained, y.numpy()[expected][rows])
    both = np.intersect1d(report.clean.indices, report.attacked.indices)
    flipped = report.attacked.explained[np.searchsorted(report.attacked.indices, both)]
    assert not np.array_equal(flipped, y.numpy()[both])  # the attack changed some answers
    assert report.layer and report.grid == (8, 8)
    assert report.clean.mean.estimate > 0.1 and report.clean.mean.low <= report.clean.mean.estimate
    change = report.change
    assert change.scans == both.size
    clean_scores = report.clean.road[np.searchsorted(report.clean.indices, both)]
    attacked_scores = report.attacked.road[np.searchsorted(report.attacked.indices, both)]
    assert change.estimate == pytest.approx(float((attacked_scores - clean_scores).mean()), abs=1e-6)
    record = report.to_dict()
    assert record["attacked"]["condition"].startswith("PGD")
    assert record["imputation"] == "linear" and record["percentiles"] == [20, 40, 60, 80]
    with pytest.raises(UserInputError, match="at least one"):
        explanation_faithfulness(model, TensorDataset(x, y), None, "fgsm", limit=0)
