"""Membership inference: does a model give away which scans it was trained on?

Three attacks score every candidate scan (higher: more likely a training member), each judged by
ROC AUC and the true-positive rate at 1% and 0.1% false positives with 95% intervals
(:mod:`pipeline.threats.roc`):

- **loss** (Yeom et al. 2018, "Privacy Risk in Machine Learning", https://arxiv.org/abs/1709.01604):
  the model's log-probability of the true class; members were fitted, so their loss is lower. The
  threshold attack of Shokri et al. 2017 (https://arxiv.org/abs/1610.05820) reduced to one score.
- **confidence** (Salem et al. 2019, "ML-Leaks", https://arxiv.org/abs/1806.01246): the top class
  probability, which needs no label.
- **LiRA, offline** (Carlini et al. 2022, "Membership Inference Attacks From First Principles",
  https://arxiv.org/abs/2112.03570): shadow models trained like the target on scans that are none of
  the candidates tell how each candidate scores when it is *not* a member; the attack asks how far
  above that distribution the target's score lies. Scores are the paper's logit-scaled confidence
  ``log p_y - log(1 - p_y)``; the "out" distribution of each candidate is a Gaussian with its own mean
  over the shadows and, with fewer than :data:`PER_EXAMPLE_SHADOWS` shadows, one variance pooled over
  all candidates (the paper's advice for few shadows), else its own.

Who is a member, and why nothing leaks:

- members are drawn from the target's stored training split; non-members from its stored **test** split
  (never trained on, never used to choose the kept epoch), as many of each;
- a test scan related to any training scan (the same group: an exact or near duplicate, a neighbouring
  slice, the same patient; :func:`pipeline.data.splits.group_scans`) is never a non-member, even where the
  split was random;
- shadow models are trained by the product's own loop with the target's own settings, but on phantom
  scans of another seed (``shadow_seed``), each shadow on its own split of them (split seed and weights
  seed differ from shadow to shadow): none of their scans is a candidate. A
  target that was started from, distilled from or trained against another run (``init_from``,
  ``teacher_run``, ``transfer_run``) has that run shadowed too, on the same shadow scans, since that
  run saw the candidates;
- intervals resample whole groups where the split grouped related scans.

Adversarial training is known to raise this risk (Song et al. 2019, "Privacy Risks of Securing Machine
Learning Models against Adversarial Examples", https://arxiv.org/abs/1905.10291): give a standard and an
adversarially trained run as targets to see it side by side.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.data import DataSpec, ScanDataset, Split, split_groups
from pipeline.data.splits import group_scans
from pipeline.device import select_device
from pipeline.errors import UserInputError
from pipeline.evaluation.batches import iter_batches
from pipeline.evaluation.data import run_data
from pipeline.evaluation.intervals import Interval, proportion_interval
from pipeline.guard import exclusive_eval
from pipeline.params import from_mapping, setting, validate_fields
from pipeline.progress import PASS, Phase, ProgressCallback, report, staged
from pipeline.store import load_model, read_record, remove_weights, resolve_run
from pipeline.threats.roc import RocSummary, roc_summary
from pipeline.training import TrainConfig, finished_run, planned_phases, train
from pipeline.units import format_epsilon

KIND: Final[str] = "membership"
SHADOWS: Final[str] = "shadows"
#: The attacks by key: (title, reference).
ATTACKS: Final[dict[str, tuple[str, str]]] = {
    "loss": ("Loss threshold", "Yeom et al. 2018"),
    "confidence": ("Confidence threshold", "Salem et al. 2019"),
    "lira": ("LiRA, offline", "Carlini et al. 2022"),
}
#: From this many shadows on, each candidate's "out" distribution gets its own variance.
PER_EXAMPLE_SHADOWS: Final[int] = 16
#: Fewer non-members than this cannot support any figure.
MIN_CANDIDATES: Final[int] = 5
#: Settings of another run that a target's training reads, each a run that saw the target's scans.
PARENT_FIELDS: Final[tuple[str, ...]] = ("init_from", "teacher_run", "transfer_run")


@dataclass(frozen=True)
class MembershipSettings:
    """Which saved runs to attack, with how many shadow models. Every field is checked when the settings
    are built; a bad value raises :class:`UserInputError` naming it."""

    targets: tuple[str, ...] = setting(
        (), kind=str, help="runs to attack (a run directory or a name under runs_dir), e.g. a standard and "
        "an adversarially trained one"
    )
    runs_dir: str = setting("runs", help="where runs given by name live")
    shadows: int = setting(
        4, low=2, high=256, help="shadow models per target for LiRA (2-4 on a CPU; 16 or more on a GPU)"
    )
    shadow_epochs: Optional[int] = setting(
        None, kind=int, low=1, high=1000, help="epochs of each shadow model (default: its target's own)"
    )
    shadow_seed: int = setting(
        1000, low=0, high=2**31 - 1,
        help="phantom seed of the shadow models' scans (not the target's); each shadow splits them its own way",
    )
    candidates: Optional[int] = setting(
        None, kind=int, low=MIN_CANDIDATES, high=100_000,
        help="at most this many members and as many non-members (default: every usable test scan)",
    )
    device: str = setting("auto", help="auto, cpu, cuda, cuda:N or mps")
    seed: int = setting(0, low=0, high=2**31 - 1, help="seed of the candidates' draw and of the bootstrap")
    keep_models: bool = setting(
        False, help="keep each shadow model's weights in the job folder (else only its record and curves stay)"
    )

    def __post_init__(self) -> None:
        if not self.targets:
            raise UserInputError("choose at least one run to attack")
        validate_fields(self)
        if len(set(self.targets)) != len(self.targets):
            raise UserInputError("the same run was given twice; give each run once")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> MembershipSettings:
        """Build from :meth:`to_dict`'s output or a settings file; unknown names are refused."""
        return from_mapping(cls, values, what="membership")


