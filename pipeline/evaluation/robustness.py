"""Robust accuracy of one model under a list of attacks, with the numbers a reader needs to trust it.

Conventions (those of AutoAttack and RobustBench, so our figures compare with the field's):
only scans the model classifies correctly are attacked; a scan it already gets wrong keeps its
clean prediction and counts as not robust. Hence accuracy under attack is never above clean
accuracy, every confusion matrix sums to the number of scans, and the success rate is the share
of correctly classified scans that the attack flipped. Perturbation sizes, PSNR and SSIM are
averaged over the adversarial examples that succeeded: how much change it took to fool the model.

"Combined" is the reference study's column done properly: per epsilon, a scan counts as robust
only if it survives every attack run at that epsilon (the study averaged three accuracies).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline.attacks import Attack, attack_class, get_attack
from pipeline.attacks.base import batch_norms
from pipeline.constants import CLASSES
from pipeline.errors import AttackParameterError
from pipeline.evaluation.batches import (
    groups_of,
    iter_batches,
    model_device,
    probabilities,
    reseed,
    resolve_indices,
    stopwatch,
)
from pipeline.evaluation.degenerate import AnswerCheck, check_answers
from pipeline.evaluation.intervals import Interval, proportion_interval
from pipeline.evaluation.metrics import accuracy, confusion_matrix, per_class_recall, psnr, ssim
from pipeline.evaluation.shards import Shards
from pipeline.guard import exclusive_eval
from pipeline.progress import ProgressCallback, report, staged
from pipeline.units import format_epsilon


@dataclass(frozen=True)
class AttackSpec:
    """An attack to run: its registry name, its parameters, and the label its column carries."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    label: Optional[str] = None

    @property
    def eps(self) -> Optional[float]:
        value = self.params.get("eps")
        return None if value is None else float(value)

    @property
    def title(self) -> str:
        if self.label:
            return self.label
        title = attack_class(self.name).title
        return title if self.eps is None else f"{title} ε={format_epsilon(self.eps)}"

    def build(self) -> Attack:
        return get_attack(self.name, **dict(self.params))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params), "label": self.title}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AttackSpec":
        """The spec :meth:`to_dict` wrote, its label kept as written."""
        return cls(str(data["name"]), dict(data.get("params") or {}), data.get("label"))

    @classmethod
    def coerce(cls, spec: "SpecLike") -> "AttackSpec":
        """Accept an AttackSpec, a name, ``(name, params)`` or ``(name, params, label)``."""
        if isinstance(spec, AttackSpec):
            return spec
        if isinstance(spec, str):
            return cls(spec)
        if isinstance(spec, (tuple, list)) and 1 <= len(spec) <= 3:
            return cls(*spec)
        raise AttackParameterError(
            f"cannot read attack {spec!r}; give a name, (name, params) or an AttackSpec"
        )


SpecLike = Union[AttackSpec, str, tuple]


@dataclass
class Outcome:
    """Predictions on a set of scans and what they add up to, each share with its 95% interval."""

    predictions: np.ndarray  #: int [N]
    labels: np.ndarray  #: int [N]
    #: float32 [N, C]: the class probabilities behind the predictions (None where not recorded)
    probabilities: Optional[np.ndarray] = None
    #: int [N]: scans sharing an id are not independent (one patient); None: every scan stands alone
    groups: Optional[np.ndarray] = None

    @property
    def accuracy(self) -> float:
        return accuracy(self.labels, self.predictions)

    @property
    def accuracy_interval(self) -> Interval:
        return proportion_interval(self.correct, self.groups)

    @property
    def recall_intervals(self) -> list[Interval]:
        """Per class (in class order): the share of its scans predicted correctly, with its interval."""
        return [
            proportion_interval(
                self.correct[members], None if self.groups is None else self.groups[members]
            )
            for members in (self.labels == label for label in range(len(CLASSES)))
        ]

    @property
    def confusion(self) -> np.ndarray:
        return confusion_matrix(self.labels, self.predictions, len(CLASSES))

    @property
    def recall(self) -> np.ndarray:
        return per_class_recall(self.confusion)

    @property
    def correct(self) -> np.ndarray:
        return self.predictions == self.labels

    def take(self, rows: np.ndarray) -> "Outcome":
        """The outcome on the scans at positions ``rows`` only."""
        return Outcome(
            self.predictions[rows],
            self.labels[rows],
            None if self.probabilities is None else self.probabilities[rows],
            None if self.groups is None else self.groups[rows],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "accuracy_ci": self.accuracy_interval.to_dict(),
            "confusion": self.confusion.tolist(),
            "recall": dict(zip(CLASSES, self.recall.tolist())),
            "recall_ci": {name: interval.to_dict() for name, interval in zip(CLASSES, self.recall_intervals)},
            "predictions": self.predictions.tolist(),
        }


