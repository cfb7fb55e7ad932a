"""Out-of-distribution flag: is this scan unlike the scans the model learnt from?

The Mahalanobis detector of Lee et al. 2018 ("A simple unified framework for detecting
out-of-distribution samples and adversarial attacks", https://arxiv.org/abs/1807.03888), without
its input pre-processing and layer ensemble: class means of the model's penultimate features (the
input of its last linear layer) on training scans, one covariance shared by the classes, and as
score the smallest Mahalanobis distance to a class mean. The covariance is estimated with
Ledoit-Wolf shrinkage (scikit-learn), as a 512- or 2048-dimensional covariance from a few hundred
scans would otherwise be singular. The threshold is the 95th percentile of the score on the
validation split, so 5% of in-distribution scans are flagged by design (the usual TPR-95 point).

Why not the energy score (Liu et al. 2020, https://arxiv.org/abs/2010.03759), which needs only the
logits: measured on this lab's models, a mediastinal crop of pydicom's ``CT_small.dcm`` got a
*lower* energy (looks more in-distribution) than any validation scan, both for a small CNN
trained to 100% and for a weak phantom ResNet-18, while its Mahalanobis distance was 3 to 300
times the threshold. Far-from-training inputs drive logits up, which is what energy rewards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from torch import nn

from pipeline.errors import UserInputError
from pipeline.guard import exclusive_eval
from pipeline.progress import ProgressCallback, report

#: Share of validation scans scored at or below the threshold.
QUANTILE = 0.95
#: Training scans the detector is fitted on at most (evenly spread over the training split).
MAX_FIT_SCANS = 2000
METHOD = "Mahalanobis distance of the penultimate features (Lee et al. 2018)"


@dataclass(frozen=True)
class OODResult:
    """One scan's score against the threshold."""

    score: float
    threshold: float
    validation_scans: int

    @property
    def flagged(self) -> bool:
        return self.score > self.threshold

    @property
    def text(self) -> str:
        """One sentence for a reader, beside the model's answer."""
        ratio = self.score / self.threshold if self.threshold > 0 else float("inf")
        if self.flagged:
            return (
                f"This scan is unlike the scans the model learnt from (distance {ratio:.1f}× the threshold "
                f"that 95% of {self.validation_scans} validation scans stay under): its answer is not to be "
                "trusted, whatever its confidence."
            )
        return (
            f"This scan resembles the scans the model learnt from (distance {ratio:.2f}× the threshold set "
            f"on {self.validation_scans} validation scans)."
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "checked": True,
            "method": METHOD,
            "score": self.score,
            "threshold": self.threshold,
            "threshold_quantile": QUANTILE,
            "validation_scans": self.validation_scans,
            "out_of_distribution": self.flagged,
            "meaning": self.text,
        }


@dataclass
class MahalanobisDetector:
    """Class means ``[C, D]`` and the shared precision ``[D, D]`` of the penultimate features, and the
    threshold on the score; float32 CPU tensors."""

    means: torch.Tensor
    precision: torch.Tensor
    threshold: float
    validation_scans: int

    def scores(self, model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """The smallest squared Mahalanobis distance to a class mean, per scan: float ``[N]`` on the CPU.

        ``x`` is ``[N, 1, H, W]`` in ``[0, 1]`` on the model's device.
        """
        return torch.cat([self._score(features(model, chunk)) for chunk in x.split(batch_size)])

    def judge(self, model: nn.Module, x: torch.Tensor) -> OODResult:
        """The result for one scan ``[1, 1, H, W]``."""
        if x.shape[0] != 1:
            raise UserInputError(f"judge() takes one scan [1, 1, H, W], got {tuple(x.shape)}")
        return OODResult(float(self.scores(model, x)[0]), self.threshold, self.validation_scans)

    def _score(self, feature: torch.Tensor) -> torch.Tensor:
        return self.distance(feature).cpu()

    def distance(self, feature: torch.Tensor) -> torch.Tensor:
        """The smallest squared Mahalanobis distance of penultimate features ``[N, D]`` to a class mean:
        float ``[N]`` on the features' device, differentiable."""
        return self.distances(feature).amin(dim=1)

    def distances(self, feature: torch.Tensor) -> torch.Tensor:
        """The squared Mahalanobis distance of penultimate features ``[N, D]`` to each class mean: float
        ``[N, C]`` on the features' device, differentiable (the adaptive attack descends one of them).

        Raises UserInputError for features of another dimension (the detector belongs to another model).
        """
        if feature.shape[1] != self.means.shape[1]:
            raise UserInputError(
                f"the model's features have {feature.shape[1]} dimensions but the detector was fitted on "
                f"{self.means.shape[1]}; it belongs to another model"
            )
        means, precision = self.means.to(feature.device), self.precision.to(feature.device)
        centred = feature.float()[:, None, :] - means[None]
        return torch.einsum("ncd,de,nce->nc", centred, precision, centred)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"ood.means": self.means, "ood.precision": self.precision}

    def facts(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "validation_scans": self.validation_scans}

    @classmethod
    def from_parts(cls, tensors: dict[str, torch.Tensor], facts: dict[str, Any]) -> "MahalanobisDetector":
        return cls(tensors["ood.means"].float(), tensors["ood.precision"].float(), float(facts["threshold"]),
                   int(facts["validation_scans"]))


