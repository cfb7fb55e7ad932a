"""How well a membership score tells members from non-members: ROC AUC and TPR at low FPR, with intervals.

A membership attack gives every candidate scan a score (higher: more likely a training member).
Carlini et al. 2022 ("Membership Inference Attacks From First Principles",
https://arxiv.org/abs/2112.03570) argue that the area under the ROC curve averages over thresholds
no attacker would use, and that what matters is the true-positive rate at a low false-positive rate
(1% and 0.1%): how many members are exposed while almost no non-member is accused. Both are given.

Intervals are 95% percentile-bootstrap intervals (:func:`pipeline.evaluation.intervals.bootstrap_interval`)
over the candidates, or over their groups (slices of one patient, near-duplicates) where the split
grouped them, each resample re-running the whole ROC computation with the resample's weights. With
``n`` non-members no false-positive rate between 0 and ``1/n`` can be observed: below that floor the
TPR reported is the TPR at zero false positives (its :attr:`RocSummary.fpr_floor` says where it lies).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, Mapping, Optional, Sequence

import numpy as np

from pipeline.errors import UserInputError
from pipeline.evaluation.intervals import BOOTSTRAP, GROUP_BOOTSTRAP, Interval, bootstrap_interval, dense_groups

#: The false-positive rates the field reports the true-positive rate at (Carlini et al. 2022).
FPR_TARGETS: Final[tuple[float, ...]] = (0.01, 0.001)


@dataclass(frozen=True)
class RocSummary:
    """One membership score judged against the truth: AUC, TPR at each of :data:`FPR_TARGETS`, the curve.

    ``auc`` and each ``tpr`` are fractions with their 95% bootstrap intervals; ``fpr`` and
    ``tpr_curve`` are the ROC curve's points (float, from (0, 0) to (1, 1)); ``fpr_floor`` is
    ``1 / non_members``, the lowest false-positive rate these candidates can show.
    """

    auc: Interval
    tpr: Mapping[float, Interval]
    fpr: tuple[float, ...]
    tpr_curve: tuple[float, ...]
    members: int
    non_members: int

    @property
    def fpr_floor(self) -> float:
        return 1.0 / self.non_members if self.non_members else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "auc": self.auc.to_dict(),
            "tpr": [{"fpr": fpr, **interval.to_dict()} for fpr, interval in self.tpr.items()],
            "fpr": list(self.fpr),
            "tpr_curve": list(self.tpr_curve),
            "members": self.members,
            "non_members": self.non_members,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RocSummary:
        """The summary :meth:`to_dict` wrote (a saved report's)."""
        return cls(
            auc=Interval.from_dict(data["auc"]),
            tpr={float(item["fpr"]): Interval.from_dict(item) for item in data["tpr"]},
            fpr=tuple(float(v) for v in data["fpr"]),
            tpr_curve=tuple(float(v) for v in data["tpr_curve"]),
            members=int(data["members"]),
            non_members=int(data["non_members"]),
        )


def roc_summary(
    scores: Sequence[float] | np.ndarray,
    is_member: Sequence[bool] | np.ndarray,
    groups: Optional[Sequence[int] | np.ndarray] = None,
    *,
    fpr_targets: Sequence[float] = FPR_TARGETS,
    seed: int = 0,
) -> RocSummary:
    """The ROC of ``scores`` (float ``[N]``, higher: member) against ``is_member`` (bool ``[N]``).

    ``groups`` (int ``[N]``) marks candidates that are not independent; the bootstrap then resamples
    whole groups (``seed`` fixes its resamples). Raises :class:`UserInputError` when the candidates
    lack members or non-members, or when a score is not finite.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    members = np.asarray(is_member, dtype=bool).reshape(-1)
    if scores.size != members.size:
        raise UserInputError(f"got {scores.size} scores for {members.size} candidates; give one per candidate")
    if not members.any() or members.all():
        raise UserInputError("a membership attack is judged on members and non-members together; both are needed")
    if not np.isfinite(scores).all():
        raise UserInputError("membership scores must be finite numbers; a model gave NaN or infinite outputs")
    ids = dense_groups(groups, scores.size)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_members = scores[order], members[order]
    # the last candidate of each run of equal scores: a threshold separates whole runs only
    ends = np.flatnonzero(np.append(sorted_scores[1:] != sorted_scores[:-1], True))

    def curves(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """fpr, tpr ``[R, K + 1]`` for weights ``[R, N]`` (in the candidates' own order)."""
        weighted = weights[:, order]
        positives = np.cumsum(weighted * sorted_members, axis=1)[:, ends]
        negatives = np.cumsum(weighted * ~sorted_members, axis=1)[:, ends]
        zeros = np.zeros((weights.shape[0], 1))
        tpr = np.hstack([zeros, positives / positives[:, -1:]])
        fpr = np.hstack([zeros, negatives / negatives[:, -1:]])
        return fpr, tpr

    def auc(weights: np.ndarray) -> np.ndarray:
        fpr, tpr = curves(weights)
        return (np.diff(fpr, axis=1) * (tpr[:, 1:] + tpr[:, :-1]) / 2).sum(axis=1)

    def tpr_at(target: float):
        def statistic(weights: np.ndarray) -> np.ndarray:
            fpr, tpr = curves(weights)
            return np.where(fpr <= target + 1e-12, tpr, 0.0).max(axis=1)

        return statistic

    resampled = np.arange(scores.size) if ids is None else ids
    method, count = (BOOTSTRAP, None) if ids is None else (GROUP_BOOTSTRAP, int(ids.max()) + 1)
    ones = np.ones((1, scores.size))

    def judged(statistic: Any) -> Interval:
        low, high = bootstrap_interval(statistic, resampled, seed=seed)
        return Interval(float(statistic(ones)[0]), low, high, method, int(scores.size), count)

    fpr, tpr = curves(ones)
    return RocSummary(
        auc=judged(auc),
        tpr={float(target): judged(tpr_at(float(target))) for target in fpr_targets},
        fpr=tuple(round(float(v), 6) for v in fpr[0]),
        tpr_curve=tuple(round(float(v), 6) for v in tpr[0]),
        members=int(members.sum()),
        non_members=int((~members).sum()),
    )