@dataclass
class Example:
    """One scan the attack fooled, kept for the report's pictures."""

    index: int
    label: int  #: also the clean prediction: only correctly classified scans are attacked
    adversarial_prediction: int
    clean: np.ndarray  #: float32 [H, W] in [0, 1]
    adversarial: np.ndarray  #: float32 [H, W] in [0, 1]


@dataclass
class AttackResult:
    """One attack's effect; per-scan sizes are NaN for scans that were not attacked."""

    spec: AttackSpec
    outcome: Outcome
    clean_correct: np.ndarray  #: bool [N]: the scans that were attacked
    linf: np.ndarray
    l2: np.ndarray
    psnr: np.ndarray
    ssim: np.ndarray
    seconds: float = 0.0
    examples: list[Example] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.spec.title

    @property
    def accuracy(self) -> float:
        return self.outcome.accuracy

    @property
    def fooled(self) -> np.ndarray:
        """bool [N]: correctly classified scans whose prediction the attack changed."""
        return self.clean_correct & ~self.outcome.correct

    @property
    def success_rate(self) -> float:
        attacked = int(self.clean_correct.sum())
        return float(self.fooled.sum() / attacked) if attacked else math.nan

    @property
    def success_interval(self) -> Interval:
        """The success rate over the attacked scans, with its 95% interval."""
        groups = self.outcome.groups
        attacked = self.clean_correct
        return proportion_interval(self.fooled[attacked], None if groups is None else groups[attacked])

    def size_summary(self) -> dict[str, float]:
        """Mean and median perturbation sizes and image quality over the successful examples."""
        fooled = self.fooled
        summary: dict[str, float] = {}
        for name in ("linf", "l2", "psnr", "ssim"):
            values = getattr(self, name)[fooled]
            values = values[np.isfinite(values)]
            summary[f"{name}_mean"] = float(values.mean()) if values.size else math.nan
            summary[f"{name}_median"] = float(np.median(values)) if values.size else math.nan
        return summary

    def to_dict(self) -> dict[str, Any]:
        return {
            "attack": self.spec.to_dict(),
            **self.outcome.to_dict(),
            "success_rate": self.success_rate,
            "success_rate_ci": self.success_interval.to_dict(),
            "attacked": int(self.clean_correct.sum()),
            "fooled": int(self.fooled.sum()),
            **self.size_summary(),
            "seconds": self.seconds,
        }


@dataclass
class CombinedResult:
    """Worst case per scan over every attack run at one epsilon."""

    eps: Optional[float]
    attacks: list[str]
    outcome: Outcome
    robust: np.ndarray  #: bool [N]: correct clean and under every attack

    @property
    def accuracy(self) -> float:
        return self.outcome.accuracy

    def to_dict(self) -> dict[str, Any]:
        return {"eps": self.eps, "attacks": self.attacks, **self.outcome.to_dict()}


