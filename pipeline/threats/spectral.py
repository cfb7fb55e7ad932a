"""Spectral signatures: finding poisoned scans in a training set from the trained model's features.

Tran, Li and Madry, "Spectral Signatures in Backdoor Attacks", NeurIPS 2018,
https://arxiv.org/abs/1811.00636. A backdoor leaves a trace in the learnt representation: within the
class the poisoned scans are labelled as, their penultimate features differ from the clean scans'
along one direction, so they stand out along the top singular vector of the class's centred
features. Per class ``y``, with ``R`` the features ``[n_y, D]`` of its training scans and ``v`` the top
right singular vector of ``R - mean(R)``, a scan's outlier score is ``((r - mean(R)) · v)²``.

The paper removes, in each class, the ``1.5 ε`` highest scores, ``ε`` being an upper bound on the
number of poisoned scans. Here the scores are first made comparable across classes (each divided by
its class's median score) and the ``1.5 P`` highest over the whole training set are flagged, ``P``
being the defender's bound on the number of poisoned scans (``removal`` = 1.5 as in the paper; the
experiment passes the true count, as the paper assumes ``ε`` known up to that factor): a class without
a backdoor then gives up few flags. Precision and recall are measured against the scans really
poisoned; a detector that flags at random has precision ``P / N`` and recall ``flagged / N`` (chance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, Optional

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from pipeline.errors import UserInputError
from pipeline.evaluation.intervals import Interval, wilson
from pipeline.evaluation.ood import features
from pipeline.progress import ProgressCallback, report

METHOD: Final[str] = "spectral signatures (Tran et al. 2018)"
#: Flag this many times the defender's bound on the number of poisoned scans (the paper's 1.5).
REMOVAL: Final[float] = 1.5


@dataclass(frozen=True)
class Detection:
    """Which training scans the spectral-signature detector flags, and how right it is.

    ``scores`` float ``[N]`` (each class's outlier scores over its median: comparable across classes),
    ``flagged`` and ``poisoned`` bool ``[N]`` (flagged by the detector; poisoned in truth), in the order
    of the training scans given. ``precision`` is the share of flagged scans that were poisoned,
    ``recall`` the share of poisoned scans flagged (Wilson 95% intervals); ``auc`` the ROC AUC of the
    score for poisoned against clean scans (0.5: no better than chance), NaN without both kinds.
    """

    scores: np.ndarray
    flagged: np.ndarray
    poisoned: np.ndarray
    precision: Interval
    recall: Interval
    auc: float
    removal: float
    method: str = METHOD

    @property
    def chance_precision(self) -> float:
        """What a detector flagging as many scans at random would reach: the poisoned share."""
        return float(self.poisoned.mean()) if self.poisoned.size else math.nan

    @property
    def chance_recall(self) -> float:
        """What a detector flagging as many scans at random would reach: the flagged share."""
        return float(self.flagged.mean()) if self.flagged.size else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "removal": self.removal,
            "scans": int(self.poisoned.size),
            "poisoned": int(self.poisoned.sum()),
            "flagged": int(self.flagged.sum()),
            "true_positives": int((self.flagged & self.poisoned).sum()),
            "precision": self.precision.to_dict(),
            "recall": self.recall.to_dict(),
            "chance_precision": self.chance_precision,
            "chance_recall": self.chance_recall,
            "auc": self.auc,
            "scores": [round(float(value), 6) for value in self.scores],
            "flagged_mask": [bool(value) for value in self.flagged],
            "poisoned_mask": [bool(value) for value in self.poisoned],
        }


def outlier_scores(representations: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each scan's squared projection on its class's top singular vector, over the class's median score.

    ``representations`` float ``[N, D]``, ``labels`` int ``[N]``; returns float64 ``[N]``, zero for a
    class of one scan (nothing to stand out from).
    """
    representations = np.asarray(representations, dtype=np.float64)
    labels = np.asarray(labels)
    if representations.ndim != 2 or labels.shape != (representations.shape[0],):
        raise UserInputError(
            f"spectral signatures need features [N, D] and one label per scan, got {representations.shape} "
            f"and {labels.shape}"
        )
    scores = np.zeros(labels.size)
    for label in np.unique(labels):
        members = labels == label
        if members.sum() < 2:
            continue
        centred = representations[members] - representations[members].mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        raw = (centred @ vt[0]) ** 2
        scores[members] = raw / max(float(np.median(raw)), 1e-12)
    return scores


def detect(
    scores: np.ndarray, poisoned: np.ndarray, bound: int, *, removal: float = REMOVAL
) -> Detection:
    """Flag the ``removal × bound`` highest ``scores`` (at most all) and measure against ``poisoned``.

    ``bound`` is the defender's bound on how many scans are poisoned (at least 1).
    """
    scores = np.asarray(scores, dtype=np.float64)
    poisoned = np.asarray(poisoned, dtype=bool)
    if scores.shape != poisoned.shape or scores.ndim != 1:
        raise UserInputError("the detection needs one score and one truth per training scan")
    if bound < 1 or not removal > 0:
        raise UserInputError(f"the detection needs a bound of at least 1 poisoned scan and removal > 0, got "
                             f"{bound} and {removal}")
    count = min(scores.size, math.ceil(removal * bound))
    flagged = np.zeros(scores.size, dtype=bool)
    flagged[np.argsort(-scores, kind="stable")[:count]] = True
    hits = int((flagged & poisoned).sum())
    both = 0 < poisoned.sum() < poisoned.size
    auc = float(roc_auc_score(poisoned, scores)) if both else math.nan
    return Detection(
        scores=scores,
        flagged=flagged,
        poisoned=poisoned,
        precision=wilson(hits, int(flagged.sum())),
        recall=wilson(hits, int(poisoned.sum())),
        auc=auc,
        removal=removal,
    )


def spectral_signatures(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    poisoned: np.ndarray,
    *,
    bound: Optional[int] = None,
    removal: float = REMOVAL,
    batch_size: int = 64,
    progress: Optional[ProgressCallback] = None,
) -> Detection:
    """Run the detector on training scans ``x`` (float ``[N, 1, S, S]`` in ``[0, 1]``) with the labels
    they were trained with (int ``[N]``, poisoned labels included) and measure it against ``poisoned``
    (bool ``[N]``). ``bound`` defaults to the true number of poisoned scans."""
    device = next(model.parameters()).device
    chunks = list(x.split(batch_size))
    found = []
    for number, chunk in enumerate(chunks):
        found.append(features(model, chunk.to(device)).float().cpu())
        report(progress, number + 1, len(chunks), "spectral signatures: features of the training scans")
    representations = torch.cat(found).numpy()
    scores = outlier_scores(representations, labels.cpu().numpy())
    poisoned = np.asarray(poisoned, dtype=bool)
    return detect(scores, poisoned, int(poisoned.sum()) if bound is None else bound, removal=removal)
