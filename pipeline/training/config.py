"""Everything a training run needs, validated field by field before any work starts.

A ``TrainConfig`` is what the CLI, the dashboard and background jobs build, what ``config.json``
stores, and what ``--resume`` reads back; an out-of-range value is refused here with the field's
name and its allowed range, instead of failing an hour into a run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Final, Optional

from pipeline.constants import GREY_LEVEL
from pipeline.data.dicom import WINDOW_NAMES
from pipeline.errors import UserInputError
from pipeline.models import ARCHITECTURES, MIN_INPUT_SIZE
from pipeline.units import MAX_EPSILON

STRATEGIES: Final[tuple[str, ...]] = ("standard", "pgd", "fgsm-rs", "trades", "mart", "mixed", "transfer")
MAX_IMAGE_SIZE: Final[int] = 1024


def _spec(
    default: Any,
    *,
    low: Optional[float] = None,
    high: Optional[float] = None,
    choices: Optional[tuple[Any, ...]] = None,
    help: str = "",
) -> Any:
    """A dataclass field that carries its allowed range for validation and for UI controls."""
    factory = (
        {"default_factory": lambda: default} if isinstance(default, (list, tuple)) else {"default": default}
    )
    return field(metadata={"low": low, "high": high, "choices": choices, "help": help}, **factory)


@dataclass
class TrainConfig:
    """One training run. Epsilons and step sizes are in image scale ``[0, 1]`` (4/255 = 0.0157)."""

    # data
    data: str = _spec("synthetic", help="'synthetic' (the phantom) or a dataset folder")
    count: int = _spec(600, low=12, high=100_000, help="number of synthetic scans (ignored for folders)")
    data_seed: int = _spec(0, low=0, high=2**31 - 1, help="seed of the synthetic phantom")
    window: str = _spec("lung", choices=WINDOW_NAMES, help="CT window for DICOM folders")
    image_size: int = _spec(
        224, low=MIN_INPUT_SIZE, high=MAX_IMAGE_SIZE, help="side of the square model input"
    )
    val_fraction: float = _spec(0.15, low=0.05, high=0.5, help="share of scans for validation")
    test_fraction: float = _spec(0.15, low=0.0, high=0.5, help="share of scans held out for testing")
    split_strategy: str = _spec(
        "grouped", choices=("grouped", "random"), help="grouped keeps near-duplicates on one side"
    )
    # model and optimisation
    arch: str = _spec("resnet50", choices=tuple(ARCHITECTURES), help="network architecture")
    pretrained: bool = _spec(False, help="start from ImageNet weights (downloaded once)")
    zero_init_residual: bool = _spec(
        False,
        help="start each residual branch at zero, so a deep ResNet trained from scratch on little data "
        "begins as a shallow one and learns sooner",
    )
    init_from: Optional[str] = _spec(
        None,
        help="saved run whose kept model is the starting point, e.g. to fine-tune a normally trained "
        "model adversarially; same architecture and classes",
    )
    strategy: str = _spec("standard", choices=STRATEGIES, help="training strategy")
    epochs: int = _spec(30, low=1, high=1000, help="number of passes over the training split")
    batch_size: int = _spec(32, low=2, high=4096, help="scans per optimisation step (all GPUs together)")
    optimizer: str = _spec("sgd", choices=("sgd", "adamw"), help="optimiser")
    lr: float = _spec(0.05, low=1e-7, high=10.0, help="peak learning rate")
    momentum: float = _spec(0.9, low=0.0, high=0.999, help="SGD momentum (AdamW: beta1)")
    weight_decay: float = _spec(5e-4, low=0.0, high=1.0, help="weight decay (not on norms and biases)")
    schedule: str = _spec("cosine", choices=("cosine", "onecycle", "constant"), help="learning-rate schedule")
    label_smoothing: float = _spec(0.0, low=0.0, high=0.5, help="label smoothing of the cross-entropy")
    imbalance: str = _spec(
        "weights",
        choices=("none", "weights", "sampler"),
        help="class imbalance: loss weights or a balanced sampler",
    )
    augment: bool = _spec(True, help="rotations, shifts, scale, flips, brightness/contrast and noise")
    # adversarial training
    eps: float = _spec(
        4 * GREY_LEVEL,
        low=GREY_LEVEL / 8,
        high=MAX_EPSILON,
        help="L-inf budget in image scale; write 4/255 for 4 grey levels",
    )
    alpha: Optional[float] = _spec(
        None,
        low=GREY_LEVEL / 64,
        high=MAX_EPSILON,
        help="attack step size; default eps/4 for PGD, 1.25*eps for FGSM-RS",
    )
    steps: int = _spec(7, low=1, high=100, help="PGD steps during training")
    eps_warmup: float = _spec(
        0.0,
        low=0.0,
        high=1.0,
        help="share of the training steps over which the training budget grows linearly from 0 to "
        "eps (0: the full budget from the first step); lets a network trained from scratch find the "
        "clean signal before it must hold against attacks",
    )
    trades_beta: float = _spec(6.0, low=0.0, high=100.0, help="TRADES robustness weight")
    mart_beta: float = _spec(6.0, low=0.0, high=100.0, help="MART robustness weight")
    cw_steps: int = _spec(10, low=1, high=1000, help="CW iterations in the mixed recipe (few, for speed)")
    transfer_run: Optional[str] = _spec(None, help="saved run whose model crafts the transfer examples")
    transfer_attack: str = _spec(
        "fgsm", choices=("fgsm", "pgd"), help="attack run on the transfer source model"
    )
    transfer_eps: tuple[float, ...] = _spec(
        (0.01, 0.02, 0.03),
        low=GREY_LEVEL / 8,
        high=MAX_EPSILON,
        help="budgets of the transfer examples (one copy of the data each)",
    )
    # selection and checks
    val_steps: int = _spec(10, low=1, high=200, help="PGD steps of the robust validation check")
    eval_size: int = _spec(
        256, low=8, high=100_000, help="training scans re-measured each epoch (clean and PGD)"
    )
    select_by: str = _spec(
        "auto",
        choices=("auto", "robust", "clean"),
        help="keep the epoch with the best robust (PGD) or clean validation accuracy",
    )
    patience: int = _spec(
        0, low=0, high=1000, help="stop after this many epochs without improvement (0: never)"
    )
    co_tolerance: float = _spec(
        0.2,
        low=0.01,
        high=1.0,
        help="FGSM-RS guard: a drop of validation PGD accuracy larger than this rolls back and stops",
    )
    # execution
    seed: int = _spec(0, low=0, high=2**31 - 1, help="seed of the split, shuffling, augmentation and attacks")
    device: str = _spec("auto", help="auto, cpu, cuda, cuda:N or mps")
    amp: bool = _spec(True, help="bf16 autocast on CUDA (fp16 with a grad scaler where bf16 is missing)")
    channels_last: bool = _spec(True, help="channels-last memory format on CUDA")
    compile: bool = _spec(False, help="torch.compile the model (slow first epoch, faster later ones)")

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            setattr(self, spec.name, _validate(spec, getattr(self, spec.name)))
        if self.init_from and self.pretrained:
            raise UserInputError(
                "start from ImageNet weights (pretrained) or from a saved run (init_from), not both"
            )
        if self.strategy == "transfer" and not self.transfer_run:
            raise UserInputError(
                "strategy 'transfer' needs transfer_run: the saved run whose model crafts examples"
            )
        if self.val_fraction + self.test_fraction >= 0.9:
            raise UserInputError(
                "val_fraction + test_fraction must stay below 0.9 to leave scans to train on"
            )

    @property
    def step_size(self) -> float:
        """The attack step actually used: the explicit ``alpha`` or the strategy's usual default."""
        if self.alpha is not None:
            return self.alpha
        # the engine caps steps at its largest budget; 1.25 eps only exceeds it for eps > 51/255
        return min(1.25 * self.eps, MAX_EPSILON) if self.strategy == "fgsm-rs" else self.eps / 4

    @property
    def selection(self) -> str:
        """``robust`` or ``clean``: ``auto`` picks robust for every adversarial strategy."""
        if self.select_by != "auto":
            return self.select_by
        return "clean" if self.strategy == "standard" else "robust"

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["transfer_eps"] = list(self.transfer_eps)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, strict: bool = False) -> TrainConfig:
        """Build from JSON; ``strict`` refuses unknown keys (typos in a user's file)."""
        if not isinstance(values, dict):
            raise UserInputError("a training configuration must be a JSON object of field: value")
        names = {spec.name for spec in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if strict and unknown:
            raise UserInputError(
                f"unknown training setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}"
            )
        return cls(**{key: value for key, value in values.items() if key in names})

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> TrainConfig:
        """A preset's settings with ``overrides`` on top (None values are ignored)."""
        if preset not in PRESETS:
            raise UserInputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        return cls(
            **{**PRESETS[preset], **{key: value for key, value in overrides.items() if value is not None}}
        )


def field_spec(name: str) -> dict[str, Any]:
    """Range, choices and help of one field, for building dashboard controls."""
    spec = {item.name: item for item in dataclasses.fields(TrainConfig)}.get(name)
    if spec is None:
        raise KeyError(name)
    return dict(spec.metadata)


def _validate(spec: dataclasses.Field, value: Any) -> Any:
    meta, name = spec.metadata, spec.name
    default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()  # type: ignore
    if value is None and default is None:
        return None
    if isinstance(default, tuple):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not items:
            raise UserInputError(f"{name} must be a non-empty list, got {value!r}")
        return tuple(_check_number(name, _coerce(name, float, item), meta) for item in items)
    kind = type(default) if default is not None else (float if meta["low"] is not None else str)
    coerced = _coerce(name, kind, value)
    if meta["choices"] is not None and coerced not in meta["choices"]:
        raise UserInputError(f"{name} must be one of {', '.join(map(str, meta['choices']))}, got {value!r}")
    if kind in (int, float):
        _check_number(name, coerced, meta)
    if kind is str and (not coerced.strip() or len(coerced) > 4096):
        raise UserInputError(f"{name} must be a non-empty text of at most 4096 characters")
    return coerced


_TRUE, _FALSE = frozenset({"1", "true", "yes", "on"}), frozenset({"0", "false", "no", "off"})


def _coerce(name: str, kind: type, value: Any) -> Any:
    try:
        if kind is bool:
            if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                return value.strip().lower() in _TRUE
            if isinstance(value, (bool, int)) and value in (0, 1):
                return bool(value)
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(Fraction(value.strip())) if isinstance(value, str) else float(value)
        if kind is str:
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError, OverflowError, ZeroDivisionError):
        pass
    raise UserInputError(f"{name} must be {_KIND_NAMES[kind]}, got {value!r}")


