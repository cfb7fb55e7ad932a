"""Intervals and paired comparisons against published worked examples and scipy's own routines.

Reference values: Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables" (2017),
chapter 8, the paired table of Cavo et al. 2012 ([[59, 6], [16, 80]]): Newcombe's square-and-add
interval -0.0621 (-0.1186 to -0.0046) and the exact McNemar p = 0.052.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from pipeline.errors import UserInputError
from pipeline.evaluation.intervals import (
    CLUSTERED_MCNEMAR,
    EXACT_MCNEMAR,
    GROUP_BOOTSTRAP,
    WILSON,
    paired_comparison,
    proportion_interval,
    wilson,
)


def paired_table(both: int, first_only: int, second_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    first = np.array([1] * both + [1] * first_only + [0] * second_only + [0] * neither, dtype=bool)
    second = np.array([1] * both + [0] * first_only + [1] * second_only + [0] * neither, dtype=bool)
    return first, second


def test_wilson_matches_the_closed_form_and_stays_inside_zero_one() -> None:
    z = 1.959963984540054
    for successes, trials in ((7, 9), (0, 15), (15, 15), (113, 180)):
        p = successes / trials
        centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
        half = z / (1 + z * z / trials) * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials**2))
        interval = wilson(successes, trials)
        assert interval.method == WILSON and interval.scans == trials
        assert interval.low == pytest.approx(max(0.0, centre - half), abs=1e-9)
        assert interval.high == pytest.approx(min(1.0, centre + half), abs=1e-9)
    # The textbook case (Newcombe 1998, Stat Med 17:857, table I): 5 of 10 gives 0.2366 to 0.7634.
    assert (wilson(5, 10).low, wilson(5, 10).high) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 10).low == 0.0 and wilson(10, 10).high == pytest.approx(1.0)
    # A model right on all 15 benign scans is not "100% sure": the interval reaches down to ~80%.
    assert wilson(15, 15).low == pytest.approx(0.796, abs=1e-3)
    assert math.isnan(wilson(0, 0).estimate)
    with pytest.raises(ValueError):
        wilson(5, 3)


def test_newcombe_and_exact_mcnemar_reproduce_the_textbook_example() -> None:
    after, before = paired_table(59, 6, 16, 80)  # rows: first test; columns: second test
    comparison = paired_comparison(after, before, names=("after", "before"))
    # The book's difference is first minus second; ours is second minus first.
    assert comparison.difference.estimate == pytest.approx(0.0621, abs=1e-4)
    assert comparison.difference.low == pytest.approx(0.0046, abs=1e-4)
    assert comparison.difference.high == pytest.approx(0.1186, abs=1e-4)
    assert comparison.p_value == pytest.approx(0.0525, abs=1e-4)
    assert comparison.test == EXACT_MCNEMAR
    assert (comparison.first_only, comparison.second_only) == (6, 16)


def test_the_sentence_names_the_better_model_and_says_when_there_is_no_clear_difference() -> None:
    standard, robust = paired_table(40, 2, 70, 68)
    clear = paired_comparison(standard, robust, names=("the standard model", "the robust model"),
                              condition="PGD ε=4/255")
    assert clear.clear and clear.difference.low > 0.25
    assert clear.sentence.startswith(
        "the robust model holds more scans under PGD ε=4/255 than the standard model: +38 points, 95% CI"
    )
    assert "p < 0.001" in clear.sentence and "72 of 180 scans differ" in clear.sentence
    # The same data the other way round names the same winner with the same positive gap.
    reverse = paired_comparison(robust, standard, names=("the robust model", "the standard model"),
                                condition="PGD ε=4/255")
    assert reverse.sentence.startswith("the robust model holds more scans")
    assert reverse.difference.estimate == pytest.approx(-clear.difference.estimate)

    a, b = paired_table(100, 9, 12, 59)
    unclear = paired_comparison(a, b, names=("A", "B"))
    assert not unclear.clear and unclear.difference.low < 0 < unclear.difference.high
    assert unclear.sentence.startswith("no clear difference between A and B on clean scans")
    assert "−" in unclear.sentence  # a negative bound is printed with a minus sign


def test_identical_models_differ_by_nothing_with_p_one() -> None:
    hits = np.arange(50) % 3 > 0
    comparison = paired_comparison(hits, hits)
    assert comparison.difference.estimate == 0 and comparison.p_value == 1.0 and not comparison.clear


def test_grouped_scans_get_a_wider_group_bootstrap_interval() -> None:
    """Six slices per patient that share their outcome carry the information of 30 scans, not 180."""
    rng = np.random.default_rng(1)
    per_patient = rng.random(30) < 0.7
    groups = np.repeat(np.arange(30), 6)
    hits = np.repeat(per_patient, 6)
    independent = proportion_interval(hits)
    grouped = proportion_interval(hits, groups)
    assert grouped.method == GROUP_BOOTSTRAP and grouped.groups == 30 and grouped.scans == 180
    assert grouped.estimate == independent.estimate
    assert grouped.high - grouped.low > 1.8 * (independent.high - independent.low)
    assert grouped.low <= grouped.estimate <= grouped.high
    # The bootstrap is seeded: the same call gives the same interval.
    assert proportion_interval(hits, groups) == grouped


def test_singleton_groups_are_independent_scans_and_uniform_groups_fall_back_to_wilson_over_groups() -> None:
    hits = np.arange(40) % 4 > 0
    assert proportion_interval(hits, np.arange(40)) == proportion_interval(hits)
    everything = proportion_interval(np.ones(60, dtype=bool), np.repeat(np.arange(12), 5))
    assert everything.estimate == 1.0 and everything.groups == 12
    assert everything.low == pytest.approx(wilson(12, 12).low)


def test_clustered_comparison_uses_durkalski_and_the_group_bootstrap() -> None:
    groups = np.repeat(np.arange(30), 6)
    rng = np.random.default_rng(3)
    standard = np.repeat(rng.random(30) < 0.3, 6)
    robust = np.repeat(rng.random(30) < 0.8, 6) | standard
    comparison = paired_comparison(standard, robust, groups=groups, names=("standard", "robust"),
                                   condition="PGD")
    assert comparison.test == CLUSTERED_MCNEMAR and comparison.difference.groups == 30
    per_group = np.bincount(groups, weights=robust & ~standard)
    per_group -= np.bincount(groups, weights=standard & ~robust)
    statistic = per_group.sum() ** 2 / (per_group**2).sum()
    from scipy.stats import chi2

    assert comparison.p_value == pytest.approx(chi2.sf(statistic, 1))
    unpaired = paired_comparison(standard, robust)
    width = comparison.difference.high - comparison.difference.low
    assert width > 1.5 * (unpaired.difference.high - unpaired.difference.low)


def test_mismatched_inputs_are_refused_with_a_message() -> None:
    with pytest.raises(UserInputError, match="same scans"):
        paired_comparison(np.ones(5, bool), np.ones(6, bool))
    with pytest.raises(UserInputError, match="group ids"):
        proportion_interval(np.ones(5, bool), np.arange(4))


def test_every_share_of_an_evaluation_carries_its_interval_and_groups_widen_them() -> None:
    """On a real trained model: accuracy, per-class recall and success rate each come with an
    interval in the report's JSON; the same answers counted as 6-scan groups give wider ones."""
    import torch
    from torch.utils.data import TensorDataset

    from pipeline.evaluation import AttackSpec, evaluate
    from tests.models_fixture import nodule_images, one_thread, trained_model

    x, y = nodule_images(48, seed=5)
    with one_thread():
        model = trained_model().model
        spec = [AttackSpec("fgsm", {"eps": 2 / 255})]
        plain = evaluate(model, TensorDataset(x, y), None, spec)
        # Scan i of the dataset belongs to patient i // 6 (dataset-wide ids; the report keeps its scans').
        grouped = evaluate(model, TensorDataset(x, y), range(48), spec, groups=torch.arange(48) // 6)
    record = plain.to_dict()
    assert record["clean"]["accuracy_ci"]["method"] == WILSON
    clean = record["clean"]
    assert clean["accuracy_ci"]["low"] <= clean["accuracy"] <= clean["accuracy_ci"]["high"]
    assert set(record["clean"]["recall_ci"]) == {"benign", "malignant", "normal"}
    assert record["clean"]["recall_ci"]["benign"]["scans"] == 16
    attack = record["attacks"][0]
    assert attack["success_rate_ci"]["scans"] == attack["attacked"]
    assert attack["success_rate_ci"]["estimate"] == pytest.approx(attack["success_rate"])
    interval = grouped.clean.accuracy_interval
    assert interval.method == GROUP_BOOTSTRAP and interval.groups == 8
    assert grouped.clean.accuracy == plain.clean.accuracy
    independent = plain.clean.accuracy_interval
    assert interval.high - interval.low >= independent.high - independent.low
    with pytest.raises(ValueError, match="one per scan"):
        evaluate(model, TensorDataset(x, y), None, spec, groups=np.arange(10))


def test_sentences_and_charts_round_alike() -> None:
    """Issue 22, point 9: the comparison's sentence and its forest plot, and the robustness curve and
    the tables, write each figure with the same digits: whole percent on a test set's few hundred
    scans, one decimal from a thousand on."""
    from pipeline.evaluation.figures import comparison_forest, epsilon_curves
    from pipeline.evaluation.sweeps import SweepResult

    first = np.array([True] * 110 + [False] * 70)
    second = np.array([True] * 150 + [False] * 30)
    for scale, pattern in ((1, r"\+\d+ points"), (10, r"\+\d+\.\d points")):
        comparison = paired_comparison(
            np.tile(first, scale), np.tile(second, scale), condition="PGD ε=4/255"
        )
        (trace,) = comparison_forest([comparison]).data
        assert trace.text[0] in comparison.sentence
        assert re.match(pattern, trace.text[0])
    clean, attacked = wilson(2, 3), wilson(1, 3)  # 66.7% and 33.3%: whole percent on three scans
    sweep = SweepResult(
        "m", [4 / 255], clean.estimate, {"PGD": [attacked.estimate]}, {"PGD": [attacked]}, clean
    )
    (curve,) = epsilon_curves([sweep]).data
    assert list(curve.text) == ["67%", "33%"]
    assert attacked.format().startswith(curve.text[1] + " ")  # as the table's cell "33% (95% CI ...)"
