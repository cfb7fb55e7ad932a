"""Attacks must actually break a model: a small CNN trained here on synthetic "nodule" images.

Checks strength against the clean accuracy, against torchattacks 3.3.0 at equal settings (FGSM,
PGD, MI-FGSM, CW, DeepFool: the attacks where torchattacks is right), the ensemble against its
members, the few-class DLR adaptation, and minimal_epsilon's bracket. Synthetic test data only.
"""

from __future__ import annotations

from typing import Iterator

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from models_fixture import Trained, one_thread, trained_model

from pipeline.attacks import get_attack, minimal_epsilon
from pipeline.attacks.losses import dlr_loss, dlr_scale
from pipeline.errors import AttackParameterError

#: Our success rate may trail torchattacks' by at most this (one scan in 48 is 0.021).
TOLERANCE = 0.03


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def trained() -> Trained:
    return trained_model(3)


def success_rate(model: torch.nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


def median_l2(x_adv: torch.Tensor, x: torch.Tensor, fooled: torch.Tensor) -> float:
    return float((x_adv - x).flatten(1).norm(dim=1)[fooled].median())


def test_the_model_is_accurate_and_pgd_breaks_it(trained: Trained) -> None:
    assert trained.clean_accuracy >= 0.95
    x_adv = get_attack("pgd", eps=8 / 255)(trained.model, trained.x, trained.y)
    accuracy = 1 - success_rate(trained.model, x_adv, trained.y).float().mean()
    assert accuracy <= 0.1, f"PGD at 8/255 left {accuracy:.0%} accuracy (clean {trained.clean_accuracy:.0%})"


@pytest.mark.parametrize(("name", "ours", "theirs"), [
    ("fgsm", dict(eps=8 / 255), lambda m: torchattacks.FGSM(m, eps=8 / 255)),
    ("pgd", dict(eps=4 / 255, alpha=1 / 255, steps=10),
     lambda m: torchattacks.PGD(m, eps=4 / 255, alpha=1 / 255, steps=10)),
    ("mifgsm", dict(eps=4 / 255, alpha=1 / 255, steps=10, decay=1.0),
     lambda m: torchattacks.MIFGSM(m, eps=4 / 255, alpha=1 / 255, steps=10, decay=1.0)),
])
def test_linf_attacks_at_least_as_strong_as_torchattacks(name: str, ours: dict, theirs,
                                                         trained: Trained) -> None:
    model, x, y, _ = trained
    our_rate = success_rate(model, get_attack(name, **ours)(model, x, y), y).float().mean()
    their_rate = success_rate(model, theirs(model)(x, y), y).float().mean()
    assert 0 < their_rate < 1, "budget chosen so that the comparison is informative"
    assert our_rate >= their_rate - TOLERANCE, f"{name}: ours {our_rate:.2f} < torchattacks {their_rate:.2f}"


def test_cw_at_equal_settings_matches_torchattacks_and_binary_search_beats_it(trained: Trained) -> None:
    model, x, y, _ = trained
    theirs = torchattacks.CW(model, c=1, kappa=0, steps=50, lr=0.01)(x, y)
    their_fooled = success_rate(model, theirs, y)
    equal = get_attack("cw", c=1, kappa=0, steps=50, lr=0.01, binary_search_steps=1)(model, x, y)
    equal_fooled = success_rate(model, equal, y)
    assert equal_fooled.float().mean() >= their_fooled.float().mean() - TOLERANCE
    assert median_l2(equal, x, equal_fooled) <= 1.05 * median_l2(theirs, x, their_fooled)

    searched, info = get_attack("cw")(model, x, y, return_info=True)  # default: bisection over c
    assert info.success.float().mean() >= 0.95
    assert median_l2(searched, x, info.success) <= 0.8 * median_l2(theirs, x, their_fooled)
    # Small: well under the L2 size of an 8/255 L∞ change to every pixel (8/255 * 32 = 1.0).
    assert median_l2(searched, x, info.success) < 0.4
    assert torch.equal(searched[~info.success], x[~info.success]), "CW returns unfooled scans unchanged"


def test_deepfool_matches_torchattacks(trained: Trained) -> None:
    model, x, y, _ = trained
    theirs = torchattacks.DeepFool(model, steps=50, overshoot=0.02)(x, y)
    their_fooled = success_rate(model, theirs, y)
    ours = get_attack("deepfool", steps=50, overshoot=0.02)(model, x, y)
    our_fooled = success_rate(model, ours, y)
    assert our_fooled.float().mean() >= their_fooled.float().mean() - TOLERANCE
    assert median_l2(ours, x, our_fooled) <= 1.05 * median_l2(theirs, x, their_fooled)


def test_ead_is_sparser_than_cw(trained: Trained) -> None:
    model, x, y, _ = trained
    _, cw = get_attack("cw", binary_search_steps=2)(model, x, y, return_info=True)
    _, ead = get_attack("ead", beta=1e-2, binary_search_steps=2)(model, x, y, return_info=True)
    assert ead.success.float().mean() >= 0.9
    assert ead.l0[ead.success].median() < 0.6 * cw.l0[cw.success].median()


def test_restarts_and_targets(trained: Trained) -> None:
    model, x, y, _ = trained
    _, once = get_attack("pgd", eps=3 / 255)(model, x, y, return_info=True)
    _, thrice = get_attack("pgd", eps=3 / 255, restarts=3)(model, x, y, return_info=True)
    assert (thrice.success | ~once.success).all(), "a restart undid a success"
    target = (y + 1) % 3
    x_adv = get_attack("pgd", eps=8 / 255, steps=20)(model, x, y, target=target)
    with torch.no_grad():
        reached = model(x_adv).argmax(1) == target
    assert reached.float().mean() >= 0.8


def test_pgd_kl_climbs_the_divergence_from_the_clean_prediction(trained: Trained) -> None:
    """TRADES' inner step must climb the divergence its outer loss penalises, inside the ball."""
    model, x, y, _ = trained
    with torch.no_grad():
        clean = F.log_softmax(model(x), dim=1)

    def divergence(x_adv: torch.Tensor) -> float:
        with torch.no_grad():
            return float((clean.exp() * (clean - F.log_softmax(model(x_adv), dim=1))).sum(1).mean())

    def pgd_kl(steps: int) -> torch.Tensor:
        return get_attack("pgd-kl", eps=2 / 255, alpha=0.5 / 255, steps=steps, seed=0)(model, x, y)

    x_kl = pgd_kl(10)
    assert (x_kl - x).abs().max() <= 2 / 255 + 1e-6
    climbed, one_step = divergence(x_kl), divergence(pgd_kl(1))
    assert climbed > 3 * one_step, f"10 steps reached {climbed:.4f}, one step {one_step:.4f}"
    noise = (x + (torch.rand_like(x) * 2 - 1) * 2 / 255).clamp(0, 1)
    assert climbed > 10 * divergence(noise)


@pytest.mark.parametrize("name", ["pgd", "bim", "mifgsm", "pgdl2", "cw-linf", "pgd-kl", "apgd", "apgd-t"])
def test_trace_is_the_clean_scan_then_one_point_per_step(trained: Trained, name: str) -> None:
    """PGD-10 plots 11 points: the random start is no step, and the result is the last step's point."""
    model, x, y, _ = trained
    eps = 64 / 255 if name == "pgdl2" else 8 / 255
    _, info = get_attack(name, eps=eps, steps=5)(model, x, y, return_info=True)
    with torch.no_grad():
        clean = model(x).softmax(1).gather(1, y[:, None]).squeeze(1)
    assert info.trace.shape == (5 + 1, len(y))
    assert torch.allclose(info.trace[0], clean, atol=1e-6)
    if name != "pgd-kl":  # TRADES' attack moves the prediction, not necessarily away from the label
        assert (info.trace[-1] < info.trace[0]).float().mean() >= 0.9


def test_autoattack_is_never_weaker_than_a_member(trained: Trained) -> None:
    model, x, y, _ = trained
    settings = dict(eps=4 / 255, steps=20)
    _, ensemble = get_attack("autoattack", n_queries=50, **settings)(model, x, y, return_info=True)
    members = {name: get_attack(name, **settings)(model, x, y, return_info=True)[1].success
               for name in ("apgd", "apgd-dlr", "apgd-t")}
    square = get_attack("square", eps=4 / 255, n_queries=50)
    members["square"] = square(model, x, y, return_info=True)[1].success
    # The first member sees the whole batch with the same seed, so its successes carry over exactly.
    assert (ensemble.success | ~members["apgd"]).all()
    for name, fooled in members.items():
        assert ensemble.success.float().mean() >= fooled.float().mean(), f"weaker than {name}"
    assert ensemble.success.float().mean() < 1, "budget chosen so that the comparison is informative"
    broken_by = ensemble.extra["broken_by"]
    assert [b is not None for b in broken_by] == ensemble.success.tolist()


@pytest.mark.parametrize("classes", [3, 2])
def test_apgd_dlr_works_with_few_classes(classes: int) -> None:
    model, x, y, _ = trained_model(classes)
    _, cross_entropy = get_attack("apgd", eps=8 / 255)(model, x, y, return_info=True)
    for name in ("apgd-dlr", "apgd-t"):
        _, info = get_attack(name, eps=8 / 255)(model, x, y, return_info=True)
        rate = info.success.float().mean()
        assert rate >= 0.5, f"{name}, {classes} classes"
        assert rate >= cross_entropy.success.float().mean() - TOLERANCE, f"{name} weaker than CE"


@pytest.mark.parametrize("classes", [2, 3, 4])
def test_dlr_loss_has_a_useful_gradient(classes: int) -> None:
    logits = torch.randn(5, classes, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    y = logits.argmax(1)
    target = (y + 1) % classes
    for goal in (None, target):
        loss = dlr_loss(logits, y, goal, dlr_scale(logits))
        (grad,) = torch.autograd.grad(loss.sum(), logits)
        assert torch.isfinite(loss).all() and (grad.abs().sum(1) > 0).all()
        assert (loss < 0).all(), "correctly classified: the loss is negative"
    if classes == 2:  # the fixed scale makes the start read exactly -1
        assert torch.allclose(dlr_loss(logits, y, None, dlr_scale(logits)), torch.full((5,), -1.0))


def test_minimal_epsilon_brackets_the_flip(trained: Trained) -> None:
    model, x, y, _ = trained
    x, y = x[:6], y[:6]
    precision = 0.5 / 255
    eps = minimal_epsilon(model, x, y, "bim", high=16 / 255, precision=precision)
    assert eps.shape == (6,) and torch.isfinite(eps).all() and (eps > 0).all()
    flips_at, flips_below = [], []
    for i in range(6):
        scan = x[i:i + 1], y[i:i + 1]
        for value, out in ((float(eps[i]), flips_at), (float(eps[i]) - precision, flips_below)):
            _, info = get_attack("bim", eps=value)(model, *scan, return_info=True)
            out.append(bool(info.success))
    assert sum(flips_at) >= 5 and sum(flips_below) <= 1, (eps * 255, flips_at, flips_below)


def test_minimal_epsilon_edge_cases(trained: Trained) -> None:
    model, x, y, _ = trained
    x, y = x[:3], y[:3]
    wrong = (y + 1) % 3
    assert (minimal_epsilon(model, x, wrong, "pgd") == 0).all(), "misclassified already: 0"
    assert torch.isinf(minimal_epsilon(model, x, y, "fgsm", high=0.25 / 255)).all(), "unreachable: inf"
    with pytest.raises(AttackParameterError, match="pgd"):
        minimal_epsilon(model, x, y, "cw")
    with pytest.raises(AttackParameterError, match="searches eps"):
        minimal_epsilon(model, x, y, "pgd", eps=1 / 255)
    with pytest.raises(AttackParameterError, match="low < high"):
        minimal_epsilon(model, x, y, "pgd", low=0.1, high=0.05)