@dataclass
class RobustnessReport:
    """Clean and attacked behaviour of one model on one set of scans."""

    model: str
    dataset: str
    synthetic: bool
    indices: np.ndarray
    clean: Outcome
    attacks: list[AttackResult]
    combined: list[CombinedResult]
    device: str
    clean_seconds: float = 0.0

    @property
    def size(self) -> int:
        return int(self.indices.size)

    def attack(self, label: str) -> AttackResult:
        for result in self.attacks:
            if result.label == label:
                return result
        raise KeyError(f"no attack labelled {label!r}; have {[result.label for result in self.attacks]}")

    def find(self, name: str, eps: Optional[float]) -> Optional[AttackResult]:
        """The first result of the registry attack ``name`` run at ``eps``, if any."""
        return next((r for r in self.attacks if r.spec.name == name and same_eps(r.spec.eps, eps)), None)

    @property
    def trained(self) -> AnswerCheck:
        """Whether the clean answers show a trained classifier (see :mod:`.degenerate`)."""
        return check_answers(self.clean.predictions, self.clean.labels)

    def restricted_to(self, indices: Optional[np.ndarray]) -> "RobustnessReport":
        """This report on a subset of its scans (dataset ``indices``, all among :attr:`indices`); the
        example scans are dropped. ``None`` or the same scans return the report itself."""
        if indices is None or np.array_equal(indices, self.indices):
            return self
        position = {int(index): row for row, index in enumerate(self.indices)}
        missing = [int(index) for index in indices if int(index) not in position]
        if missing:
            raise ValueError(f"scans {missing[:5]} are not among this report's scans")
        rows = np.array([position[int(index)] for index in indices], dtype=np.int64)
        clean = self.clean.take(rows)
        attacks = [
            AttackResult(
                spec=result.spec,
                outcome=result.outcome.take(rows),
                clean_correct=result.clean_correct[rows],
                linf=result.linf[rows],
                l2=result.l2[rows],
                psnr=result.psnr[rows],
                ssim=result.ssim[rows],
                seconds=result.seconds,
            )
            for result in self.attacks
        ]
        return RobustnessReport(
            model=self.model,
            dataset=self.dataset,
            synthetic=self.synthetic,
            indices=np.asarray(indices, dtype=np.int64),
            clean=clean,
            attacks=attacks,
            combined=combine(clean, attacks),
            device=self.device,
            clean_seconds=self.clean_seconds,
        )

    def combined_at(self, eps: Optional[float]) -> CombinedResult:
        for result in self.combined:
            if same_eps(result.eps, eps):
                return result
        raise KeyError(f"no attacks were run at eps={format_epsilon(eps)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "dataset": self.dataset,
            "synthetic": self.synthetic,
            "scans": self.size,
            "indices": self.indices.tolist(),
            "labels": self.clean.labels.tolist(),
            "classes": list(CLASSES),
            "device": self.device,
            "clean": {**self.clean.to_dict(), "seconds": self.clean_seconds},
            "trained_classifier": self.trained.to_dict(),
            "attacks": [result.to_dict() for result in self.attacks],
            "combined": [result.to_dict() for result in self.combined],
        }


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    indices: Optional[Sequence[int]],
    attacks: Sequence[SpecLike],
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: Optional[ProgressCallback] = None,
    model_name: str = "model",
    examples: int = 2,
    attack_model: Optional[nn.Module] = None,
    groups: Optional[Sequence[int] | np.ndarray] = None,
    shards: Shards = Shards(),
) -> RobustnessReport:
    """Clean accuracy and every attack in ``attacks`` over ``dataset[indices]``, batch by batch.

    The clean forward pass runs once per batch and every attack reuses it. ``examples`` fooled
    scans per attack are kept for pictures. ``device`` moves the model; by default it stays put.
    ``attack_model`` is what the attacks differentiate when it is not ``model`` itself: the
    adaptive (BPDA/EOT) view of a defended model, whose predictions are still ``model``'s.
    ``groups`` gives each scan of ``dataset`` a group id (:func:`pipeline.data.split_groups`):
    scans of one group are not independent, and every interval then resamples whole groups.
    ``shards`` splits the batches among torchrun's processes (:mod:`.shards`): each runs its own,
    and every one returns the whole report, the same as one process's (``seconds`` then add up
    every process's time).
    """
    specs = [AttackSpec.coerce(spec) for spec in attacks]
    built = [spec.build() for spec in specs]  # validate every parameter before any work
    labels = [spec.title for spec in specs]
    if len(set(labels)) != len(labels):
        raise AttackParameterError(f"two attacks share a label; give each a distinct label: {labels}")
    chosen = resolve_indices(dataset, indices)
    device = model_device(model, device)
    attacked_model = model if attack_model is None else attack_model.to(device)
    count = chosen.size
    chosen_groups = groups_of(groups, dataset, chosen)
    clean_predictions = np.zeros(count, dtype=np.int64)
    truth = np.zeros(count, dtype=np.int64)
    adversarial = np.zeros((len(specs), count), dtype=np.int64)
    clean_probabilities: Optional[np.ndarray] = None
    adversarial_probabilities: Optional[np.ndarray] = None
    sizes = {name: np.full((len(specs), count), np.nan) for name in ("linf", "l2", "psnr", "ssim")}
    seconds = np.zeros(len(specs) + 1)
    kept: list[list[Example]] = [[] for _ in specs]
    batches = shards.share(math.ceil(count / batch_size))
    total = batches * (len(specs) + 1)
    with exclusive_eval(model):
        for number, (span, x, y) in enumerate(iter_batches(dataset, chosen, batch_size, device, shards)):
            reseed((model, attacked_model), span.start)
            step = number * (len(specs) + 1)
            report(progress, step, total, f"clean, batch {number + 1}/{batches}")
            with stopwatch(device) as elapsed:
                clean_scores = probabilities(model, x)
                clean = clean_scores.argmax(dim=1)
            seconds[0] += elapsed[0]
            if clean_probabilities is None:
                classes = clean_scores.shape[1]
                clean_probabilities = np.zeros((count, classes), dtype=np.float32)
                adversarial_probabilities = np.zeros((len(specs), count, classes), dtype=np.float32)
            assert adversarial_probabilities is not None
            truth[span], clean_predictions[span] = y.cpu().numpy(), clean.cpu().numpy()
            clean_probabilities[span] = clean_scores.cpu().numpy()
            correct = clean == y
            for a, (spec, attack) in enumerate(zip(specs, built)):
                where_now = f"{spec.title}, batch {number + 1}/{batches}"
                report(progress, step + a + 1, total, where_now)
                adversarial[a, span] = clean_predictions[span]
                adversarial_probabilities[a, span] = clean_probabilities[span]
                if not bool(correct.any()):
                    continue
                x_ok, y_ok = x[correct], y[correct]
                with stopwatch(device) as elapsed:
                    # the attack's own steps move the bar, so a slow one (Square) is never silent
                    within = staged(progress, step + a + 1, total, where_now)
                    x_adv = attack(attacked_model, x_ok, y_ok, progress=within)
                    attacked_scores = probabilities(model, x_adv)
                    attacked = attacked_scores.argmax(dim=1)
                seconds[a + 1] += elapsed[0]
                where = np.flatnonzero(correct.cpu().numpy()) + span.start
                adversarial[a, where] = attacked.cpu().numpy()
                adversarial_probabilities[a, where] = attacked_scores.cpu().numpy()
                norms = batch_norms(x_adv - x_ok)
                for name, values in (
                    ("linf", norms["linf"]),
                    ("l2", norms["l2"]),
                    ("psnr", psnr(x_ok, x_adv)),
                    ("ssim", ssim(x_ok, x_adv)),
                ):
                    sizes[name][a, where] = values.cpu().numpy()
                _keep_examples(kept[a], examples, chosen, where, x_ok, x_adv, y_ok, attacked)
    if shards.active:
        found = shards.gather_rows(
            count,
            batch_size,
            {
                "truth": truth,
                "clean": clean_predictions,
                "clean_probabilities": clean_probabilities,
                "adversarial": adversarial,
                "adversarial_probabilities": adversarial_probabilities,
                **sizes,
            },
            f"{model_name}'s answers",
            axes={"adversarial": 1, "adversarial_probabilities": 1, **{name: 1 for name in sizes}},
        )
        truth, clean_predictions, adversarial = found["truth"], found["clean"], found["adversarial"]
        clean_probabilities = found["clean_probabilities"]
        adversarial_probabilities = found["adversarial_probabilities"]
        sizes = {name: found[name] for name in sizes}
        seconds = shards.total(seconds, f"{model_name}'s attack times")
        kept = _first_examples(shards.gather(kept, f"{model_name}'s example scans"), chosen, examples)
    report(progress, total, total, "done")
    clean_outcome = Outcome(clean_predictions, truth, clean_probabilities, chosen_groups)
    results = [
        AttackResult(
            spec=spec,
            outcome=Outcome(
                adversarial[a],
                truth,
                None if adversarial_probabilities is None else adversarial_probabilities[a],
                chosen_groups,
            ),
            clean_correct=clean_outcome.correct,
            **{name: values[a] for name, values in sizes.items()},
            seconds=float(seconds[a + 1]),
            examples=kept[a],
        )
        for a, spec in enumerate(specs)
    ]
    return RobustnessReport(
        model=model_name,
        dataset=str(getattr(dataset, "name", type(dataset).__name__)),
        synthetic=bool(getattr(dataset, "is_synthetic", False)),
        indices=chosen,
        clean=clean_outcome,
        attacks=results,
        combined=combine(clean_outcome, results),
        device=str(device),
        clean_seconds=float(seconds[0]),
    )


