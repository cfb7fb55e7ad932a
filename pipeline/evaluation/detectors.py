"""Adversarial-example detectors, each measured against PGD and against the attack that knows it.

A detector answers "is this scan adversarial?" with a score and a threshold; the threshold is set
on clean validation scans so that a fixed share of them (5% by default) is flagged: the
false-positive rate a clinic would live with. Two detectors:

- **Mahalanobis** (Lee, Lee, Lee & Shin 2018, "A simple unified framework for detecting
  out-of-distribution samples and adversarial attacks", https://arxiv.org/abs/1807.03888): the
  smallest Mahalanobis distance of the model's penultimate features to a class mean, the lab's
  out-of-distribution detector (:mod:`.ood`) reused as it is, thresholded at the same quantile.
- **Feature squeezing** (Xu, Evans & Qi 2018, "Feature squeezing: detecting adversarial examples
  in deep neural networks", https://arxiv.org/abs/1704.01155): the largest L1 distance between
  the softmax of the scan and that of a squeezed copy, over two squeezers: bit-depth reduction and
  median smoothing (:mod:`.defenses`' input transformations, reused).

Each is evaluated three ways on the held-out scans (:func:`evaluate_detector`): the false-positive
rate on the clean scans (near the target when the threshold generalises), the detection rate of
PGD's successful scans, and that of the adaptive attack's
(:class:`pipeline.attacks.adaptive.DetectorAwarePGD` on :class:`Scored`: the classifier's loss and
the detector's score optimised together, the detector's non-differentiable squeezers through
BPDA), with the share of scans both misclassified and undetected before and after adaptation.
Detectors that look strong against PGD and fall to the adaptive attack are the rule, not the
exception (Carlini & Wagner 2017, https://arxiv.org/abs/1705.07263; Tramèr et al. 2020,
https://arxiv.org/abs/2002.08347); the verdict table (:mod:`.verdict`) shows both.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from pipeline.attacks import get_attack
from pipeline.attacks.adaptive import DetectorAwarePGD
from pipeline.errors import UserInputError
from pipeline.evaluation.batches import groups_of, iter_batches, model_device, resolve_indices
from pipeline.evaluation.defenses import BitDepthReduction, Defended, InputTransform, MedianSmoothing
from pipeline.evaluation.intervals import Interval, proportion_interval
from pipeline.evaluation.ood import MahalanobisDetector, fit_detector, penultimate
from pipeline.guard import exclusive_eval
from pipeline.progress import ProgressCallback, report, staged
from pipeline.units import format_epsilon, format_share

#: Share of clean validation scans a detector's threshold flags: its false-positive rate by design.
FALSE_POSITIVE_RATE = 0.05
#: The adaptive attack's steps per weight λ, as a multiple of PGD's: its steps are a quarter of PGD's
#: (ε/16), so it gets four times as many to travel as far.
ADAPTIVE_STEPS = 4


class Detector:
    """A score per scan (higher: more likely adversarial) and the threshold above which a scan is flagged."""

    key: str = "detector"  #: the name on the command line
    title: str = "detector"
    paper: str = ""
    adaptive_attack: str = "PGD on the classifier's loss minus the detector's score"
    threshold: float = math.inf
    #: Share of clean validation scans the threshold was set to flag, and how many there were.
    false_positive_rate: float = FALSE_POSITIVE_RATE
    validation_scans: int = 0

    def logits_and_scores(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits ``[N, C]`` and the scores float ``[N, K]`` of scans ``x`` ``[N, 1, H, W]`` in [0, 1],
        from the model as it is (the caller sets eval mode); differentiable with respect to ``x`` where
        autograd is on, non-differentiable steps through BPDA (their values stay exact). The score
        is the row's minimum: ``K`` is ``C`` where it is a minimum over classes (one column per
        class, which the adaptive attack needs), else 1."""
        raise NotImplementedError

    def logits_and_score(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits ``[N, C]`` and the score float ``[N]`` (higher: more likely adversarial)."""
        logits, scores = self.logits_and_scores(model, x)
        return logits, scores.amin(dim=1)

    @torch.no_grad()
    def scores(self, model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """The score of every scan of ``x`` (on the model's device): float ``[N]`` on the CPU."""
        with exclusive_eval(model):
            found = [self.logits_and_score(model, chunk)[1].float().cpu() for chunk in x.split(batch_size)]
        return torch.cat(found)

    def flags(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Bool ``[N]`` on the CPU: the scans the detector flags as adversarial."""
        return self.scores(model, x) > self.threshold

    def calibrate(self, model: nn.Module, x_val: torch.Tensor, false_positive_rate: float) -> None:
        """Set the threshold so that ``false_positive_rate`` of the clean validation scans ``x_val`` are
        flagged (the ``1 - rate`` quantile of their scores). Raises UserInputError without scans."""
        if len(x_val) == 0:
            raise UserInputError("a detector's threshold needs clean validation scans; this split has none")
        check_rate(false_positive_rate)
        values = self.scores(model, x_val).double().numpy()
        self.threshold = float(np.quantile(values, 1.0 - false_positive_rate))
        self.false_positive_rate, self.validation_scans = false_positive_rate, len(x_val)

    def facts(self) -> dict[str, Any]:
        return {
            "detector": self.key,
            "title": self.title,
            "paper": self.paper,
            "threshold": self.threshold,
            "false_positive_rate": self.false_positive_rate,
            "validation_scans": self.validation_scans,
        }


class MahalanobisDetection(Detector):
    """The out-of-distribution detector of :mod:`.ood` as an adversarial-example detector: score the
    smallest squared Mahalanobis distance of the penultimate features to a class mean."""

    key = "mahalanobis"
    title = "Mahalanobis distance of the penultimate features"
    paper = "Lee et al. 2018, https://arxiv.org/abs/1807.03888"
    adaptive_attack = "PGD on the classifier's margin minus the Mahalanobis distance (both differentiable)"

    def __init__(self, fitted: MahalanobisDetector, false_positive_rate: float = FALSE_POSITIVE_RATE) -> None:
        self.fitted = fitted
        self.threshold, self.validation_scans = fitted.threshold, fitted.validation_scans
        self.false_positive_rate = false_positive_rate

    def logits_and_scores(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature, logits = penultimate(model, x)
        return logits, self.fitted.distances(feature)


class FeatureSqueezing(Detector):
    """Xu et al. 2018: the largest L1 distance between ``softmax(model(x))`` and ``softmax(model(s(x)))``
    over the squeezers ``s``: ``bits``-bit depth reduction and a ``kernel`` x ``kernel`` median.

    Raises UserInputError for a bit depth outside 1-8 or a kernel outside 2-15 (the squeezers' own checks).
    """

    key = "squeeze"
    paper = "Xu et al. 2018, https://arxiv.org/abs/1704.01155"
    adaptive_attack = ("PGD on the classifier's margin minus the squeezing distance, rounding through BPDA "
                       "(identity backward)")

    def __init__(self, bits: int = 5, kernel: int = 2) -> None:
        self.squeezers: list[InputTransform] = [BitDepthReduction(bits), MedianSmoothing(kernel)]
        self.bits, self.kernel = bits, kernel
        self.title = f"feature squeezing ({bits}-bit depth, {kernel}x{kernel} median)"

    def logits_and_scores(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        plain = F.softmax(logits.float(), dim=1)
        distances = [
            (plain - F.softmax(Defended(model, squeezer, adaptive=True)(x).float(), dim=1)).abs().sum(dim=1)
            for squeezer in self.squeezers
        ]
        return logits, torch.stack(distances).amax(dim=0)[:, None]

    def facts(self) -> dict[str, Any]:
        return {**super().facts(), "bits": self.bits, "kernel": self.kernel}

    @classmethod
    def from_facts(cls, facts: Mapping[str, Any]) -> "FeatureSqueezing":
        """The calibrated detector :meth:`facts` describes (KeyError or ValueError for damaged facts)."""
        detector = cls(int(facts["bits"]), int(facts["kernel"]))
        detector.threshold = float(facts["threshold"])
        detector.false_positive_rate = float(facts["false_positive_rate"])
        detector.validation_scans = int(facts["validation_scans"])
        return detector


class Scored(nn.Module):
    """The classifier with its detector, for the adaptive attack: ``forward`` returns the logits and
    leaves the scores over the threshold in ``relative_score`` (float ``[N, K]``, flagged where the
    row's minimum is above 1),
    differentiable with respect to the input (:class:`pipeline.attacks.adaptive.ScoredModel`)."""

    def __init__(self, model: nn.Module, detector: Detector) -> None:
        super().__init__()
        self.model = model
        self.detector = detector
        self.relative_score = torch.zeros(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, scores = self.detector.logits_and_scores(self.model, x)
        self.relative_score = scores / max(self.detector.threshold, 1e-12)
        return logits


@dataclass(frozen=True)
class ScanDetection:
    """One detector's verdict on one scan before and after an attack (the Attack page's line)."""

    detector: str  #: the detector's title
    paper: str
    threshold: float
    clean: float  #: score of the original scan
    attacked: float  #: score of the attacked scan
    false_positive_rate: float  #: share of clean validation scans the threshold flags
    validation_scans: int

    @property
    def flagged_clean(self) -> bool:
        return self.clean > self.threshold

    @property
    def flagged_attacked(self) -> bool:
        return self.attacked > self.threshold

    @property
    def text(self) -> str:
        """One sentence for a reader."""
        ratio = self.attacked / self.threshold if self.threshold > 0 else math.inf
        attacked = "flags" if self.flagged_attacked else "does not flag"
        clean = "flagged" if self.flagged_clean else "not flagged"
        return (
            f"{self.detector[0].upper()}{self.detector[1:]} ({self.paper.split(',')[0]}) {attacked} the "
            f"attacked scan (score {ratio:.2f}× its threshold, set to flag {self.false_positive_rate:.0%} of "
            f"{self.validation_scans} clean validation scans); the original scan is {clean}. An attack "
            "that knows the detector can often pass it: see the Evaluate page's detector section."
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "paper": self.paper,
            "threshold": self.threshold,
            "score_clean": self.clean,
            "score_attacked": self.attacked,
            "flagged_clean": self.flagged_clean,
            "flagged_attacked": self.flagged_attacked,
            "false_positive_rate": self.false_positive_rate,
            "validation_scans": self.validation_scans,
            "meaning": self.text,
        }


def check_scan(detector: Detector, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor) -> ScanDetection:
    """``detector`` on one scan ``x`` and its attacked version ``x_adv`` (each ``[1, 1, H, W]`` in [0, 1]
    on the model's device)."""
    clean, attacked = (float(value) for value in detector.scores(model, torch.cat([x, x_adv])))
    return ScanDetection(detector.title, detector.paper, detector.threshold, clean, attacked,
                         detector.false_positive_rate, detector.validation_scans)


#: The detectors by the name the command line and the settings use.
DETECTORS = {"mahalanobis": MahalanobisDetection, "squeeze": FeatureSqueezing}


def detector_names(names: str | Sequence[str]) -> tuple[str, ...]:
    """Names as given (comma-separated text or a list), lower-cased and checked; UserInputError names
    an unknown one and the choices."""
    items = names.split(",") if isinstance(names, str) else names
    chosen = tuple(dict.fromkeys(str(name).strip().lower() for name in items if str(name).strip()))
    unknown = [name for name in chosen if name not in DETECTORS]
    if unknown:
        raise UserInputError(f"unknown detector {', '.join(unknown)}; choose from {', '.join(DETECTORS)}")
    return chosen


def check_rate(false_positive_rate: float) -> float:
    """The false-positive rate, refused outside (0, 0.5] with UserInputError."""
    if not 0.0 < false_positive_rate <= 0.5:
        raise UserInputError(
            "a detector's false-positive rate is a share of clean scans in (0, 0.5], got "
            f"{false_positive_rate}; 5% (0.05) is usual"
        )
    return false_positive_rate


def fit(
    name: str,
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    *,
    false_positive_rate: float = FALSE_POSITIVE_RATE,
    progress: Optional[ProgressCallback] = None,
) -> Detector:
    """The detector ``name`` for ``model``: fitted on training scans ``x_train`` (labels ``y_train``; only
    Mahalanobis uses them), thresholded on clean validation scans ``x_val`` to flag
    ``false_positive_rate`` of them. Scans ``[N, 1, H, W]`` in [0, 1] on the model's device."""
    (name,) = detector_names([name])
    check_rate(false_positive_rate)
    if name == "mahalanobis":
        fitted = fit_detector(model, x_train, y_train, x_val, quantile=1.0 - false_positive_rate,
                              progress=progress)
        return MahalanobisDetection(fitted, false_positive_rate)
    detector = FeatureSqueezing()
    detector.calibrate(model, x_val, false_positive_rate)
    report(progress, 1, 1, "threshold on the validation scans")
    return detector


#: The three conditions a detector is measured under, in the order the report shows them.
CONDITIONS = ("clean", "pgd", "adaptive")


@dataclass
class DetectorResult:
    """One detector on one model's held-out scans: per scan (in the order of ``indices``) the
    prediction and the flag, clean, under PGD and under the adaptive attack. Scans the model gets
    wrong clean are not attacked: their attacked prediction and flag are the clean ones."""

    detector: dict[str, Any]  #: :meth:`Detector.facts`: name, title, paper, threshold, target rate
    eps: float  #: the L∞ budget of both attacks, image scale
    steps: int
    attack: str  #: PGD in words
    adaptive_attack: str  #: the adaptive attack in words
    indices: np.ndarray  #: int [N]: dataset index of each scan
    labels: np.ndarray  #: int [N]
    predictions: dict[str, np.ndarray]  #: per condition, int [N]
    flagged: dict[str, np.ndarray]  #: per condition, bool [N]
    groups: Optional[np.ndarray] = None  #: int [N], scans of one group are not independent
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return str(self.detector["title"])

    @property
    def scans(self) -> int:
        return int(self.labels.size)

    def _share(self, hits: np.ndarray, where: Optional[np.ndarray] = None) -> Interval:
        if where is None:
            return proportion_interval(hits, self.groups)
        return proportion_interval(hits[where], None if self.groups is None else self.groups[where])

    @property
    def false_positives(self) -> Interval:
        """Share of the clean held-out scans flagged (the threshold was set on validation scans)."""
        return self._share(self.flagged["clean"])

    def fooled(self, condition: str) -> np.ndarray:
        """Bool [N]: scans right when clean that the attack of ``condition`` made wrong."""
        right = self.predictions["clean"] == self.labels
        return right & (self.predictions[condition] != self.labels)

    def detection(self, condition: str) -> Interval:
        """Share of the attack's successful scans (right when clean, wrong after) that are flagged."""
        return self._share(self.flagged[condition], self.fooled(condition))

    def missed(self, condition: str) -> Interval:
        """Share of all scans that are misclassified and not flagged: a wrong answer let through."""
        return self._share((self.predictions[condition] != self.labels) & ~self.flagged[condition])

    def accuracy(self, condition: str) -> float:
        """Share of scans answered right or flagged (a flagged scan is not trusted): 1 − missed."""
        return 1.0 - self.missed(condition).estimate

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.detector,
            "eps": self.eps,
            "steps": self.steps,
            "attack": self.attack,
            "adaptive_attack": self.adaptive_attack,
            "scans": self.scans,
            "false_positives": self.false_positives.to_dict(),
            "clean_accuracy": float(np.mean(self.predictions["clean"] == self.labels)),
            "detection": {c: self.detection(c).to_dict() for c in CONDITIONS[1:]},
            "missed": {c: self.missed(c).to_dict() for c in CONDITIONS},
            "fooled": {c: int(self.fooled(c).sum()) for c in CONDITIONS[1:]},
            "indices": self.indices.tolist(),
            "predictions": {c: values.tolist() for c, values in self.predictions.items()},
            "flagged": {c: values.tolist() for c, values in self.flagged.items()},
            "seconds": self.seconds,
        }


def evaluate_detector(
    model: nn.Module,
    detector: Detector,
    dataset: Dataset,
    indices: Optional[Sequence[int]],
    eps: float,
    *,
    steps: int = 10,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    groups: Optional[Sequence[int] | np.ndarray] = None,
    progress: Optional[ProgressCallback] = None,
) -> DetectorResult:
    """Flag rates of ``detector`` on ``dataset[indices]``, clean, under PGD (``eps``, ``steps``, run to
    its end: stopping at the boundary would hide PGD's usual overshoot from the detector) and
    under :class:`DetectorAwarePGD` with the same budget and :data:`ADAPTIVE_STEPS` times ``steps``
    for each weight λ it tries. Only the scans the model gets right clean are attacked."""
    started = time.perf_counter()
    chosen = resolve_indices(dataset, indices)
    device = model_device(model, device)
    pgd = get_attack("pgd", eps=eps, steps=steps)
    adaptive = DetectorAwarePGD(eps=eps, steps=ADAPTIVE_STEPS * steps, early_stop=True)
    scored = Scored(model, detector)
    count = chosen.size
    labels = np.zeros(count, dtype=np.int64)
    predictions = {c: np.zeros(count, dtype=np.int64) for c in CONDITIONS}
    flagged = {c: np.zeros(count, dtype=bool) for c in CONDITIONS}
    batches = math.ceil(count / batch_size)
    for number, (span, x, y) in enumerate(iter_batches(dataset, chosen, batch_size, device)):
        step = number * 3
        report(progress, step, 3 * batches, f"{detector.key}: clean, batch {number + 1}/{batches}")
        labels[span] = y.cpu().numpy()
        clean, clean_flags = _answers(model, detector, x)
        right = clean == y.cpu()
        for condition in CONDITIONS:
            predictions[condition][span], flagged[condition][span] = clean.numpy(), clean_flags.numpy()
        if not bool(right.any()):
            continue
        where = np.flatnonzero(right.numpy()) + span.start
        x_ok, y_ok = x[right.to(x.device)], y[right.to(y.device)]
        for offset, (condition, attack, target) in enumerate(
            (("pgd", pgd, model), ("adaptive", adaptive, scored)), start=1
        ):
            what = f"{detector.key}: {attack.title}, batch {number + 1}/{batches}"
            x_adv = attack(target, x_ok, y_ok, progress=staged(progress, step + offset, 3 * batches, what))
            answers, flags = _answers(model, detector, x_adv)
            predictions[condition][where], flagged[condition][where] = answers.numpy(), flags.numpy()
    report(progress, 1, 1, f"{detector.key}: done")
    return DetectorResult(
        detector=detector.facts(),
        eps=float(eps),
        steps=steps,
        attack=f"{pgd.title} ε={format_epsilon(eps)}, {steps} steps, blind to the detector",
        adaptive_attack=(
            f"{detector.adaptive_attack}, ε={format_epsilon(eps)}, {adaptive.steps} steps for each λ of "
            + ", ".join(f"{w:g}" for w in adaptive.weights)
        ),
        indices=chosen,
        labels=labels,
        predictions=predictions,
        flagged=flagged,
        groups=groups_of(groups, dataset, chosen),
        seconds=time.perf_counter() - started,
    )


def _answers(model: nn.Module, detector: Detector, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions (int64 [N]) and flags (bool [N]) on the CPU, from one scoring pass."""
    with exclusive_eval(model), torch.no_grad():
        logits, score = detector.logits_and_score(model, x)
    return logits.argmax(dim=1).cpu(), score.float().cpu() > detector.threshold


def fit_detectors(
    names: Sequence[str],
    model: nn.Module,
    dataset: Dataset,
    train: Sequence[int],
    validation: Sequence[int],
    *,
    false_positive_rate: float = FALSE_POSITIVE_RATE,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: Optional[ProgressCallback] = None,
) -> list[Detector]:
    """The detectors ``names`` fitted on ``dataset[train]`` and thresholded on ``dataset[validation]``
    (dataset indices; the evaluation's scans must be neither). Raises UserInputError without
    validation scans."""
    device = model_device(model, device)
    x_train, y_train = _stack(dataset, resolve_indices(dataset, train), batch_size, device)
    x_val, _ = _stack(dataset, resolve_indices(dataset, validation), batch_size, device)
    return [
        fit(name, model, x_train, y_train, x_val, false_positive_rate=false_positive_rate,
            progress=staged(progress, number, len(names), f"fitting {name}"))
        for number, name in enumerate(names)
    ]


def _stack(dataset: Dataset, indices: np.ndarray, batch_size: int,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(iter_batches(dataset, indices, batch_size, device))
    return torch.cat([x for _, x, _ in batches]), torch.cat([y for _, _, y in batches]).cpu()


#: The detector table's columns, as the HTML report and the dashboard show them.
DETECTOR_COLUMNS = (
    "model",
    "detector",
    "false positives (clean)",
    "detected: PGD",
    "detected: adaptive",
    "wrong and undetected: PGD",
    "wrong and undetected: adaptive",
)


def detector_table(models: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Display rows of :data:`DETECTOR_COLUMNS` from saved models (``report.json``'s ``models``, each
    with its ``detectors``): one formatting for the HTML report and the dashboard."""
    rows = []
    for entry in models:
        for saved in entry.get("detectors") or []:
            shown = {key: Interval.from_dict(value) for key, value in saved["detection"].items()}
            missed = {key: Interval.from_dict(value) for key, value in saved["missed"].items()}
            fooled = saved["fooled"]
            rows.append(
                {
                    "model": str(entry["name"]),
                    "detector": f"{saved['title']} ({saved['paper'].split(',')[0]})",
                    "false positives (clean)": (
                        f"{Interval.from_dict(saved['false_positives']).format()}; target "
                        f"{saved['false_positive_rate']:.0%} on {saved['validation_scans']} validation scans"
                    ),
                    **{
                        f"detected: {c}": f"{shown[key].format()} of {fooled[key]} fooled"
                        for c, key in (("PGD", "pgd"), ("adaptive", "adaptive"))
                    },
                    **{
                        f"wrong and undetected: {c}": missed[key].format()
                        for c, key in (("PGD", "pgd"), ("adaptive", "adaptive"))
                    },
                }
            )
    return rows


#: Under the table, in the HTML report and on the dashboard.
DETECTOR_NOTE = (
    "Each detector's threshold flags a fixed share of clean validation scans (its false-positive rate); "
    "the clean column is that rate on the held-out scans. 'Detected' is the share of an attack's "
    "successful scans the detector flags; 'wrong and undetected' the share of all scans whose answer is "
    "wrong and not flagged. PGD is blind to the detector; the adaptive attack optimises the classifier's "
    "loss and the detector's score together (Carlini & Wagner 2017; Tramèr et al. 2020): only its figures "
    "say what the detector is worth."
)


def detection_sentence(saved: Mapping[str, Any]) -> str:
    """One sentence on a saved detector result: how detection changed when the attack knew the detector."""
    scans = int(saved["scans"])
    before, after = (Interval.from_dict(saved["detection"][c]).estimate for c in ("pgd", "adaptive"))
    missed = [Interval.from_dict(saved["missed"][c]).estimate for c in ("pgd", "adaptive")]
    return (
        f"{saved['title']} flags {_rate(before)} of PGD's successful scans but {_rate(after)} of the "
        f"adaptive attack's; wrong answers let through rise from {format_share(missed[0], scans)} to "
        f"{format_share(missed[1], scans)}."
    )


def _rate(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:.0%}"


__all__ = [
    "DETECTORS",
    "DETECTOR_COLUMNS",
    "DETECTOR_NOTE",
    "Detector",
    "DetectorResult",
    "FALSE_POSITIVE_RATE",
    "FeatureSqueezing",
    "MahalanobisDetection",
    "ScanDetection",
    "Scored",
    "check_scan",
    "detection_sentence",
    "detector_names",
    "detector_table",
    "evaluate_detector",
    "fit",
    "fit_detectors",
]
