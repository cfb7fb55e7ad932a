"""Model extraction: copy a deployed model from its answers alone, then attack it offline.

Tramèr et al. 2016, "Stealing Machine Learning Models via Prediction APIs"
(https://arxiv.org/abs/1609.02943); Papernot et al. 2017, "Practical Black-Box Attacks against Machine
Learning" (https://arxiv.org/abs/1602.02697).

The attacker holds scans of their own (public data; here phantom scans of another seed than the
victim's, :func:`query_spec`) and may send a budget of them to the deployed model (the victim, a saved
run), which answers with its class or with every class's probability. For each budget a surrogate is
trained by the product's own loop on those answers only (the ``extraction`` training strategy:
:class:`pipeline.training.strategies.ExtractionTraining`), never on the labels. Then, on the victim's
own held-out test scans:

- **agreement**: the share of scans on which surrogate and victim give the same answer;
- **transfer success**: attacks crafted on the surrogate (white-box on the copy) and shown to the victim,
  on the scans the victim classifies correctly: the share it then gets wrong;
- beside it, the **white-box success** of the same attack crafted on the victim itself (what an attacker
  holding the weights achieves) and the success of **random noise** of the same L∞ budget (each pixel
  moved by ±ε at random: chance, what any perturbation of that size does).

Every share carries a 95% interval (:func:`pipeline.evaluation.intervals.proportion_interval`: Wilson's,
or a group bootstrap where the victim's split grouped related scans).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Mapping, Optional

import numpy as np
import torch
from torch import nn

from pipeline.attacks import get_attack, transfer_attacks
from pipeline.constants import GREY_LEVEL
from pipeline.data import DataSpec, ScanDataset, split_groups
from pipeline.device import select_device
from pipeline.errors import UserInputError
from pipeline.evaluation.batches import groups_of, iter_batches, predict
from pipeline.evaluation.data import run_data, split_indices
from pipeline.evaluation.intervals import Interval, proportion_interval
from pipeline.guard import exclusive_eval
from pipeline.models import ARCHITECTURES
from pipeline.params import from_mapping, setting, validate_fields
from pipeline.progress import PASS, Phase, ProgressCallback, report, staged
from pipeline.store import RunRecord, load_model, remove_weights, resolve_run
from pipeline.training import TrainConfig, finished_run, planned_phases, train
from pipeline.units import MAX_EPSILON, format_epsilon

KIND: Final[str] = "extraction"
#: The fewest queries a surrogate is trained from (a validation scan or two, the rest to learn from).
MIN_QUERIES: Final[int] = 20
#: Share of the queried scans the surrogate keeps aside to choose its best epoch (agreement with the victim).
QUERY_VAL_FRACTION: Final[float] = 0.1
SURROGATES: Final[str] = "surrogates"


@dataclass(frozen=True)
class ExtractionSettings:
    """Which deployed model to steal, with how many queries, and how the copies are attacked.

    Every field is checked when the settings are built; a bad value raises :class:`UserInputError`
    naming it.
    """

    victim: Optional[str] = setting(None, kind=str, help="the deployed model: a run directory or a name under runs_dir")
    runs_dir: str = setting("runs", help="where runs given by name live")
    budgets: tuple[int, ...] = setting(
        (250, 500, 1000, 2000), low=MIN_QUERIES, high=100_000,
        help="query budgets: how many scans the attacker sends the victim for each surrogate",
    )
    answers: str = setting(
        "labels", choices=("labels", "probabilities"),
        help="what the victim answers: its class only (labels, the usual API) or every class's probability",
    )
    query_seed: int = setting(
        1, low=0, high=2**31 - 1,
        help="seed of the attacker's phantom scans (public data's stand-in); not the victim's own seed",
    )
    arch: str = setting("resnet18", choices=tuple(ARCHITECTURES), help="the surrogate's architecture")
    epochs: int = setting(10, low=1, high=1000, help="training epochs of each surrogate")
    batch_size: int = setting(16, low=2, high=4096, help="scans per training step and per attack batch")
    lr: float = setting(2e-3, low=1e-7, high=10.0, help="the surrogate's peak learning rate (AdamW)")
    attack: str = setting(
        "pgd", choices=transfer_attacks(), help="attack crafted on the surrogate (and white-box on the victim)"
    )
    eps: float = setting(
        4 * GREY_LEVEL, low=GREY_LEVEL / 8, high=MAX_EPSILON, grey_levels=True, help="the attack's L∞ budget"
    )
    steps: int = setting(10, low=1, high=1000, help="iterations of the attack")
    limit: Optional[int] = setting(
        None, kind=int, low=1, help="measure on at most this many of the victim's test scans, classes in turn"
    )
    device: str = setting("auto", help="auto, cpu, cuda, cuda:N or mps")
    seed: int = setting(0, low=0, high=2**31 - 1, help="seed of the surrogates' training and the noise")
    keep_models: bool = setting(
        False, help="keep each surrogate's weights in the job folder (else only its record and curves stay)"
    )

    def __post_init__(self) -> None:
        if not self.victim:
            raise UserInputError("choose the victim: the saved run whose answers the attacker collects")
        validate_fields(self)
        object.__setattr__(self, "budgets", tuple(sorted(set(self.budgets))))

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "budgets": list(self.budgets)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ExtractionSettings:
        """Build from :meth:`to_dict`'s output or a settings file; unknown names are refused."""
        return from_mapping(cls, values, what="extraction")


