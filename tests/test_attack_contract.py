"""The contract every registered attack keeps, checked for each name in ``available()``.

Output in [0, 1] with the input's shape, dtype and device, inside the norm ball, ``x`` untouched,
the model's modes, flags and buffers exactly restored (also when the model raises), deterministic
under a seed, any batch size, and helpful errors for bad names and parameters. A tiny untrained
ResNet18 at 32x32 and a batch of three keep it fast; costly parameters are turned down.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import torch
from models_fixture import one_thread
from torch import nn

from pipeline.attacks import attack_class, attack_schema, available, get_attack
from pipeline.errors import AttackParameterError
from pipeline.models import build_model

NAMES = available()
#: Cost parameters, turned down to these values (or the lowest the schema allows) for every attack.
CHEAP = {"steps": 2, "n_queries": 20, "restarts": 1, "binary_search_steps": 1, "popsize": 8,
         "n_target_classes": 2}
NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, NO_CUDA])]


def fast_params(name: str) -> dict[str, Any]:
    params = {}
    for param in attack_schema(name):
        if param.name in CHEAP:
            value = max(CHEAP[param.name], param.low if param.low is not None else 0)
            params[param.name] = param.kind(value)
    return params


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module", autouse=True)
def _deterministic_cudnn() -> Iterator[None]:
    """On CUDA, "deterministic under a seed" needs cuDNN's deterministic kernels: some of its default
    backward kernels add up with atomics, in a different order from run to run."""
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
        yield


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet18")


def scans(count: int = 3, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(count, 1, 32, 32, generator=generator)
    return x.to(device), torch.tensor([0, 1, 2, 0, 1][:count], device=device)


def model_state(model: nn.Module) -> tuple[list[bool], list[bool], dict[str, torch.Tensor]]:
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            {k: v.clone() for k, v in model.state_dict().items()})


def set_awkward_state(model: nn.Module) -> None:
    """Train mode with one layer frozen: exactly what an attack must put back."""
    model.train()
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    model.backbone.conv1.weight.requires_grad_(False)


def assert_state_restored(model: nn.Module, before: tuple) -> None:
    modes, flags, state = model_state(model)
    assert modes == before[0], "module training modes changed"
    assert flags == before[1], "parameters' requires_grad changed"
    for key, value in state.items():
        assert torch.equal(value, before[2][key]), f"model state {key} changed (batch norm in train mode?)"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_output_contract(name: str, device: str, model: nn.Module) -> None:
    model.to(device)
    set_awkward_state(model)
    before = model_state(model)
    x, y = scans(device=device)
    original = x.clone()
    attack = get_attack(name, **fast_params(name))
    x_adv, info = attack(model, x, y, return_info=True)

    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert torch.isfinite(x_adv).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    assert torch.equal(x, original), "the attack changed its input"
    if attack.budget is not None:
        size = {"linf": info.linf, "l2": info.l2}.get(attack.norm)
        if size is not None:
            assert (size <= attack.budget * (1 + 1e-5) + 1e-6).all(), f"outside the {attack.norm} ball"
    assert_state_restored(model, before)

    n = x.shape[0]
    assert info.success.dtype == torch.bool and info.success.shape == (n,)
    for field in (info.loss, info.linf, info.l2, info.l0):
        assert field.shape == (n,) and torch.isfinite(field).all()
    assert info.trace.dim() == 2 and info.trace.shape[1] == n and info.trace.shape[0] >= 2
    assert ((info.trace >= 0) & (info.trace <= 1)).all()
    if info.queries is not None:
        assert info.queries.shape == (n,)

    # Deterministic under its seed, whatever the global RNG, and the same with or without the info.
    torch.manual_seed(123)
    assert torch.equal(get_attack(name, **fast_params(name))(model, x, y), x_adv)
    model.to("cpu")


@pytest.mark.parametrize("name", [name for name in NAMES if attack_class(name).supports_target])
def test_targeted_call_keeps_contract(name: str, model: nn.Module) -> None:
    x, y = scans()
    x_adv, info = get_attack(name, **fast_params(name))(model, x, y, target=(y + 1) % 3, return_info=True)
    assert x_adv.shape == x.shape and 0 <= x_adv.min() and x_adv.max() <= 1
    assert info.success.shape == (3,)


@pytest.mark.parametrize("name", [name for name in NAMES if not attack_class(name).supports_target])
def test_untargeted_attack_rejects_a_target(name: str, model: nn.Module) -> None:
    x, y = scans()
    with pytest.raises(AttackParameterError, match="untargeted"):
        get_attack(name, **fast_params(name))(model, x, y, target=(y + 1) % 3)


@pytest.mark.parametrize("name", NAMES)
def test_batch_of_one(name: str, model: nn.Module) -> None:
    model.eval()
    x, y = scans(1)
    x_adv, info = get_attack(name, **fast_params(name))(model, x, y, return_info=True)
    assert x_adv.shape == (1, 1, 32, 32) and info.trace.shape[1] == 1


class Exploding(nn.Module):
    """Wraps a model and raises on its second forward pass, mid-attack."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("boom")
        return self.inner(x)


@pytest.mark.parametrize("name", NAMES)
def test_model_restored_when_the_model_raises(name: str, model: nn.Module) -> None:
    wrapped = Exploding(model)
    set_awkward_state(model)
    before = model_state(model)
    x, y = scans()
    with pytest.raises(RuntimeError, match="boom"):
        get_attack(name, **fast_params(name))(wrapped, x, y, return_info=True)
    assert_state_restored(model, before)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_parameter_lists_the_valid_ones(name: str) -> None:
    with pytest.raises(AttackParameterError) as error:
        get_attack(name, not_a_parameter=1)
    for param in attack_schema(name):
        assert param.name in str(error.value)


@pytest.mark.parametrize("name", NAMES)
def test_out_of_range_parameters_are_refused(name: str) -> None:
    for param in attack_schema(name):
        if param.kind in (int, float):
            assert param.low is not None and param.high is not None, f"{param.name} has no range"
            for bad in (param.high + max(1, abs(param.high)), param.low - 1):
                with pytest.raises(AttackParameterError, match=param.name):
                    get_attack(name, **{param.name: bad})
        assert param.help and "\n" not in param.help, f"{param.name} needs a one-line help"
        if param.choices is not None:
            with pytest.raises(AttackParameterError, match="must be one of"):
                get_attack(name, **{param.name: "not-a-choice"})


def test_unknown_attack_lists_the_available_ones() -> None:
    with pytest.raises(AttackParameterError) as error:
        get_attack("no-such-attack")
    for name in NAMES:
        assert name in str(error.value)


def test_every_requested_attack_is_registered() -> None:
    wanted = {"fgsm", "bim", "pgd", "pgdl2", "mifgsm", "apgd", "apgd-dlr", "apgd-t", "cw", "cw-linf",
              "deepfool", "ead", "autoattack"}
    assert wanted <= set(NAMES)
