"""How sure a figure is: 95% intervals on proportions, and paired comparisons of two models.

Test sets here are small (90-180 scans; benign rests on about 15 patients in IQ-OTH/NCCD), so a
one-point difference between models is noise until an interval says otherwise.

- A proportion (accuracy, recall, attack success rate) gets the Wilson score interval (Wilson
  1927, JASA 22:209) when its scans are independent. When the split is grouped (slices of one
  patient, near-duplicates: :func:`pipeline.data.splits.group_scans`), scans of one group are not
  independent, so the interval is a percentile bootstrap that resamples whole groups (the cluster
  bootstrap, Davison & Hinkley 1997, section 3.8): :func:`bootstrap_interval`, which serves any
  statistic that is a ratio of weighted sums over scans (corruption errors too).
- Two models on the same scans are compared scan by scan: the exact McNemar test (McNemar 1947,
  Psychometrika 12:153; a binomial test on the scans only one model gets right) and Newcombe's
  square-and-add interval of the paired difference (Newcombe 1998, Stat Med 17:2635, method 10).
  With groups, the test is the clustered McNemar test of Durkalski et al. 2003 (Stat Med 22:2417)
  and the interval a group bootstrap of the difference.

Every result says which method made it, and :attr:`PairedComparison.sentence` says the outcome in
plain words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Final, Mapping, Optional, Sequence

import numpy as np
from scipy import stats

from pipeline.errors import UserInputError
from pipeline.json_object import json_float
from pipeline.units import share_decimals

CONFIDENCE: Final[float] = 0.95
#: Bootstrap resamples: enough for stable 2.5% and 97.5% percentiles (Efron & Tibshirani 1993, ch. 13).
RESAMPLES: Final[int] = 2000
WILSON: Final[str] = "Wilson"
GROUP_BOOTSTRAP: Final[str] = "group bootstrap"
BOOTSTRAP: Final[str] = "bootstrap"
NEWCOMBE: Final[str] = "Newcombe paired"
EXACT_MCNEMAR: Final[str] = "exact McNemar"
CLUSTERED_MCNEMAR: Final[str] = "clustered McNemar"


@dataclass(frozen=True)
class Interval:
    """A proportion (or a difference of two) with its 95% interval; all three are fractions.

    ``scans`` is how many scans it rests on, ``groups`` how many independent groups where the
    scans are grouped (None: every scan is its own group). NaN throughout when there are no scans.
    """

    estimate: float
    low: float
    high: float
    method: str
    scans: int
    groups: Optional[int] = None

    def format(self, digits: Optional[int] = None) -> str:
        """``63% (95% CI 55–70)``, or a dash for an empty interval; in whole percent unless the scans
        back a decimal (:func:`pipeline.units.share_decimals`) or ``digits`` says otherwise."""
        if not math.isfinite(self.estimate):
            return "—"
        digits = share_decimals(self.scans) if digits is None else digits
        return f"{100 * self.estimate:.{digits}f}% ({self.bounds(digits)})"

    def bounds(self, digits: Optional[int] = None) -> str:
        """``95% CI 55–70`` (percent); ``−5 to 11`` when a bound of a difference is negative."""
        digits = share_decimals(self.scans) if digits is None else digits
        low, high = (percent_text(value, digits) for value in (self.low, self.high))
        joint = " to " if low.startswith("−") else "–"
        return f"{round(100 * CONFIDENCE)}% CI {low}{joint}{high}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimate": self.estimate,
            "low": self.low,
            "high": self.high,
            "method": self.method,
            "scans": self.scans,
            "groups": self.groups,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Interval":
        """The interval :meth:`to_dict` wrote (a JSON null, for NaN, reads back as NaN)."""
        return cls(
            *(json_float(data.get(key)) for key in ("estimate", "low", "high")),
            method=str(data.get("method", "")),
            scans=int(data.get("scans") or 0),
            groups=None if data.get("groups") is None else int(data["groups"]),
        )


def wilson(successes: int, trials: int) -> Interval:
    """The 95% Wilson score interval of ``successes`` out of ``trials`` (scipy's ``binomtest``).

    Unlike the normal approximation it stays inside [0, 1] and is not degenerate at 0% or 100%,
    which small test sets reach often (a model right on all 15 benign scans).
    """
    if trials < 0 or not 0 <= successes <= max(trials, 0):
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return Interval(math.nan, math.nan, math.nan, WILSON, 0)
    low, high = stats.binomtest(int(successes), int(trials)).proportion_ci(CONFIDENCE, method="wilson")
    return Interval(successes / trials, float(low), float(high), WILSON, int(trials))


def proportion_interval(
    hits: Sequence[bool] | np.ndarray, groups: Optional[Sequence[int] | np.ndarray] = None, *, seed: int = 0
) -> Interval:
    """The share of true ``hits`` (bool ``[N]``) with its 95% interval.

    ``groups`` (int ``[N]``, one id per scan) marks scans that are not independent; with fewer
    groups than scans the interval is a group bootstrap (``seed`` fixes its resamples), else
    Wilson's. Where every group has the same share (all right, say) the bootstrap cannot vary, so
    the interval is Wilson's over the groups: the data are worth no more than that many scans.
    """
    hits = np.asarray(hits, dtype=bool).reshape(-1)
    ids = dense_groups(groups, hits.size)
    if ids is None or hits.size == 0:
        return wilson(int(hits.sum()), hits.size)
    counts = np.bincount(ids).astype(np.float64)
    successes = np.bincount(ids, weights=hits.astype(np.float64))
    estimate = float(hits.mean())
    if np.all(successes * counts[0] == successes[0] * counts):  # every group shares one rate
        fallback = wilson(int(round(estimate * counts.size)), counts.size)
        return Interval(estimate, fallback.low, fallback.high, GROUP_BOOTSTRAP, hits.size, counts.size)
    return mean_interval(hits, ids, seed=seed)


def mean_interval(
    values: Sequence[float] | np.ndarray,
    groups: Optional[Sequence[int] | np.ndarray] = None,
    *,
    seed: int = 0,
) -> Interval:
    """The mean of per-scan ``values`` (float ``[N]``: a score, a share of severities missed) with
    its 95% bootstrap interval over the scans, or over their ``groups`` where given."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    ids = dense_groups(groups, values.size)
    method, count = (BOOTSTRAP, None) if ids is None else (GROUP_BOOTSTRAP, int(ids.max()) + 1)
    if values.size == 0:
        return Interval(math.nan, math.nan, math.nan, method, 0, count)
    resampled = np.arange(values.size) if ids is None else ids
    low, high = bootstrap_interval(lambda w: w @ values / w.sum(axis=1), resampled, seed=seed)
    return Interval(float(values.mean()), low, high, method, int(values.size), count)


def bootstrap_interval(
    statistic: Callable[[np.ndarray], np.ndarray], groups: np.ndarray, *, seed: int = 0
) -> tuple[float, float]:
    """The 95% percentile-bootstrap interval of ``statistic`` resampling whole groups.

    ``groups`` holds a dense group id ``0..G-1`` per scan (``np.arange(N)`` for independent scans).
    Each resample draws G groups with replacement; ``statistic`` receives the resulting weights,
    float ``[R, N]`` (how often each scan was drawn, :data:`RESAMPLES` rows), and returns ``[R]``
    values, e.g. ``weights @ hits / weights.sum(1)`` for a proportion. Resamples where the
    statistic is undefined (NaN, a zero denominator) are left out.
    """
    ids = np.asarray(groups, dtype=np.int64).reshape(-1)
    count = int(ids.max()) + 1
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(count, np.full(count, 1.0 / count), size=RESAMPLES).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.asarray(statistic(draws[:, ids]), dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedComparison:
    """Two models judged on the same scans, scan by scan.

    ``difference`` is ``second`` minus ``first`` (fractions of the scans), ``first_only`` and
    ``second_only`` count the scans only that model got right (the discordant pairs the test
    rests on), and ``p_value`` is the two-sided test of "no difference".
    """

    first: str
    second: str
    condition: str  #: what was compared, e.g. "clean" or "PGD ε=4/255"
    first_rate: float
    second_rate: float
    difference: Interval
    first_only: int
    second_only: int
    p_value: float
    test: str

    @property
    def scans(self) -> int:
        return self.difference.scans

    @property
    def clear(self) -> bool:
        """The interval of the difference excludes zero: one model is better on scans like these."""
        return self.difference.low > 0 or self.difference.high < 0

    @property
    def sentence(self) -> str:
        """The outcome in plain words, the better model first, e.g. ``the robust model holds more
        scans under PGD ε=4/255: +38 points, 95% CI 27–49 (exact McNemar p < 0.001; 52 of 180 scans
        differ)``."""
        flip = self.difference.estimate < 0
        better, worse = (self.first, self.second) if flip else (self.second, self.first)
        points = self.points(better_first=True)
        evidence = (
            f"{self.test} {_p_text(self.p_value)}; {self.first_only + self.second_only} of {self.scans} "
            "scans differ"
        )
        clean = self.condition == "clean"
        what = "is right on more clean scans" if clean else f"holds more scans under {self.condition}"
        if self.clear:
            return f"{better} {what} than {worse}: {points} ({evidence})"
        return (
            f"no clear difference between {self.first} and {self.second} "
            f"{'on clean scans' if clean else 'under ' + self.condition}: {points} "
            f"({evidence}); more scans would be needed to tell them apart"
        )

    def points(self, *, better_first: bool = False) -> str:
        """The difference in points with its interval, ``+38 points, 95% CI 27–49``: second minus
        first, or the better model's lead with ``better_first``. As precise as the scans allow
        (:func:`pipeline.units.share_decimals`), and the same text in the sentence and the chart."""
        sign = -1.0 if better_first and self.difference.estimate < 0 else 1.0
        low, high = sorted((sign * self.difference.low, sign * self.difference.high))
        gap = Interval(sign * self.difference.estimate, low, high, self.difference.method, self.scans)
        digits = share_decimals(self.scans)
        shown = percent_text(gap.estimate, digits)
        return f"{shown if shown.startswith('−') else '+' + shown} points, {gap.bounds(digits)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "first": self.first,
            "second": self.second,
            "condition": self.condition,
            "scans": self.scans,
            "first_rate": self.first_rate,
            "second_rate": self.second_rate,
            "difference": self.difference.to_dict(),
            "first_only": self.first_only,
            "second_only": self.second_only,
            "p_value": self.p_value,
            "test": self.test,
            "clear": self.clear,
            "sentence": self.sentence,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PairedComparison":
        return cls(
            first=str(data["first"]),
            second=str(data["second"]),
            condition=str(data["condition"]),
            first_rate=json_float(data.get("first_rate")),
            second_rate=json_float(data.get("second_rate")),
            difference=Interval.from_dict(data["difference"]),
            first_only=int(data["first_only"]),
            second_only=int(data["second_only"]),
            p_value=json_float(data.get("p_value")),
            test=str(data["test"]),
        )


def paired_comparison(
    first: Sequence[bool] | np.ndarray,
    second: Sequence[bool] | np.ndarray,
    *,
    names: tuple[str, str] = ("first model", "second model"),
    condition: str = "clean",
    groups: Optional[Sequence[int] | np.ndarray] = None,
    seed: int = 0,
) -> PairedComparison:
    """Compare which scans two models get right (bool ``[N]`` each, the same scans in one order).

    Without ``groups`` (or with one scan per group): the exact McNemar test and Newcombe's
    interval. With groups: the clustered McNemar test and a group bootstrap of the difference.
    Raises UserInputError when the two do not cover the same number of scans.
    """
    a = np.asarray(first, dtype=bool).reshape(-1)
    b = np.asarray(second, dtype=bool).reshape(-1)
    if a.size != b.size:
        raise UserInputError(
            f"a paired comparison needs both models on the same scans; got {a.size} and {b.size} results"
        )
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    ids = dense_groups(groups, a.size)
    if ids is None or a.size == 0:
        difference = _newcombe(int((a & b).sum()), only_a, only_b, int((~a & ~b).sum()))
        p_value = _exact_mcnemar(only_a, only_b)
        test = EXACT_MCNEMAR
    else:
        difference = _group_difference(a, b, ids, seed)
        p_value = _clustered_mcnemar(a, b, ids)
        test = CLUSTERED_MCNEMAR
    return PairedComparison(
        first=names[0],
        second=names[1],
        condition=condition,
        first_rate=float(a.mean()) if a.size else math.nan,
        second_rate=float(b.mean()) if b.size else math.nan,
        difference=difference,
        first_only=only_a,
        second_only=only_b,
        p_value=p_value,
        test=test,
    )


# ------------------------------------------------------------------------------------ helpers
def dense_groups(groups: Optional[Sequence[int] | np.ndarray], size: int) -> Optional[np.ndarray]:
    """Dense group ids ``0..G-1`` for ``size`` scans, or None when every scan is its own group.
    Raises UserInputError when there is not one id per scan."""
    if groups is None:
        return None
    raw = np.asarray(groups).reshape(-1)
    if raw.size != size:
        raise UserInputError(f"got {raw.size} group ids for {size} scans; give one per scan")
    _, ids = np.unique(raw, return_inverse=True)
    return None if ids.max(initial=-1) + 1 == size else ids


def _newcombe(both: int, first_only: int, second_only: int, neither: int) -> Interval:
    """Newcombe's square-and-add interval (method 10) of the paired difference second - first.

    Wilson intervals of the two marginal rates, combined with the phi correlation of the paired
    table (shrunk by N/2 towards zero when positive, as Newcombe does).
    """
    total = both + first_only + second_only + neither
    if total == 0:
        return Interval(math.nan, math.nan, math.nan, NEWCOMBE, 0)
    right_first, right_second = both + first_only, both + second_only
    p1, p2 = right_first / total, right_second / total
    w1, w2 = wilson(right_first, total), wilson(right_second, total)
    margins = [right_first, total - right_first, right_second, total - right_second]
    phi = 0.0
    if min(margins) > 0:
        cross = both * neither - first_only * second_only
        shrunk = cross - total / 2 if cross > total / 2 else (0.0 if cross >= 0 else cross)
        phi = shrunk / math.sqrt(math.prod(margins))
    # The interval of p2 - p1: its low end pairs p2's low with p1's high, and the reverse.
    low = (p2 - p1) - math.sqrt(
        max((p2 - w2.low) ** 2 + (w1.high - p1) ** 2 - 2 * phi * (p2 - w2.low) * (w1.high - p1), 0.0)
    )
    high = (p2 - p1) + math.sqrt(
        max((w2.high - p2) ** 2 + (p1 - w1.low) ** 2 - 2 * phi * (w2.high - p2) * (p1 - w1.low), 0.0)
    )
    return Interval(p2 - p1, max(low, -1.0), min(high, 1.0), NEWCOMBE, total)


def _exact_mcnemar(first_only: int, second_only: int) -> float:
    """Two-sided exact McNemar p: the discordant scans as a fair coin (1.0 when there are none)."""
    discordant = first_only + second_only
    return 1.0 if discordant == 0 else float(stats.binomtest(second_only, discordant, 0.5).pvalue)


def _clustered_mcnemar(a: np.ndarray, b: np.ndarray, ids: np.ndarray) -> float:
    """Durkalski et al.'s McNemar test for clustered pairs: per group the discordance b_k - c_k,
    ``X² = (Σ (b_k - c_k))² / Σ (b_k - c_k)²`` against chi-square with one degree of freedom."""
    per_group = np.bincount(ids, weights=(b & ~a).astype(np.float64)) - np.bincount(
        ids, weights=(a & ~b).astype(np.float64)
    )
    spread = float((per_group**2).sum())
    if spread == 0:
        return 1.0
    return float(stats.chi2.sf(per_group.sum() ** 2 / spread, df=1))


def _group_difference(a: np.ndarray, b: np.ndarray, ids: np.ndarray, seed: int) -> Interval:
    """Second minus first with a group-bootstrap interval. Where every group differs at one rate
    (both models agree on every scan, say) the bootstrap cannot vary, so the interval is Newcombe's
    with the paired table scaled to the number of groups, as :func:`proportion_interval` does."""
    counts = np.bincount(ids).astype(np.float64)
    delta = np.bincount(ids, weights=b.astype(np.float64) - a.astype(np.float64))
    estimate = float(b.mean() - a.mean())
    if np.all(delta * counts[0] == delta[0] * counts):
        scale = counts.size / a.size
        cells = (a & b, a & ~b, ~a & b, ~a & ~b)
        fallback = _newcombe(*(int(round(scale * cell.sum())) for cell in cells))
        return Interval(estimate, fallback.low, fallback.high, GROUP_BOOTSTRAP, a.size, counts.size)
    return mean_interval(b.astype(np.float64) - a.astype(np.float64), ids, seed=seed)


def percent_text(value: float, digits: int = 1) -> str:
    """``value`` in percent with a true minus sign, and no "−0" for a value that rounds to zero."""
    text = f"{100 * value:.{digits}f}"
    return text.lstrip("-") if float(text) == 0 else text.replace("-", "−")


def _p_text(p_value: float) -> str:
    return "p < 0.001" if p_value < 0.001 else f"p = {p_value:.2g}"