def combine(clean: Outcome, results: Sequence[AttackResult]) -> list[CombinedResult]:
    """Per epsilon, the per-scan worst case: the first attack (in run order) that fooled each scan."""
    groups: dict[Optional[float], list[AttackResult]] = {}
    for result in results:
        key = next((eps for eps in groups if same_eps(eps, result.spec.eps)), result.spec.eps)
        groups.setdefault(key, []).append(result)
    combined = []
    for eps, members in groups.items():
        predictions = clean.predictions.copy()
        scores = None if clean.probabilities is None else clean.probabilities.copy()
        robust = clean.correct.copy()
        for member in members:
            newly_fooled = robust & ~member.outcome.correct
            predictions[newly_fooled] = member.outcome.predictions[newly_fooled]
            if scores is not None and member.outcome.probabilities is not None:
                scores[newly_fooled] = member.outcome.probabilities[newly_fooled]
            robust &= member.outcome.correct
        outcome = Outcome(predictions, clean.labels, scores, clean.groups)
        combined.append(CombinedResult(eps, [m.label for m in members], outcome, robust))
    return combined


def same_eps(a: Optional[float], b: Optional[float]) -> bool:
    """Equal epsilons, allowing for 4/255 written once as a fraction and once as a decimal."""
    return a == b or (a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12))


def _first_examples(
    kept: Sequence[list[list[Example]]], chosen: np.ndarray, limit: int
) -> list[list[Example]]:
    """Per attack, the first ``limit`` fooled scans in scan order among every process's kept ones
    (each kept its own first ``limit``): the examples one process would have kept."""
    position: dict[int, int] = {}
    for row, index in enumerate(chosen.tolist()):
        position.setdefault(index, row)
    return [
        sorted((example for part in kept for example in part[a]), key=lambda e: position[e.index])[:limit]
        for a in range(len(kept[0]))
    ]


def _keep_examples(
    kept: list[Example],
    limit: int,
    chosen: np.ndarray,
    where: np.ndarray,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    attacked: torch.Tensor,
) -> None:
    """Keep the first fooled scans (up to ``limit``) for the report's pictures."""
    for row in torch.nonzero(attacked != y).flatten().tolist():
        if len(kept) >= limit:
            return
        kept.append(
            Example(
                index=int(chosen[where[row]]),
                label=int(y[row]),
                adversarial_prediction=int(attacked[row]),
                clean=x[row, 0].float().cpu().numpy(),
                adversarial=x_adv[row, 0].float().cpu().numpy(),
            )
        )
