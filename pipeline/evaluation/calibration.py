"""Does the model know when it is wrong? Calibration clean and under attack.

A model that is wrong with 95% confidence does more harm than one that is wrong and unsure: a
reader trusts the first. An attack that flips a scan usually does so with high confidence, and
none of the usual robustness tools reports it. For a set of answers this module gives

- the expected calibration error (ECE, Guo et al. 2017, "On calibration of modern neural
  networks", https://arxiv.org/abs/1706.04599): top-label confidences in equal-width bins, the
  gap between each bin's accuracy and its mean confidence, weighted by the bin's share of scans;
- the reliability diagram's data (per bin: scans, mean confidence, accuracy);
- the confidence of the wrong answers, and how many scans are answered wrongly with at least
  :data:`CONFIDENT` confidence, with its 95% interval (:mod:`.intervals`).

With fewer than a few hundred scans the ECE is biased upwards (Kumar et al. 2019,
https://arxiv.org/abs/1909.10155): compare models on the same scans, not with published values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, Mapping, Optional

import numpy as np

from pipeline.evaluation.intervals import Interval, proportion_interval
from pipeline.json_object import json_float, json_floats

#: Equal-width confidence bins of the ECE and the reliability diagram (Guo et al. use 15 for
#: 10,000 images; 10 keeps a few scans per bin on a test set of 100-200).
BINS: Final[int] = 10
#: A wrong answer at least this confident is "confidently wrong".
CONFIDENT: Final[float] = 0.9


@dataclass(frozen=True)
class Reliability:
    """The reliability diagram: per confidence bin ``[edges[i], edges[i+1])``, float arrays ``[BINS]``.

    ``confidence`` and ``accuracy`` are NaN for an empty bin.
    """

    edges: np.ndarray  #: float [BINS + 1], 0 to 1
    scans: np.ndarray  #: int [BINS]
    confidence: np.ndarray
    accuracy: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {
            "edges": self.edges.tolist(),
            "scans": self.scans.tolist(),
            "confidence": self.confidence.tolist(),
            "accuracy": self.accuracy.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Reliability":
        return cls(
            json_floats(data["edges"]),
            np.asarray(data["scans"], dtype=np.int64),
            json_floats(data["confidence"]),
            json_floats(data["accuracy"]),
        )


@dataclass(frozen=True)
class Calibration:
    """How well the confidences of one set of answers match how often they are right."""

    condition: str  #: "clean" or the attack's label
    scans: int
    accuracy: float
    mean_confidence: float
    ece: float  #: expected calibration error, a fraction in [0, 1]
    wrong_confidence: float  #: mean top-label confidence of the wrong answers; NaN when none is wrong
    confidently_wrong: Interval  #: share of all scans answered wrongly with >= CONFIDENT confidence
    reliability: Reliability

    @property
    def overconfidence(self) -> float:
        """Mean confidence minus accuracy: positive when the model claims more than it delivers."""
        return self.mean_confidence - self.accuracy

    def to_dict(self) -> dict[str, Any]:
        return {
            "condition": self.condition,
            "scans": self.scans,
            "accuracy": self.accuracy,
            "mean_confidence": self.mean_confidence,
            "overconfidence": self.overconfidence,
            "ece": self.ece,
            "wrong_confidence": self.wrong_confidence,
            "confident_threshold": CONFIDENT,
            "confidently_wrong": self.confidently_wrong.to_dict(),
            "reliability": self.reliability.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Calibration":
        """The calibration :meth:`to_dict` wrote (for the dashboard, which draws from report.json)."""
        return cls(
            condition=str(data["condition"]),
            scans=int(data["scans"]),
            accuracy=json_float(data.get("accuracy")),
            mean_confidence=json_float(data.get("mean_confidence")),
            ece=json_float(data.get("ece")),
            wrong_confidence=json_float(data.get("wrong_confidence")),
            confidently_wrong=Interval.from_dict(data["confidently_wrong"]),
            reliability=Reliability.from_dict(data["reliability"]),
        )


def calibration(
    probabilities: np.ndarray,
    labels: np.ndarray,
    *,
    condition: str = "clean",
    groups: Optional[np.ndarray] = None,
    bins: int = BINS,
) -> Calibration:
    """Calibration of answers with class probabilities ``probabilities`` (float ``[N, C]``, rows
    summing to 1) on scans labelled ``labels`` (int ``[N]``). ``groups`` (int ``[N]``) makes the
    interval of the confidently-wrong share a group bootstrap. Raises ValueError on mismatched shapes.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if probabilities.ndim != 2 or probabilities.shape[0] != labels.size:
        raise ValueError(f"need probabilities [N, C] for {labels.size} labels, got {probabilities.shape}")
    if bins < 1:
        raise ValueError(f"need at least one bin, got {bins}")
    confidence = probabilities.max(axis=1) if labels.size else np.zeros(0)
    correct = probabilities.argmax(axis=1) == labels if labels.size else np.zeros(0, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds confidences in [edges[i], edges[i+1]); a confidence of exactly 1 joins the last bin.
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    scans = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(which, weights=confidence, minlength=bins) / scans
        accuracy = np.bincount(which, weights=correct.astype(np.float64), minlength=bins) / scans
    filled = scans > 0
    ece = (
        float((scans[filled] / labels.size * np.abs(accuracy[filled] - mean_confidence[filled])).sum())
        if labels.size
        else math.nan
    )
    wrong = ~correct
    return Calibration(
        condition=condition,
        scans=int(labels.size),
        accuracy=float(correct.mean()) if labels.size else math.nan,
        mean_confidence=float(confidence.mean()) if labels.size else math.nan,
        ece=ece,
        wrong_confidence=float(confidence[wrong].mean()) if wrong.any() else math.nan,
        confidently_wrong=proportion_interval(wrong & (confidence >= CONFIDENT), groups),
        reliability=Reliability(edges, scans, mean_confidence, accuracy),
    )