@dataclass
class TargetResult:
    """One attacked run: how well each attack tells its members from its non-members."""

    name: str
    info: dict[str, Any]  #: run folder, architecture, strategy, training budget, epochs
    member_accuracy: Interval  #: the target's accuracy on its member candidates
    non_member_accuracy: Interval  #: and on its non-member candidates: the gap is overfitting
    attacks: dict[str, RocSummary]  #: by key of :data:`ATTACKS`
    is_member: list[bool]  #: per candidate
    scores: dict[str, list[float]]  #: per attack, per candidate
    shadows: list[str]  #: the shadow models' run folders, relative to the job folder
    shadow_epochs: int
    variance: str  #: "pooled" or "per candidate": LiRA's out-distribution variance

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "info": self.info, "member_accuracy": self.member_accuracy.to_dict(),
            "non_member_accuracy": self.non_member_accuracy.to_dict(),
            "attacks": {key: summary.to_dict() for key, summary in self.attacks.items()},
            "is_member": self.is_member, "scores": self.scores, "shadows": self.shadows,
            "shadow_epochs": self.shadow_epochs, "variance": self.variance,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TargetResult:
        return cls(
            name=str(data["name"]), info=dict(data["info"]),
            member_accuracy=Interval.from_dict(data["member_accuracy"]),
            non_member_accuracy=Interval.from_dict(data["non_member_accuracy"]),
            attacks={str(key): RocSummary.from_dict(value) for key, value in data["attacks"].items()},
            is_member=[bool(v) for v in data["is_member"]],
            scores={str(key): [float(v) for v in values] for key, values in data["scores"].items()},
            shadows=[str(v) for v in data["shadows"]], shadow_epochs=int(data["shadow_epochs"]),
            variance=str(data["variance"]),
        )


@dataclass
class MembershipResult:
    """Every target's result, in the order the targets were given."""

    settings: dict[str, Any]
    synthetic: bool
    targets: list[TargetResult] = field(default_factory=list)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M"))
    seconds: float = 0.0
    kind: str = KIND

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "settings": self.settings, "synthetic": self.synthetic,
            "targets": [target.to_dict() for target in self.targets], "created": self.created,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MembershipResult:
        """The result :meth:`to_dict` wrote (a saved ``result.json``)."""
        return cls(
            settings=dict(data["settings"]), synthetic=bool(data["synthetic"]),
            targets=[TargetResult.from_dict(item) for item in data["targets"]],
            created=str(data.get("created", "")), seconds=float(data.get("seconds", 0.0)),
        )

    def metrics(self) -> dict[str, float]:
        """Flat figures for MLflow: ``<target>/<attack>/auc``, ``.../tpr_at_1%_fpr`` and their bounds."""
        values: dict[str, float] = {}
        for target in self.targets:
            named = {f"{target.name}/member_accuracy": target.member_accuracy,
                     f"{target.name}/non_member_accuracy": target.non_member_accuracy}
            for key, summary in target.attacks.items():
                named[f"{target.name}/{key}/auc"] = summary.auc
                for fpr, interval in summary.tpr.items():
                    named[f"{target.name}/{key}/tpr_at_{fpr:.1%}_fpr"] = interval
            for name, interval in named.items():
                values[name], values[f"{name}_low"], values[f"{name}_high"] = (
                    interval.estimate, interval.low, interval.high
                )
        return values