@dataclass
class Surrogate:
    """One surrogate, trained from ``queries`` answers, measured on the victim's test scans."""

    budget: int
    queries: int  #: scans actually sent to the victim (its training and validation scans)
    run: str  #: the surrogate's run folder, relative to the job folder
    seconds: float  #: training time
    agreement: Interval  #: share of test scans where it answers as the victim does
    accuracy: Interval  #: its own accuracy on the test scans (against the true labels)
    transfer: Interval  #: share of the victim's correct scans fooled by attacks crafted on it

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget, "queries": self.queries, "run": self.run, "seconds": self.seconds,
            "agreement": self.agreement.to_dict(), "accuracy": self.accuracy.to_dict(),
            "transfer": self.transfer.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Surrogate:
        return cls(
            budget=int(data["budget"]), queries=int(data["queries"]), run=str(data["run"]),
            seconds=float(data["seconds"]),
            **{key: Interval.from_dict(data[key]) for key in ("agreement", "accuracy", "transfer")},
        )


@dataclass
class ExtractionResult:
    """Everything an extraction measured; ``surrogates`` in rising budget order."""

    settings: dict[str, Any]
    victim: str  #: the victim run's name
    victim_info: dict[str, Any]  #: its run folder, architecture, strategy, training budget
    synthetic: bool
    attack_label: str  #: e.g. "PGD (L∞) ε=4/255, 10 steps"
    scans: int  #: victim test scans measured
    victim_accuracy: Interval
    white_box: Interval  #: the attack crafted on the victim itself
    noise: Interval  #: random ±ε noise: chance
    surrogates: list[Surrogate] = field(default_factory=list)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M"))
    seconds: float = 0.0
    kind: str = KIND

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "settings": self.settings, "victim": self.victim, "victim_info": self.victim_info,
            "synthetic": self.synthetic, "attack_label": self.attack_label, "scans": self.scans,
            "victim_accuracy": self.victim_accuracy.to_dict(), "white_box": self.white_box.to_dict(),
            "noise": self.noise.to_dict(), "surrogates": [s.to_dict() for s in self.surrogates],
            "created": self.created, "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExtractionResult:
        """The result :meth:`to_dict` wrote (a saved ``result.json``)."""
        return cls(
            settings=dict(data["settings"]), victim=str(data["victim"]), victim_info=dict(data["victim_info"]),
            synthetic=bool(data["synthetic"]), attack_label=str(data["attack_label"]), scans=int(data["scans"]),
            victim_accuracy=Interval.from_dict(data["victim_accuracy"]),
            white_box=Interval.from_dict(data["white_box"]), noise=Interval.from_dict(data["noise"]),
            surrogates=[Surrogate.from_dict(item) for item in data["surrogates"]],
            created=str(data.get("created", "")), seconds=float(data.get("seconds", 0.0)),
        )

    def metrics(self) -> dict[str, float]:
        """Flat figures for MLflow: ``white_box/success``, ``queries_<n>/agreement`` and their bounds."""
        values: dict[str, float] = {}
        named = {"victim/accuracy": self.victim_accuracy, "white_box/success": self.white_box,
                 "noise/success": self.noise}
        for surrogate in self.surrogates:
            prefix = f"queries_{surrogate.budget}"
            named.update({f"{prefix}/agreement": surrogate.agreement, f"{prefix}/accuracy": surrogate.accuracy,
                          f"{prefix}/transfer_success": surrogate.transfer})
        for name, interval in named.items():
            values[name], values[f"{name}_low"], values[f"{name}_high"] = (
                interval.estimate, interval.low, interval.high
            )
        return values


