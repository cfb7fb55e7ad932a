"""Black-box attacks (Square, SimBA, Boundary) against a small model trained here on made-up scans."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.attacks import available, get_attack

SIZE = 32


def stripe_scans(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy grey scans; class 0 carries faint horizontal stripes, class 1 vertical ones, class 2 none.

    Faint features make a model that a budget of a few grey levels can break, as on real scans.
    """
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = 0.5 + 0.12 * torch.randn((n, 1, SIZE, SIZE), generator=generator)
    stripes = 0.06 * torch.sin(torch.arange(SIZE) * 1.2)[:, None].expand(SIZE, SIZE)
    x[y == 0] += stripes
    x[y == 1] += stripes.T
    return x.clamp(0, 1), y


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        )
        self.fc = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float) -> nn.Module:
    """Plain Adam on cross-entropy in batches of 32; returns the model in eval mode."""
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        for batch in torch.arange(len(x)).split(32):
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


def train_small_cnn() -> nn.Module:
    """About two seconds on one CPU core; >90 % clean accuracy on held-out scans."""
    torch.manual_seed(0)
    return fit(SmallCNN(), *stripe_scans(256, seed=0), epochs=15, lr=3e-3)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return train_small_cnn()


@pytest.fixture(scope="module")
def scans(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = stripe_scans(48, seed=1)
    assert accuracy(model, x, y) > 0.9
    return x, y


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_registered_as_black_box() -> None:
    assert {"square", "simba", "boundary", "onepixel"} <= set(available("black-box"))
    assert get_attack("square").norm == "linf"


def test_square_breaks_the_model_with_a_modest_budget(model: nn.Module, scans) -> None:
    x, y = scans
    eps = 8 / 255
    x_adv, info = get_attack("square", eps=eps, n_queries=300, seed=0)(model, x, y, return_info=True)
    clean = accuracy(model, x, y)
    assert accuracy(model, x_adv, y) < clean - 0.3
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    # Random ±eps noise of the same budget barely hurts: the search, not the budget, does the work.
    signs = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(0)).float() * 2 - 1
    assert accuracy(model, (x + eps * signs).clamp(0, 1), y) > clean - 0.15
    assert info.queries is not None and info.queries.dtype == torch.long
    assert int(info.queries.min()) >= 1 and int(info.queries.max()) <= 300
    # Scans fooled early stop querying; the others use the whole budget.
    assert bool((info.queries[info.success] < 300).any())
    assert bool((info.queries[~info.success] == 300).all())
    # Trace: the clean scan, then one row per query round, ending at the result.
    assert info.trace.shape[1] == len(x) and 2 <= info.trace.shape[0] <= 302
    with torch.no_grad():
        clean_probability = F.softmax(model(x), 1).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(info.trace[0], clean_probability)


def test_square_is_deterministic_under_its_seed_and_can_be_targeted(model: nn.Module, scans) -> None:
    x, y = scans[0][:12], scans[1][:12]
    run = lambda seed: get_attack("square", eps=8 / 255, n_queries=60, seed=seed)(model, x, y)  # noqa: E731
    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))
    target = (y + 1) % 3
    x_adv = get_attack("square", eps=16 / 255, n_queries=200)(model, x, y, target=target)
    with torch.no_grad():
        assert int((model(x_adv).argmax(1) == target).sum()) >= 3


@pytest.mark.parametrize("basis", ["dct", "pixel"])
def test_simba_succeeds_within_its_query_budget(model: nn.Module, scans, basis: str) -> None:
    x, y = scans
    attack = get_attack("simba", basis=basis, eps=0.2, n_queries=300, seed=0)
    x_adv, info = attack(model, x, y, return_info=True)
    assert float(info.success.float().mean()) > 0.5
    assert int(info.queries.max()) <= 300 and int(info.queries.min()) >= 1
    # Orthonormal steps of size eps: the L2 size is at most eps * sqrt(accepted steps).
    assert bool((info.l2 <= 0.2 * torch.sqrt(info.queries.float()) + 1e-4).all())
    assert torch.equal(x_adv, attack(model, x, y))


def test_simba_pixel_steps_touch_one_pixel_each(model: nn.Module, scans) -> None:
    x, y = scans[0][:6], scans[1][:6]
    _, info = get_attack("simba", basis="pixel", eps=0.3, n_queries=40)(model, x, y, return_info=True)
    assert bool((info.l0 <= info.queries.float()).all())
    assert bool((info.linf <= 0.3 + 1e-6).all())


def test_boundary_finds_adversarials_and_walks_closer(model: nn.Module, scans) -> None:
    x, y = scans[0][:24], scans[1][:24]
    short_adv, short = get_attack("boundary", n_queries=40, seed=0)(model, x, y, return_info=True)
    long_adv, long = get_attack("boundary", n_queries=400, seed=0)(model, x, y, return_info=True)
    # Scans of the batch that the model puts in another class are starting points: every scan is fooled.
    assert bool(short.success.all()) and bool(long.success.all())
    assert int(long.queries.max()) <= 400 and int(short.queries.max()) <= 40
    assert float(long.l2.mean()) < 0.7 * float(short.l2.mean())
    with torch.no_grad():
        assert bool((model(long_adv).argmax(1) != y).all())


def test_boundary_on_one_scan_starts_from_noise_or_gives_up_cleanly(model: nn.Module, scans) -> None:
    x, y = scans
    # Class 1 (vertical stripes): some uniform noise is misclassified, and the walk starts from it.
    assert int(y[1]) == 1
    x_adv, info = get_attack("boundary", n_queries=200, seed=1)(model, x[1:2], y[1:2], return_info=True)
    assert bool(info.success[0]) and int(info.queries[0]) == 200
    noise_distance = math.sqrt(SIZE * SIZE / 12 + SIZE * SIZE * float(((x[1] - 0.5) ** 2).mean()))
    assert float(info.l2[0]) < noise_distance / 2
    # Class 0: the model calls all noise class 0, so no start exists; the scan comes back unchanged.
    assert int(y[0]) == 0
    x_adv, info = get_attack("boundary", n_queries=200, seed=1)(model, x[:1], y[:1], return_info=True)
    assert torch.equal(x_adv, x[:1]) and not bool(info.success[0])
    assert int(info.queries[0]) == 26  # the clean query and 25 noise images


@pytest.mark.parametrize(("name", "params"), [
    ("square", {"n_queries": 15}), ("simba", {"n_queries": 15}), ("boundary", {"n_queries": 50}),
    ("jsma", {"gamma": 0.005, "pixels_per_step": 1}), ("onepixel", {"steps": 3, "popsize": 8}),
    ("uap", {"steps": 3}), ("jpeg", {}),
])
def test_progress_is_reported_step_by_step(model: nn.Module, scans, name: str, params: dict) -> None:
    x, y = scans[0][:3], scans[1][:3]
    calls: list[tuple[int, int, str]] = []
    get_attack(name, **params)(model, x, y, progress=lambda *call: calls.append(call))
    assert calls
    done = [call[0] for call in calls]
    assert done == sorted(done) and all(0 <= d <= total for d, total, _ in calls)
    assert all(isinstance(message, str) and message for _, _, message in calls)