@dataclass(frozen=True)
class Candidates:
    """The scans a membership attack is judged on: ``indices`` into the target's dataset (int ``[2n]``),
    which are members (bool ``[2n]``, the first ``n``), and their group ids (int ``[2n]``)."""

    indices: np.ndarray
    is_member: np.ndarray
    groups: np.ndarray


def draw_candidates(dataset: ScanDataset, split: Split, count: Optional[int], seed: int) -> Candidates:
    """As many members (from the training split) as non-members (from the test split, leaving out any
    scan related to a training scan), at most ``count`` of each, drawn with ``seed``.

    Raises :class:`UserInputError` when fewer than :data:`MIN_CANDIDATES` non-members remain.
    """
    groups = split_groups(dataset, split)
    if groups is None:  # a random split: related scans were not kept together, so find them now
        groups, _ = group_scans(dataset)
    outside = split.test[~np.isin(groups[split.test], groups[split.train])]
    size = min(split.train.size, outside.size, count or outside.size)
    if size < MIN_CANDIDATES:
        raise UserInputError(
            f"the run's test split holds {outside.size} scans unrelated to its training scans; a membership "
            f"attack needs at least {MIN_CANDIDATES} non-members: train the run with a larger test fraction"
        )
    rng = np.random.default_rng(seed)
    members = np.sort(rng.choice(split.train, size, replace=False))
    non_members = np.sort(rng.choice(outside, size, replace=False))
    indices = np.concatenate([members, non_members])
    is_member = np.concatenate([np.ones(size, dtype=bool), np.zeros(size, dtype=bool)])
    return Candidates(indices, is_member, groups[indices])


def shadow_data(target: DataSpec, settings: MembershipSettings, shadow: int) -> DataSpec:
    """Shadow ``shadow``'s scans: the target's data settings (source, size, count, fractions) on the
    shadow population, phantom scans of ``shadow_seed``, each shadow with its own split of them.

    Like LiRA's shadows, each trains on its own random part of one population that holds none of the
    candidates. Raises :class:`UserInputError` for a target not trained on the phantom (its shadows would
    need other scans of its own source) or when the shadow seed is the target's own.
    """
    if not target.synthetic:
        raise UserInputError(
            "shadow models must train on scans like the target's that it never saw; here they are phantom "
            "scans of another seed, so membership inference runs on models trained on the synthetic phantom"
        )
    if settings.shadow_seed == target.seed:
        raise UserInputError(
            f"the shadow models would train on the target's own phantom scans (seed {target.seed}); choose "
            "another shadow seed"
        )
    return dataclasses.replace(
        target, seed=settings.shadow_seed, split_seed=(target.split_seed + 1 + shadow) % (2**31 - 1)
    )