def query_spec(victim: RunRecord, settings: ExtractionSettings, budget: int) -> DataSpec:
    """The attacker's ``budget`` query scans: phantom scans at the victim's size, of ``query_seed``.

    All of them are sent to the victim (none held out for testing); a tenth serves the surrogate to keep
    its best epoch. Raises :class:`UserInputError` when they would be the victim's own training scans.
    """
    data = victim.data
    if data.synthetic and data.seed == settings.query_seed:
        raise UserInputError(
            f"the victim {victim.name} was trained on phantom scans of seed {data.seed}: the attacker's query "
            "scans must be other scans; choose another query seed"
        )
    return DataSpec(
        source="synthetic", image_size=data.image_size, count=budget, seed=settings.query_seed,
        val_fraction=QUERY_VAL_FRACTION, test_fraction=0.0, split_seed=settings.seed,
    )


def surrogate_config(victim_dir: Path, victim: RunRecord, settings: ExtractionSettings, budget: int) -> TrainConfig:
    """The training of the surrogate for ``budget`` queries: the quick preset's recipe (AdamW, cosine,
    no augmentation) with the settings' architecture, epochs, batch and learning rate."""
    return TrainConfig.from_preset(
        "quick", data=query_spec(victim, settings, budget), arch=settings.arch, epochs=settings.epochs,
        batch_size=settings.batch_size, lr=settings.lr, strategy="extraction", victim_run=str(victim_dir),
        victim_answers=settings.answers, device=settings.device, seed=settings.seed, augment=False,
    )


