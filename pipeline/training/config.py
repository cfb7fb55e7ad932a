"""Everything a training run needs, validated field by field before any work starts.

A ``TrainConfig`` is what the CLI, the dashboard and background jobs build, what ``config.json``
stores, and what ``--resume`` reads back; an out-of-range value is refused here with the field's
name and its allowed range, instead of failing an hour into a run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Final, Mapping, Optional

from pipeline.constants import GREY_LEVEL
from pipeline.data import DataSpec, fold_data_settings
from pipeline.data.poison import POISON_FLAT_NAMES, PoisonSpec, fold_poison_settings
from pipeline.data.spec import FLAT_NAMES
from pipeline.errors import UserInputError
from pipeline.models import ARCHITECTURES, MIN_INPUT_SIZE
from pipeline.params import setting, under_flat_names, validate_fields
from pipeline.store import check_settings_with
from pipeline.training import strategies
from pipeline.units import MAX_EPSILON

#: On a CPU, channels-last memory speeds training up only from this input size (pixels) on. Below it the
#: weights outweigh the activations, and reordering the weights' gradients out of channels-last costs more
#: than it saves: a ResNet-18 training step ran 0.68x as fast at 32 px, 0.94x at 64 px and 1.23x at 96 px
#: (ResNet-50: 0.89x, 1.02x, 1.15x; ``python bench/memory_format.py``, bench/RESULTS.md).
CPU_CHANNELS_LAST_FROM: Final[int] = 96


@dataclass
class TrainConfig:
    """One training run. Epsilons and step sizes are in image scale ``[0, 1]`` (4/255 = 0.0157)."""

    #: The scans and their split (Hydra-style nested settings); flat keys are accepted by from_dict.
    data: DataSpec = field(default_factory=DataSpec)
    #: A backdoor planted in the training split (None: a clean run); flat keys ``poison_fraction``,
    #: ``trigger_hu``, ... are accepted by from_dict. Only the threat experiments set it.
    poison: Optional[PoisonSpec] = None
    # model and optimisation
    arch: str = setting("resnet50", choices=tuple(ARCHITECTURES), help="network architecture")
    pretrained: bool = setting(False, help="start from ImageNet weights (downloaded once)")
    zero_init_residual: bool = setting(
        False,
        help="start each residual branch at zero, so a deep ResNet trained from scratch on little data "
        "begins as a shallow one and learns sooner",
    )
    init_from: Optional[str] = setting(
        None,
        help="saved run whose kept model is the starting point, e.g. to fine-tune a normally trained "
        "model adversarially; same architecture and classes",
    )
    strategy: str = setting("standard", choices=strategies.available(), help="training strategy")
    epochs: int = setting(30, low=1, high=1000, help="number of passes over the training split")
    batch_size: int = setting(32, low=2, high=4096, help="scans per optimisation step (all GPUs together)")
    optimizer: str = setting("sgd", choices=("sgd", "adamw"), help="optimiser")
    lr: float = setting(0.05, low=1e-7, high=10.0, help="peak learning rate")
    momentum: float = setting(0.9, low=0.0, high=0.999, help="SGD momentum (AdamW: beta1)")
    weight_decay: float = setting(5e-4, low=0.0, high=1.0, help="weight decay (not on norms and biases)")
    schedule: str = setting(
        "cosine", choices=("cosine", "onecycle", "constant"), help="learning-rate schedule"
    )
    label_smoothing: float = setting(0.0, low=0.0, high=0.5, help="label smoothing of the cross-entropy")
    imbalance: str = setting(
        "weights",
        choices=("none", "weights", "sampler"),
        help="class imbalance: loss weights or a balanced sampler",
    )
    augment: bool = setting(True, help="rotations, shifts, scale, flips, brightness/contrast and noise")
    # adversarial training
    eps: float = setting(
        4 * GREY_LEVEL,
        low=GREY_LEVEL / 8,
        high=MAX_EPSILON,
        grey_levels=True,
        help="L-inf budget in image scale; write 4/255 for 4 grey levels",
    )
    alpha: Optional[float] = setting(
        None,
        kind=float,
        low=GREY_LEVEL / 64,
        high=MAX_EPSILON,
        grey_levels=True,
        help="attack step size; default eps/4 for PGD, 1.25*eps for FGSM-RS",
    )
    steps: int = setting(7, low=1, high=100, help="PGD steps during training")
    eps_warmup: float = setting(
        0.0,
        low=0.0,
        high=1.0,
        help="share of the training steps over which the training budget grows linearly from 0 to "
        "eps (0: the full budget from the first step); lets a network trained from scratch find the "
        "clean signal before it must hold against attacks",
    )
    trades_beta: float = setting(6.0, low=0.0, high=100.0, help="TRADES robustness weight")
    mart_beta: float = setting(6.0, low=0.0, high=100.0, help="MART robustness weight")
    cw_steps: int = setting(10, low=1, high=1000, help="CW iterations in the mixed recipe (few, for speed)")
    transfer_run: Optional[str] = setting(None, help="saved run whose model crafts the transfer examples")
    transfer_attack: str = setting(
        "fgsm", choices=("fgsm", "pgd"), help="attack run on the transfer source model"
    )
    transfer_eps: tuple[float, ...] = setting(
        (0.01, 0.02, 0.03),
        low=GREY_LEVEL / 8,
        high=MAX_EPSILON,
        help="budgets of the transfer examples (one copy of the data each)",
    )
    # defensive distillation
    teacher_run: Optional[str] = setting(
        None, help="saved run whose soft labels the distilled model learns (defensive distillation)"
    )
    # T costs nothing per step (the loss is scaled by T², so the steps keep their size); what it sets is
    # how far the deployed logits must grow. The paper's 100 is kept: PGD's sign step still finds a
    # direction until the softmax's gradient underflows float32, at logit margins beyond about 100. In
    # trials for tests/test_distillation.py (tiny CNN) a student at T=50 (6 epochs, lr 1e-2) stopped at
    # margins near 100 and PGD still fooled it; at T=100 (8 epochs, lr 3e-2) margins reached 400-500.
    temperature: float = setting(
        100.0,
        low=1.0,
        high=1000.0,
        help="distillation temperature T: the student learns the teacher's soft labels at T and is deployed "
        "at T=1 (Papernot et al. used 100; starting from the teacher, init_from, reaches it in a few epochs)",
    )
    # model extraction (a surrogate that learns a deployed model's answers)
    victim_run: Optional[str] = setting(
        None, help="saved run whose answers on these scans the surrogate learns (model extraction)"
    )
    victim_answers: str = setting(
        "labels",
        choices=("labels", "probabilities"),
        help="what the victim returns to each query: its class only (labels) or every class's probability",
    )
    # selection and checks
    val_steps: int = setting(10, low=1, high=200, help="PGD steps of the robust validation check")
    eval_size: int = setting(
        256, low=8, high=100_000, help="training scans re-measured each epoch (clean and PGD)"
    )
    select_by: str = setting(
        "auto",
        choices=("auto", "robust", "clean", "balanced"),
        help="keep the epoch with the best validation accuracy under PGD (robust), on clean scans "
        "(clean) or averaged over the classes' recalls (balanced); auto: balanced for standard "
        "training, distillation and extraction, robust for adversarial training",
    )
    patience: int = setting(
        0, low=0, high=1000, help="stop after this many epochs without improvement (0: never)"
    )
    co_tolerance: float = setting(
        0.2,
        low=0.01,
        high=1.0,
        help="FGSM-RS guard: a drop of validation PGD accuracy larger than this rolls back and stops",
    )
    # execution
    seed: int = setting(
        0, low=0, high=2**31 - 1, help="seed of the weights, shuffling, augmentation and attacks"
    )
    device: str = setting("auto", help="auto, cpu, cuda, cuda:N or mps")
    amp: bool = setting(
        True,
        help="bf16 autocast where the hardware computes it natively: CUDA (fp16 with a grad scaler where "
        "bf16 is missing) and CPUs with AVX512-BF16 or AMX",
    )
    channels_last: bool = setting(
        True,
        help=f"channels-last memory format on CUDA, and on CPUs from {CPU_CHANNELS_LAST_FROM} px (below it "
        "contiguous is faster)",
    )
    compile: bool = setting(False, help="torch.compile the model (slow first epoch, faster later ones)")

    def __post_init__(self) -> None:
        data, poison = self.data, self.poison
        self.data = under_flat_names(lambda: DataSpec.from_dict(data), FLAT_NAMES)
        if poison is not None:
            self.poison = under_flat_names(lambda: PoisonSpec.from_dict(poison), POISON_FLAT_NAMES)
        validate_fields(self)
        if self.data.image_size < MIN_INPUT_SIZE:
            raise UserInputError(
                f"image_size must be at least {MIN_INPUT_SIZE} pixels for the models, "
                f"got {self.data.image_size}"
            )
        if self.init_from and self.pretrained:
            raise UserInputError(
                "start from ImageNet weights (pretrained) or from a saved run (init_from), not both"
            )
        if self.strategy == "transfer" and not self.transfer_run:
            raise UserInputError(
                "strategy 'transfer' needs transfer_run: the saved run whose model crafts examples"
            )
        if self.strategy == "extraction" and not self.victim_run:
            raise UserInputError(
                "strategy 'extraction' needs victim_run: the saved run whose answers the surrogate learns"
            )
        if self.strategy == "distillation" and not self.teacher_run:
            raise UserInputError(
                "strategy 'distillation' needs teacher_run: the saved run whose soft labels the model learns"
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
        """``robust``, ``clean`` or ``balanced``: ``auto`` picks robust for every adversarial strategy
        and balanced (mean per-class recall) for standard training, so that the kept epoch is not one
        that reads the rare benign class as normal."""
        if self.select_by != "auto":
            return self.select_by
        # A distilled model's PGD accuracy is masked, not robust: selecting on it would keep the most
        # masked epoch, so distillation selects like standard training; so does a surrogate (extraction),
        # whose validation labels are the victim's answers: it keeps the epoch that agrees best with them.
        return "balanced" if self.strategy in ("standard", "distillation", "extraction") else "robust"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the data settings nested under ``data``."""
        values = {spec.name: getattr(self, spec.name) for spec in dataclasses.fields(self)}
        poison = None if self.poison is None else self.poison.to_dict()
        return {
            **values, "data": self.data.to_dict(), "poison": poison, "transfer_eps": list(self.transfer_eps)
        }

    @property
    def poisoned(self) -> bool:
        """Whether a share of the training split carries a backdoor trigger (see :mod:`pipeline.data.poison`)."""
        return self.poison is not None

    @property
    def run_label(self) -> str:
        """What a new run's folder is named after: ``resnet18-standard``, ``resnet18-standard-poisoned``."""
        return f"{self.arch}-{self.strategy}" + ("-poisoned" if self.poisoned else "")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, strict: bool = False) -> TrainConfig:
        """Build from nested or flat settings (``data``, ``image_size``, ... as the command line names
        them); ``strict`` refuses unknown keys (typos in a user's file)."""
        if not isinstance(values, Mapping):
            raise UserInputError("a training configuration must be a JSON object of field: value")
        folded = fold_poison_settings(fold_data_settings(values))
        names = {spec.name for spec in dataclasses.fields(cls)}
        unknown = sorted(set(folded) - names)
        if strict and unknown:
            flat = set(FLAT_NAMES.values()) | set(POISON_FLAT_NAMES.values())
            valid = sorted(names - {"data", "poison"} | flat)
            raise UserInputError(
                f"unknown training setting(s) {', '.join(unknown)}; valid: {', '.join(valid)}"
            )
        return cls(**{key: value for key, value in folded.items() if key in names})

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> TrainConfig:
        """A preset's settings with ``overrides`` (flat or nested; None values are ignored) on top."""
        if preset not in PRESETS:
            raise UserInputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        given = {key: value for key, value in overrides.items() if value is not None}
        return cls.from_dict(merge_settings(PRESETS[preset], given), strict=True)


