"""Is this a trained classifier at all? The one home for that judgment, wherever a model's figures appear.

A model that gives (nearly) the same answer for every scan cannot be fooled, so its accuracy under
any attack equals its clean accuracy and reads like perfect robustness. It is flagged, with
:data:`NOT_TRAINED`, when its answers on labelled scans show either

- **collapse**: a class with at least :data:`MIN_CLASS_SCANS` labelled scans is never answered (for
  three classes: the answers collapse onto one or two of them), or
- **no skill**: its accuracy is not above the 95% Wilson interval (Wilson 1927) of the majority-class
  rate, i.e. the scans do not show it doing better than always answering the most common class.

The runs table (validation answers stored per epoch), the Attack page (the validation split), the
strength checks and the evaluation report (the evaluated scans) all call :func:`check_answers` or
:func:`check_counts`; none judges on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from pipeline.constants import CLASSES
from pipeline.evaluation.intervals import wilson

NOT_TRAINED = "not a trained classifier: no robustness to measure"
#: A class needs this many labelled scans before "never answered" counts against the model.
MIN_CLASS_SCANS = 3


@dataclass(frozen=True)
class AnswerCheck:
    """A model's answers on labelled scans, counted per class, and the judgment drawn from them."""

    classes: tuple[str, ...]
    answers: tuple[int, ...]  #: per class: how often the model gave it
    labels: tuple[int, ...]  #: per class: how many scans carry it
    correct: int  #: scans answered correctly

    @property
    def scans(self) -> int:
        return sum(self.labels)

    @property
    def accuracy(self) -> float:
        return self.correct / self.scans if self.scans else math.nan

    @property
    def majority(self) -> str:
        return self.classes[int(np.argmax(self.labels))]

    @property
    def majority_rate(self) -> float:
        """The accuracy of always answering the most common class."""
        return max(self.labels) / self.scans if self.scans else math.nan

    @property
    def majority_interval(self) -> tuple[float, float]:
        """The 95% Wilson interval of the majority-class rate over this many scans."""
        interval = wilson(max(self.labels), self.scans)
        return interval.low, interval.high

    @property
    def never_answered(self) -> list[str]:
        """Classes with at least :data:`MIN_CLASS_SCANS` labelled scans that the model never gave."""
        return [
            name
            for name, given, present in zip(self.classes, self.answers, self.labels)
            if given == 0 and present >= MIN_CLASS_SCANS
        ]

    @property
    def no_skill(self) -> bool:
        return self.scans > 0 and self.accuracy <= self.majority_interval[1]

    @property
    def flagged(self) -> bool:
        return bool(self.never_answered) or self.no_skill

    @property
    def answers_text(self) -> str:
        """``benign 0, malignant 7, normal 2 of 9 scans``."""
        counts = ", ".join(f"{name} {count}" for name, count in zip(self.classes, self.answers))
        return f"{counts} of {self.scans} scans"

    @property
    def reason(self) -> str:
        """One line: the flag and the numbers behind it, or why the model passes."""
        low, high = self.majority_interval
        chance = (
            f"always answering {self.majority} would score {self.majority_rate:.0%} "
            f"(95% interval {low:.0%}–{high:.0%} on {self.scans} scans)"
        )
        if not self.flagged:
            return f"answers vary with the scan ({self.answers_text}); accuracy {self.accuracy:.0%}, {chance}"
        why = []
        if self.never_answered:
            why.append(f"it never answers {' or '.join(self.never_answered)} (answers: {self.answers_text})")
        if self.no_skill:
            why.append(f"its accuracy {self.accuracy:.0%} is no better than chance: {chance}")
        return f"{NOT_TRAINED}; " + "; ".join(why)

    @property
    def advice(self) -> str:
        return (
            "No attack can change an answer that does not depend on the scan, so every accuracy under "
            "attack equals the clean accuracy and says nothing about robustness. Train longer (or from "
            "a pretrained start), check the data and its labels, then measure again."
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "flagged": self.flagged,
            "verdict": NOT_TRAINED if self.flagged else "trained classifier",
            "reason": self.reason,
            "answers": dict(zip(self.classes, self.answers)),
            "labels": dict(zip(self.classes, self.labels)),
            "accuracy": self.accuracy,
            "majority_rate": self.majority_rate,
            "majority_interval": list(self.majority_interval),
            "never_answered": self.never_answered,
        }


def check_answers(
    predictions: Sequence[int] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    classes: Sequence[str] = CLASSES,
) -> AnswerCheck:
    """Judge a model from its answers ``predictions`` ``[N]`` on scans labelled ``labels`` ``[N]``
    (class numbers)."""
    predictions, labels = np.asarray(predictions, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    count = len(classes)
    return AnswerCheck(
        tuple(classes),
        tuple(int(n) for n in np.bincount(predictions, minlength=count)[:count]),
        tuple(int(n) for n in np.bincount(labels, minlength=count)[:count]),
        int((predictions == labels).sum()),
    )


def check_counts(
    answers: Sequence[int], labels: Sequence[int], accuracy: float, classes: Sequence[str] = CLASSES
) -> AnswerCheck:
    """Judge a model from counts per class and its accuracy (what a training epoch stores)."""
    if len(answers) != len(classes) or len(labels) != len(classes):
        raise ValueError(f"need one count per class ({len(classes)}), got {len(answers)} and {len(labels)}")
    return AnswerCheck(
        tuple(classes), tuple(map(int, answers)), tuple(map(int, labels)), int(round(accuracy * sum(labels)))
    )


def check_epoch(line: Mapping[str, Any], classes: Sequence[str] = CLASSES) -> Optional[AnswerCheck]:
    """Judge a model from one epoch of ``metrics.jsonl``: its validation answers, labels and accuracy.

    None for an epoch written before the answers were stored (or a damaged line): not judged.
    """
    answers, labels, accuracy = line.get("val_answers"), line.get("val_labels"), line.get("val_acc")
    if not (isinstance(answers, list) and isinstance(labels, list) and isinstance(accuracy, (int, float))):
        return None
    try:
        return check_counts(answers, labels, float(accuracy), classes)
    except (TypeError, ValueError):
        return None