_KIND_NAMES: Final[dict[type, str]] = {
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    str: "a text",
}


def _check_number(name: str, value: float, meta: dict[str, Any]) -> float:
    low, high = meta["low"], meta["high"]
    if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
        raise UserInputError(f"{name} must lie in [{low:g}, {high:g}] ({meta['help']}), got {value!r}")
    return value


#: Settings of the two presets; combine with a strategy: ``TrainConfig.from_preset("quick", strategy="pgd")``.
PRESETS: Final[dict[str, dict[str, Any]]] = {
    # A CPU demo: ResNet18 from scratch on 1,200 64 px phantoms, light robust validation (PGD-3).
    # Small batches because from scratch the number of steps, not of images, decides whether it
    # learns at all. On 2 CPU cores: about 3 minutes, validation accuracy about 0.6 against a 0.51
    # majority class. A ResNet50 with the same settings stays at chance (about 6 minutes); with
    # zero_init_residual and 12 epochs it learns in about 7.5 (bench/RESULTS.md). A robust model on
    # a CPU comes from fine-tuning the standard one (init_from), not from scratch.
    "quick": {
        "arch": "resnet18",
        "image_size": 64,
        "count": 1200,
        "epochs": 10,
        "batch_size": 8,
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 0.05,
        "schedule": "onecycle",
        "val_steps": 3,
        "eval_size": 64,
    },
    # The reference study's scale on a GPU: 224 px, 30 epochs, PGD-10 validation, early stopping.
    "full": {
        "arch": "resnet50",
        "image_size": 224,
        "count": 1200,
        "epochs": 30,
        "batch_size": 64,
        "optimizer": "sgd",
        "lr": 0.05,
        "schedule": "cosine",
        "val_steps": 10,
        "patience": 10,
    },
}