def merge_settings(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Settings given in layers (flat or nested), each overriding the ones before, data field by field."""
    merged: dict[str, Any] = {}
    data: dict[str, Any] = {}
    poison: Optional[dict[str, Any]] = None
    for layer in layers:
        folded = fold_poison_settings(fold_data_settings(layer))
        data.update(folded.pop("data"))
        nested = folded.pop("poison")
        if nested is not None:
            poison = {**(poison or {}), **nested}
        merged.update(folded)
    return {**merged, "data": data, "poison": poison}


#: Settings of the two presets; combine with a strategy: ``TrainConfig.from_preset("quick", strategy="pgd")``.
PRESETS: Final[dict[str, dict[str, Any]]] = {
    # A CPU demo: ResNet18 from scratch at 96 px (phantom v4: a mass spans 7-19 pixels, a nodule 3-6),
    # 2,000 phantom scans, 10 epochs of AdamW at batch 16 with a cosine schedule, classes drawn evenly
    # (the balanced sampler: benign, 11% of the scans, is otherwise rarely learned in so few steps). On
    # the phantom without augmentation (the demo's recipe, pipeline.demo) it reaches about 0.88 held-out
    # accuracy in about 4 minutes on 2 CPU cores (bf16 where the CPU has it); bench/RESULTS.md, "The
    # demo". A robust model on a CPU comes from fine-tuning the standard one (init_from), not from scratch.
    "quick": {
        "arch": "resnet18",
        "image_size": 96,
        "count": 2000,
        "val_fraction": 0.1,
        "test_fraction": 0.1,
        "epochs": 10,
        "batch_size": 16,
        "optimizer": "adamw",
        "lr": 2e-3,
        "weight_decay": 0.05,
        "schedule": "cosine",
        "imbalance": "sampler",
        "val_steps": 1,
        "eval_size": 32,
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


# Every run record the store reads is checked against this configuration's schema: a run whose
# settings are out of range is refused wherever it is opened, not only when it is resumed.
check_settings_with(TrainConfig.from_dict)
