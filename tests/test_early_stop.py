"""Stopping the attack on a scan once it is fooled: the same verdict on every scan, less work.

On a real trained model (tests/models_fixture.py), for each iterative attack: the set of fooled
scans with ``early_stop`` equals the set without, every returned point stays in the ball, and
the model sees fewer scans. Work is counted in scans passed through the model (a forward hook),
never in seconds. Synthetic test data only.
"""

from __future__ import annotations

import pytest
import torch

from pipeline.attacks import get_attack
from tests.evaluation_helpers import one_thread  # noqa: F401 (autouse fixture)
from tests.models_fixture import nodule_images, trained_model


def scans_seen(model: torch.nn.Module, run) -> tuple[torch.Tensor, int]:
    """Run ``run()`` and count the scans the model processed meanwhile."""
    seen = [0]

    def count(_module: torch.nn.Module, inputs: tuple, _output: torch.Tensor) -> None:
        seen[0] += inputs[0].shape[0]

    handle = model.register_forward_hook(count)
    try:
        result = run()
    finally:
        handle.remove()
    return result, seen[0]


@pytest.mark.parametrize(("name", "params"), [
    ("pgd", {"eps": 8 / 255, "steps": 8, "restarts": 2}),
    ("cw-linf", {"eps": 8 / 255, "steps": 8}),
    ("mifgsm", {"eps": 8 / 255, "steps": 8}),
    ("bim", {"eps": 8 / 255, "steps": 8}),
    ("pgdl2", {"eps": 0.3, "steps": 8}),
])
def test_early_stop_keeps_every_verdict_and_saves_work(name: str, params: dict) -> None:
    model = trained_model().model
    x, y = nodule_images(24, seed=17)
    with torch.no_grad():
        right = model(x).argmax(1) == y
    x, y = x[right], y[right]
    full, full_cost = scans_seen(model, lambda: get_attack(name, **params)(model, x, y))
    quick, quick_cost = scans_seen(model, lambda: get_attack(name, early_stop=True, **params)(model, x, y))
    with torch.no_grad():
        fooled_full = model(full).argmax(1) != y
        fooled_quick = model(quick).argmax(1) != y
    assert 0 < int(fooled_full.sum()) < len(y)  # some scans fall, some hold: both paths are exercised
    assert torch.equal(fooled_full, fooled_quick)
    attack = get_attack(name, **params)
    if attack.norm == "linf":
        assert float((quick - x).abs().amax()) <= attack.eps + 1e-6
    else:
        assert float((quick - x).flatten(1).norm(dim=1).max()) <= attack.eps + 1e-5
    assert quick_cost < 0.8 * full_cost


def test_the_step_by_step_trace_keeps_every_step_with_early_stop() -> None:
    model = trained_model().model
    x, y = nodule_images(12, seed=19)
    _, info = get_attack("pgd", eps=8 / 255, steps=6, early_stop=True)(model, x, y, return_info=True)
    assert info.trace.shape == (6 + 1, 12)  # the clean scan, then one point per step, for every scan