@torch.no_grad()
def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input of the model's last linear layer for a batch ``x``: float ``[N, D]``.

    Raises UserInputError for a model without a linear layer (nothing to measure a distance in).
    """
    with exclusive_eval(model):
        return penultimate(model, x)[0].detach()


def penultimate(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The penultimate features ``[N, D]`` (the input of the model's last linear layer) and the logits
    ``[N, C]`` of one forward pass of ``x`` ``[N, 1, H, W]``; both differentiable with respect to ``x``
    where autograd is on. The caller sets the model's mode (eval, for an attack or a detector).

    Raises UserInputError for a model without a linear layer (nothing to measure a distance in).
    """
    linear = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linear:
        raise UserInputError(f"{type(model).__name__} has no linear layer whose input could be measured")
    seen: list[torch.Tensor] = []
    handle = linear[-1].register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return seen[-1].flatten(1), logits


def fit_scans(indices: np.ndarray, limit: int = MAX_FIT_SCANS) -> np.ndarray:
    """At most ``limit`` of the training scans ``indices``, evenly spread (all when there are fewer)."""
    indices = np.asarray(indices)
    return indices[np.linspace(0, len(indices) - 1, min(len(indices), limit)).astype(int)]


def fit_detector(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    *,
    batch_size: int = 64,
    quantile: float = QUANTILE,
    progress: Optional[ProgressCallback] = None,
) -> MahalanobisDetector:
    """Fit class means and the shared covariance on ``x_train`` (labels ``y_train``), the threshold on
    ``x_val``: the ``quantile`` of its scores (0.95 flags 5% of clean validation scans).

    Scans are ``[N, 1, H, W]`` in ``[0, 1]`` on the model's device; every class needs a training scan.
    """
    if len(x_val) == 0:
        raise UserInputError("the out-of-distribution threshold needs validation scans; this split has none")
    chunks = list(x_train.split(batch_size))
    found = []
    for number, chunk in enumerate(chunks):
        found.append(features(model, chunk).float().cpu())
        report(progress, number + 1, len(chunks) + 1, "features of the training scans")
    train_features = torch.cat(found)
    labels = y_train.cpu()
    classes = int(labels.max()) + 1
    missing = [c for c in range(classes) if not bool((labels == c).any())]
    if missing:
        raise UserInputError(f"no training scans of class {missing}; the detector needs every class")
    means = torch.stack([train_features[labels == c].mean(dim=0) for c in range(classes)])
    centred = (train_features - means[labels]).double().numpy()
    precision = torch.from_numpy(LedoitWolf(assume_centered=True).fit(centred).precision_).float()
    detector = MahalanobisDetector(means, precision, float("inf"), len(x_val))
    validation = detector.scores(model, x_val, batch_size)
    report(progress, len(chunks) + 1, len(chunks) + 1, "threshold on the validation scans")
    detector.threshold = float(np.quantile(validation.double().numpy(), quantile))
    return detector