def logit_scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-scan scores from ``logits`` (float ``[N, C]``) and true ``labels`` (int ``[N]``): ``loss`` (the
    log-probability of the true class), ``confidence`` (the top probability) and ``phi`` (LiRA's
    logit-scaled confidence ``log p_y - log(1 - p_y)``, computed from the logits without rounding
    ``p_y`` to 1). Float64 ``[N]`` each; higher means more member-like."""
    z = logits.double()
    true = z.gather(1, labels[:, None]).squeeze(1)
    others = z.scatter(1, labels[:, None], -math.inf)
    log_probs = F.log_softmax(z, dim=1)
    return {
        "loss": log_probs.gather(1, labels[:, None]).squeeze(1).cpu().numpy(),
        "confidence": log_probs.max(dim=1).values.exp().cpu().numpy(),
        "phi": (true - torch.logsumexp(others, dim=1)).cpu().numpy(),
    }


def lira_offline(target_phi: np.ndarray, shadow_phi: np.ndarray) -> tuple[np.ndarray, str]:
    """LiRA's offline score of each candidate: how many standard deviations the target's ``target_phi``
    (float ``[N]``) lies above the shadows' ``shadow_phi`` (float ``[K, N]``, K >= 2, none trained on the
    candidates); with fewer than :data:`PER_EXAMPLE_SHADOWS` shadows one pooled variance. Returns the
    scores and which variance was used."""
    shadows = shadow_phi.shape[0]
    if shadows < 2:
        raise UserInputError("LiRA needs at least 2 shadow models to estimate a spread")
    mean = shadow_phi.mean(axis=0)
    if shadows >= PER_EXAMPLE_SHADOWS:
        spread, variance = shadow_phi.std(axis=0, ddof=1), "per candidate"
    else:
        spread, variance = np.full(mean.shape, np.sqrt(((shadow_phi - mean) ** 2).sum() / (mean.size * (shadows - 1)))), "pooled"
    return (target_phi - mean) / np.maximum(spread, 1e-6), variance


def run_membership(
    settings: MembershipSettings, out_dir: Path | str, progress: Optional[ProgressCallback] = None
) -> MembershipResult:
    """Attack every target: draw its candidates, train its shadows into ``out_dir/shadows``, score, judge.

    Raises :class:`UserInputError` (or a subclass) for a missing target, a target not trained on the
    phantom, or too few non-members; :class:`pipeline.jobs.JobCancelled` when a shadow's training was
    cancelled.
    """
    started = time.perf_counter()
    shadows = _Shadows(settings, Path(out_dir))
    targets = [resolve_run(settings.runs_dir, target) for target in settings.targets]
    if len({run_dir.resolve() for run_dir in targets}) != len(targets):
        raise UserInputError("the same run was given twice; give each run once")
    records = [read_record(run_dir) for run_dir in targets]
    for record in records:
        for k in range(settings.shadows):
            shadow_data(record.data, settings, k)  # refused before any training
    # the work in the order it runs: each target's shadows (its parents' first, each once), then its scoring
    sequence: list[tuple[Path, int] | None] = []
    for run_dir in targets:
        for key in shadows.order([(run_dir, k) for k in range(settings.shadows)]):
            if key not in sequence:
                sequence.append(key)
        sequence.append(None)
    plans = [(Phase("score", 1.0),) if key is None else planned_phases(shadows.config(*key)) for key in sequence]
    trainings = [sum(p.work for p in plan if p.unit == PASS) for plan in plans]
    weights = [max(work, 1.0) if key is not None else max(max(trainings) * 0.02, 1.0)
               for key, work in zip(sequence, trainings)]
    stage_of = iter(range(len(plans)))
    shadows.stage = lambda name: staged(progress, next(stage_of), weights, name, plans=plans)
    device = select_device(settings.device)
    result = MembershipResult(settings=settings.to_dict(), synthetic=all(r.is_synthetic for r in records))
    try:
        for run_dir, record in zip(targets, records):
            trained = [shadows.train(run_dir, k) for k in range(settings.shadows)]
            result.targets.append(
                _attack(run_dir, settings, trained, Path(out_dir), device, shadows.stage(f"scoring {record.name}"))
            )
    finally:  # a cancelled or failed attack's shadows lose their weights too
        shadows.clean_up()
    result.seconds = round(time.perf_counter() - started, 1)
    return result


def _attack(
    run_dir: Path, settings: MembershipSettings, shadow_dirs: list[Path], out_dir: Path, device: torch.device,
    progress: Optional[ProgressCallback],
) -> TargetResult:
    """Score one target's candidates with the three attacks and judge each."""
    model, record = load_model(run_dir, device=device)
    dataset, split = run_data(record)
    chosen = draw_candidates(dataset, split, settings.candidates, settings.seed)
    logits, labels = _logits(model, dataset, chosen.indices, device)
    target = logit_scores(logits, labels)
    shadow_phi = []
    for number, shadow_dir in enumerate(shadow_dirs):
        shadow, _ = load_model(shadow_dir, device=device)
        shadow_phi.append(logit_scores(*_logits(shadow, dataset, chosen.indices, device))["phi"])
        report(progress, number + 1, len(shadow_dirs), f"shadow {number + 1}/{len(shadow_dirs)}")
    lira, variance = lira_offline(target["phi"], np.stack(shadow_phi))
    scores = {"loss": target["loss"], "confidence": target["confidence"], "lira": lira}
    right = (logits.argmax(1) == labels).cpu().numpy()
    member = chosen.is_member
    config = record.config
    shadow_epochs = settings.shadow_epochs or int(config.get("epochs") or 0)
    return TargetResult(
        name=record.name,
        info={"run_dir": str(run_dir), "arch": config.get("arch"), "strategy": config.get("strategy"),
              "training_eps": format_epsilon(config.get("eps")), "epochs": config.get("epochs"),
              "training_scans": int(split.train.size)},
        member_accuracy=proportion_interval(right[member], chosen.groups[member]),
        non_member_accuracy=proportion_interval(right[~member], chosen.groups[~member]),
        attacks={key: roc_summary(values, member, chosen.groups, seed=settings.seed) for key, values in scores.items()},
        is_member=member.tolist(),
        scores={key: [round(float(v), 6) for v in values] for key, values in scores.items()},
        shadows=[str(path.relative_to(out_dir)) for path in shadow_dirs],
        shadow_epochs=shadow_epochs,
        variance=variance,
    )


