"""Sparse attacks (JSMA, one-pixel) stay within their pixel budget; one universal delta fools many scans."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.attacks import get_attack
from pipeline.attacks.universal import universal_perturbation
from tests.test_attacks_blackbox import SIZE, accuracy, stripe_scans, train_small_cnn


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return train_small_cnn()


@pytest.fixture(scope="module")
def scans() -> tuple[torch.Tensor, torch.Tensor]:
    return stripe_scans(48, seed=1)


@pytest.mark.parametrize("pixels_per_step", [1, 3])
def test_jsma_changes_few_pixels_and_fools(model: nn.Module, scans, pixels_per_step: int) -> None:
    x, y = scans
    gamma = 0.01
    budget = math.floor(gamma * SIZE * SIZE)
    attack = get_attack("jsma", gamma=gamma, theta=1.0, pixels_per_step=pixels_per_step)
    x_adv, info = attack(model, x, y, return_info=True)
    changed = (x_adv != x).flatten(1).sum(1)
    assert int(changed.max()) <= budget
    assert torch.equal(info.l0, changed.float())
    assert float(info.success.float().mean()) > 0.3
    # A fooled scan stops early; pixels move by theta towards 0 or 1 (so here they saturate).
    assert int(changed[info.success].min()) < budget
    moved = x_adv[x_adv != x]
    assert bool(((moved == 0) | (moved == 1)).all())
    assert torch.equal(x_adv, attack(model, x, y))


def test_jsma_reaches_a_target(model: nn.Module, scans) -> None:
    x, y = scans[0][:12], scans[1][:12]
    target = (y + 1) % 3
    x_adv, info = get_attack("jsma", gamma=0.03, theta=0.5)(model, x, y, target=target, return_info=True)
    assert int(info.success.sum()) >= 4
    with torch.no_grad():
        assert torch.equal(model(x_adv).argmax(1) == target, info.success)
    assert int(info.l0.max()) <= math.floor(0.03 * SIZE * SIZE)


def test_onepixel_changes_at_most_its_pixels_and_fools_some(model: nn.Module, scans) -> None:
    x, y = scans
    attack = get_attack("onepixel", pixels=10, steps=8, popsize=40, seed=0)
    x_adv, info = attack(model, x, y, return_info=True)
    assert int((x_adv != x).flatten(1).sum(1).max()) <= 10
    assert int(info.success.sum()) >= 2
    # Queries: the initial population plus one per candidate per generation, until fooled.
    assert int(info.queries.max()) <= 40 * 9 and bool((info.queries % 40 == 0).all())
    assert torch.equal(x_adv, attack(model, x, y))
    single, _ = get_attack("onepixel", pixels=1, steps=2, popsize=8)(model, x[:1], y[:1], return_info=True)
    assert int((single != x[:1]).sum()) <= 1


def test_uap_is_one_delta_within_eps_that_beats_random_noise(model: nn.Module, scans) -> None:
    x, y = scans
    eps = 12 / 255
    params = {"eps": eps, "steps": 5, "alpha": 2 / 255, "seed": 0}
    x_adv = get_attack("uap", **params)(model, x, y)
    delta = universal_perturbation(model, x, y, **params)
    assert delta.shape == (1, 1, SIZE, SIZE)
    assert float(delta.abs().max()) <= eps + 1e-6 and float(delta.abs().max()) > eps / 2
    torch.testing.assert_close(x_adv, (x + delta).clamp(0, 1))
    # The same change on every scan wherever clamping to [0, 1] did not cut it.
    inside = ((x + delta) > 0) & ((x + delta) < 1)
    assert torch.allclose((x_adv - x)[inside], delta.expand_as(x)[inside], atol=1e-6)

    clean = accuracy(model, x, y)
    generator = torch.Generator().manual_seed(0)
    signs = [torch.randint(0, 2, (1, 1, SIZE, SIZE), generator=generator) * 2 - 1 for _ in range(3)]
    noise = [accuracy(model, (x + eps * sign).clamp(0, 1), y) for sign in signs]
    assert accuracy(model, x_adv, y) < min(noise) - 0.2
    assert accuracy(model, x_adv, y) < clean - 0.3
    # Universal: it also fools scans it was not computed on.
    unseen_x, unseen_y = stripe_scans(48, seed=2)
    unseen_clean = accuracy(model, unseen_x, unseen_y)
    assert accuracy(model, (unseen_x + delta).clamp(0, 1), unseen_y) < unseen_clean - 0.2