def run_extraction(
    settings: ExtractionSettings, out_dir: Path | str, progress: Optional[ProgressCallback] = None
) -> ExtractionResult:
    """Train a surrogate per budget into ``out_dir/surrogates`` and measure each against the victim.

    Raises :class:`UserInputError` (or a subclass) for a missing victim, a query set that would be the
    victim's own scans, or a victim test split that is empty; :class:`pipeline.jobs.JobCancelled`
    when a surrogate's training was cancelled.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    victim_dir = resolve_run(settings.runs_dir, settings.victim)
    device = select_device(settings.device)
    victim, record = load_model(victim_dir, device=device)
    configs = [surrogate_config(victim_dir, record, settings, budget) for budget in settings.budgets]
    dataset, split = run_data(record)
    indices = split_indices(split, "test", dataset.labels, limit=settings.limit)
    groups = groups_of(split_groups(dataset, split), dataset, indices)
    measure = Phase("measure", indices.size * (settings.steps + 2))
    plans = [(measure,)] + [(*planned_phases(config), measure) for config in configs]
    weights = [sum(phase.work for phase in plan if phase.unit == PASS) for plan in plans]
    attack = get_attack(settings.attack, eps=settings.eps, steps=settings.steps)
    measurer = _Measurer(victim, dataset, indices, device, settings)

    def stage(index: int, name: str) -> Optional[ProgressCallback]:
        return staged(progress, index, weights, name, plans=plans)

    truth, answers = measurer.labels, measurer.victim_answers
    correct = answers == truth
    white_box = measurer.fooled(lambda x, y: attack(victim, x, y), stage(0, "white-box attack on the victim"))
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    noise = measurer.fooled(lambda x, y: _random_sign_noise(x, settings.eps, generator), None)
    result = ExtractionResult(
        settings=settings.to_dict(), victim=record.name, victim_info=_info(victim_dir, record),
        synthetic=record.is_synthetic, attack_label=f"{attack.title} ε={format_epsilon(settings.eps)}, "
        f"{settings.steps} steps", scans=int(indices.size),
        victim_accuracy=proportion_interval(correct, groups),
        white_box=proportion_interval(white_box, _on(groups, correct)),
        noise=proportion_interval(noise, _on(groups, correct)),
    )
    for number, (budget, config) in enumerate(zip(settings.budgets, configs), start=1):
        name = f"surrogate from {budget} queries"
        clock = time.perf_counter()
        within = stage(number, name)
        trained = train(config, out_dir / SURROGATES, progress=within, track=False)
        try:
            result.surrogates.append(
                _measure_surrogate(finished_run(trained, name), out_dir, budget, time.perf_counter() - clock,
                                   measurer, attack, groups, device)
            )
        finally:  # a cancelled or failed surrogate's weights go too
            if not settings.keep_models:
                remove_weights(trained)
        report(within, 1, 1, f"measured: agreement {result.surrogates[-1].agreement.format()}")
    result.seconds = round(time.perf_counter() - started, 1)
    return result


def _measure_surrogate(
    run_dir: Path, out_dir: Path, budget: int, seconds: float, measurer: _Measurer, attack: Any,
    groups: Optional[np.ndarray], device: torch.device,
) -> Surrogate:
    """One trained surrogate against the victim: agreement, its own accuracy, transfer success."""
    surrogate, record = load_model(run_dir, device=device)
    copied = measurer.answers(surrogate)
    fooled = measurer.fooled(lambda x, y: attack(surrogate, x, y), None)
    split = record.config.get("split", {})
    return Surrogate(
        budget=budget, queries=len(split.get("train", [])) + len(split.get("val", [])),
        run=str(run_dir.relative_to(out_dir)), seconds=round(seconds, 1),
        agreement=proportion_interval(copied == measurer.victim_answers, groups),
        accuracy=proportion_interval(copied == measurer.labels, groups),
        transfer=proportion_interval(fooled, _on(groups, measurer.victim_answers == measurer.labels)),
    )


class _Measurer:
    """The victim's test scans, read in batches: the victim's answers, another model's, and which of
    the scans the victim classifies correctly it gets wrong after a perturbation."""

    def __init__(
        self, victim: nn.Module, dataset: ScanDataset, indices: np.ndarray, device: torch.device,
        settings: ExtractionSettings,
    ) -> None:
        self.victim, self.dataset, self.device, self.batch = victim, dataset, device, settings.batch_size
        self.indices = indices
        self.labels = np.asarray(dataset.labels)[indices]
        self.victim_answers = self.answers(victim)
        self.correct = indices[self.victim_answers == self.labels]

    def answers(self, model: nn.Module) -> np.ndarray:
        """int ``[N]``: ``model``'s class for each test scan."""
        parts = []
        with exclusive_eval(model):
            for _, x, _ in iter_batches(self.dataset, self.indices, self.batch, self.device):
                parts.append(predict(model, x).cpu().numpy())
        return np.concatenate(parts)

    def fooled(self, perturb: Any, progress: Optional[ProgressCallback]) -> np.ndarray:
        """bool ``[M]``: for each scan the victim classifies correctly, whether it errs on ``perturb(x, y)``."""
        parts = []
        for positions, x, y in iter_batches(self.dataset, self.correct, self.batch, self.device):
            x_adv = perturb(x, y)
            with exclusive_eval(self.victim):
                parts.append((predict(self.victim, x_adv) != y).cpu().numpy())
            report(progress, positions.stop, self.correct.size, "attacking")
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def _random_sign_noise(x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """``x`` with every pixel moved by +ε or −ε at random (a corner of the L∞ ball), kept in [0, 1]."""
    signs = torch.randint(0, 2, x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
    return (x + eps * signs).clamp(0.0, 1.0)


def _on(groups: Optional[np.ndarray], chosen: np.ndarray) -> Optional[np.ndarray]:
    return None if groups is None else groups[chosen]


def _info(run_dir: Path, record: RunRecord) -> dict[str, Any]:
    config = record.config
    return {
        "run_dir": str(run_dir), "arch": config.get("arch"), "strategy": config.get("strategy"),
        "training_eps": format_epsilon(config.get("eps")), "image_size": record.data.image_size,
    }