def _logits(
    model: nn.Module, dataset: ScanDataset, indices: np.ndarray, device: torch.device, batch: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 ``[N, C]`` logits of the deployed ``model`` (eval mode, no augmentation) and int ``[N]`` labels."""
    logits, labels = [], []
    with exclusive_eval(model), torch.no_grad():
        for _, x, y in iter_batches(dataset, indices, batch, device):
            logits.append(model(x).float())
            labels.append(y)
    return torch.cat(logits), torch.cat(labels)


class _Shadows:
    """The shadow models of a membership job: trained once each (a target's parent run's shadow serves
    every target started from it), in the order their starting points need, then removed unless kept."""

    def __init__(self, settings: MembershipSettings, out_dir: Path) -> None:
        self.settings, self.folder = settings, out_dir / SHADOWS
        self.trained: dict[tuple[Path, int], Path] = {}
        self.made: list[Path] = []  #: every shadow run trained, finished or not
        self.stage: Any = lambda name: None

    def order(self, wanted: list[tuple[Path, int]]) -> list[tuple[Path, int]]:
        """Every (run, shadow) to train for ``wanted``, parents before the runs started from them, once each."""
        ordered: list[tuple[Path, int]] = []

        def visit(run_dir: Path, k: int) -> None:
            key = (run_dir.resolve(), k)
            if key in ordered:
                return
            for parent in self._parents(run_dir):
                visit(parent, k)
            ordered.append(key)

        for run_dir, k in wanted:
            visit(run_dir, k)
        return ordered

    def config(self, run_dir: Path, k: int) -> TrainConfig:
        """Shadow ``k`` of ``run_dir``: its own settings on shadow scans, a seed of its own, its parents'
        shadows in place of its parents (paths filled in once they are trained)."""
        record = read_record(run_dir)
        config = TrainConfig.from_dict(record.config)
        settings = self.settings
        changes: dict[str, Any] = {
            "data": shadow_data(config.data, settings, k),
            "seed": (config.seed + 1 + k) % (2**31 - 1),
            "epochs": settings.shadow_epochs or config.epochs,
            "device": settings.device,
        }
        for name in PARENT_FIELDS:
            if getattr(config, name):
                parent = self.trained.get((_parent_dir(run_dir, getattr(config, name)), k))
                changes[name] = str(parent) if parent is not None else getattr(config, name)
        return dataclasses.replace(config, **changes)

    def train(self, run_dir: Path, k: int) -> Path:
        """Shadow ``k`` of ``run_dir`` (and of its parents first), trained now unless it already was."""
        for key in self.order([(run_dir, k)]):
            if key in self.trained:
                continue
            name = f"shadow {key[1] + 1} of {read_record(key[0]).name}"
            trained = train(self.config(*key), self.folder, progress=self.stage(name), track=False)
            self.made.append(trained)
            self.trained[key] = finished_run(trained, name)
        return self.trained[(run_dir.resolve(), k)]

    def clean_up(self) -> None:
        """Remove the shadows' weights unless the settings keep them (their records and curves stay)."""
        if self.settings.keep_models:
            return
        for run_dir in self.made:
            remove_weights(run_dir)

    @staticmethod
    def _parents(run_dir: Path) -> list[Path]:
        config = read_record(run_dir).config
        return [_parent_dir(run_dir, config[name]) for name in PARENT_FIELDS if config.get(name)]


def _parent_dir(run_dir: Path, value: str) -> Path:
    """The run a setting such as ``init_from`` names, resolved: as written, or beside ``run_dir`` (a
    relative path written from another working folder)."""
    path = Path(value)
    if not path.is_dir() and (run_dir.parent / path.name).is_dir():
        path = run_dir.parent / path.name
    return path.resolve()

