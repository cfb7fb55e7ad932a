"""The contract every registered attack keeps, checked for each name in ``available()``.

Output in [0, 1] with the input's shape, dtype and device, inside the norm ball, ``x`` untouched,
the model's modes, flags and buffers exactly restored (also when the model raises), deterministic
under a seed, any batch size, and helpful errors for bad names and parameters. A tiny untrained
ResNet18 at 32x32 and a batch of three keep it fast; costly parameters are turned down.
"""

from __future__ import annotations

import re
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
         "n_target_classes": 2, "samples": 2, "scales": 2, "angles": 3, "max_shift": 1, "locations": 2}
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
    # Each attack's own budget: its norm ball, or degrees and pixels (spatial), or one square (patch).
    assert attack.within_budget(x, x_adv, info).all(), f"outside its budget: {attack.describe_budget()}"
    if attack.budget_units is not None:
        assert attack.budget is None and not any(param.name == "eps" for param in attack.params), \
            "an attack whose budget is not a norm ball has no eps to compare at"
        assert attack.bound and "not a norm ball" in attack.bound
        assert all(attack.describe_change(info, i) for i in range(x.shape[0]))
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
              "deepfool", "ead", "autoattack", "spatial", "patch", "difgsm", "tifgsm", "nifgsm", "sinifgsm",
              "vmifgsm", "rfgsm", "spsa"}
    assert wanted <= set(NAMES)


# ------------------------------------------------------------------ input checks, once, in the base
@pytest.mark.parametrize("name", NAMES)
def test_float64_scans_are_run_in_the_models_dtype_and_returned_as_float64(name: str,
                                                                          model: nn.Module) -> None:
    model.eval()
    x, y = scans(2)
    x64 = x.double()
    x_adv, info = get_attack(name, **fast_params(name))(model, x64, y, return_info=True)
    assert x_adv.dtype == torch.float64 and x_adv.shape == x64.shape
    assert 0 <= x_adv.min() and x_adv.max() <= 1
    # the same attack as on the float32 scans, up to the rounding of the last projection in float64
    torch.testing.assert_close(x_adv.float(), get_attack(name, **fast_params(name))(model, x, y),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_out_of_range_labels_and_targets_are_refused_before_any_work(name: str, model: nn.Module) -> None:
    """Label 5 for a 3-class model: a clear error naming the range, never an IndexError or the scan
    returned unchanged (which DeepFool used to do, reading as "robust")."""
    x, y = scans(2)
    attack = get_attack(name, **fast_params(name))
    for labels in (torch.tensor([0, 5]), torch.tensor([-1, 0])):
        with pytest.raises(AttackParameterError, match=r"out of range.*3 classes, numbered 0\.\.2"):
            attack(model, x, labels)
    if attack.supports_target:
        with pytest.raises(AttackParameterError, match=r"target 3 is out of range"):
            attack(model, x, y[:2], target=torch.tensor([3, 1]))


@pytest.mark.parametrize("name", NAMES)
def test_bad_scans_and_labels_get_a_message_saying_what_to_do(name: str, model: nn.Module) -> None:
    x, y = scans(2)
    y = y[:2]
    attack = get_attack(name, **fast_params(name))
    broken = x.clone()
    broken[1, 0, 3, 3] = float("nan")
    cases = [
        ((x * 255).to(torch.uint8), y, "divide 8-bit pixels by 255"),
        (broken, y, "1 of 2 scans contain NaN"),
        (x * 2, y, r"must lie in \[0, 1\]"),
        (x[0], y, r"\[N, 1, H, W\]"),
        (x[:0], y[:0], "empty"),
        (x, torch.tensor([0.5, 1.0]), "whole class numbers"),
        (x, torch.eye(3)[y], "not one-hot"),
        (x, y[:1], "2 scans but 1 labels"),
    ]
    for scans_, labels, message in cases:
        with pytest.raises(AttackParameterError, match=message):
            attack(model, scans_, labels)


@pytest.mark.parametrize("name", NAMES)
def test_scans_on_another_device_than_the_model_are_refused(name: str) -> None:
    on_meta = build_model("resnet18").to("meta")
    x, y = scans(2)
    with pytest.raises(AttackParameterError, match="the scans are on cpu but the model is on meta"):
        get_attack(name, **fast_params(name))(on_meta, x, y[:2])


class Outputs(nn.Module):
    """A stand-in model whose output is whatever ``make`` builds from the batch size."""

    def __init__(self, make) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.make = make

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.make(x.shape[0]) + self.weight * x.flatten(1)[:, :1]


@pytest.mark.parametrize("name", NAMES)
def test_a_model_whose_output_no_attack_can_use_is_refused(name: str) -> None:
    x, y = scans(2)
    cases = [
        (lambda n: torch.zeros(n, 3, 2), r"logits shaped \[N, classes\]"),
        (lambda n: torch.zeros(n, 1), "at least 2"),
        (lambda n: torch.full((n, 3), float("nan")), "NaN or infinite scores"),
    ]
    for make, message in cases:
        with pytest.raises(AttackParameterError, match=message):
            get_attack(name, **fast_params(name))(Outputs(make), x, y[:2])


@pytest.mark.parametrize("name", ["fgsm", "deepfool", "square"])
def test_a_model_that_cannot_read_the_scans_is_named_as_such(name: str) -> None:
    three_channels = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    x, y = scans(2)
    with pytest.raises(AttackParameterError, match=r"cannot read scans shaped \(1, 32, 32\)"):
        get_attack(name, **fast_params(name))(three_channels, x, y[:2])


#: What a docstring says about each norm's bound.
NORM_WORDS = {
    "linf": "L∞ ball", "l2": "L2 distance", "l1": "L1 distance", "l0": "L0 attack", None: "norm ball"
}


@pytest.mark.parametrize("name", NAMES)
def test_every_attack_documents_its_paper_call_and_defaults(name: str) -> None:
    """As torchattacks' PGD does: paper and link, norm, shapes and units, every default, an example."""
    cls = attack_class(name)
    doc = cls.__doc__ or ""
    paper = doc.partition("Paper: ")[2].partition("\n\n")[0]
    assert re.search(r"\b(19|20)\d\d\b", paper), doc
    assert re.search(r"https://arxiv\.org/abs/\d{4}\.\d{4,5}", paper), doc
    flat = " ".join(doc.split())
    bound = NORM_WORDS[cls.norm] if cls.bound is None else "not a norm ball"
    assert bound in flat and "[N, 1, H, W] in [0, 1]" in flat and "int64 [N]" in flat
    assert "k/255" in flat and f"get_attack({name!r}" in flat and "Example::" in flat
    for param in cls.params:
        assert re.search(rf"^\s+{param.name} \({param.kind.__name__}, default ", doc, re.M), param.name
