"""Plotly figures of evaluation results, drawn once for the HTML report and the dashboard alike.

The report's figures take the typed results (a :class:`SweepResult`, a :class:`TransferResult`,
...); the dashboard rebuilds the same objects from ``report.json`` with their ``from_dict`` and
calls the same functions, so a figure looks and reads the same in both. Where a figure has a 95%
interval it is drawn as an error bar. The lab's one palette and style live here too (the
dashboard's other figures import them). Nothing here computes a metric, and nothing imports
streamlit.
"""

from __future__ import annotations

import math

from typing import Mapping, Optional, Sequence

import numpy as np
import plotly.graph_objects as go

from pipeline.constants import GREY_LEVEL
from pipeline.evaluation.calibration import Calibration
from pipeline.evaluation.certify import CertifiedCurve
from pipeline.evaluation.corruption import CorruptionReport
from pipeline.evaluation.ensemble import EnsembleResult
from pipeline.evaluation.faithfulness import FaithfulnessReport
from pipeline.evaluation.intervals import Interval, PairedComparison
from pipeline.evaluation.strength import StrengthReport
from pipeline.evaluation.sweeps import WORST_CASE, MinimalEpsilon, SweepResult
from pipeline.evaluation.transfer import TransferResult
from pipeline.units import format_epsilon, format_share

# ------------------------------------------------------------------------- the one look
CLEAN = "#2f6f8f"
ATTACKED = "#c2553f"
NEUTRAL = "#8a99a6"
SERIES = ("#2f6f8f", "#c2553f", "#6a8f3f", "#8f6a2f", "#6b5b95", "#3f8f86", "#a05d7a")
DASHES = ("solid", "dash", "dot", "dashdot")
#: White in the middle so "no change" reads as nothing; blue darker, red brighter.
DIVERGING = [[0.0, "#2c5f8a"], [0.5, "#ffffff"], [1.0, "#b2432f"]]
SEQUENTIAL = [[0.0, "#f4f7f9"], [1.0, "#2f6f8f"]]


def style(figure: go.Figure, *, title: str = "", height: int = 320, legend_right: bool = False) -> go.Figure:
    """The common look. A legend never covers an axis: many series get theirs on the right; a few,
    a row at the bottom of the figure itself (placed against the figure, not the plot area, so the
    margin grows to fit it under the axis title at any height)."""
    legend = (
        {"orientation": "v", "yanchor": "top", "y": 1, "x": 1.02}
        if legend_right
        else {"orientation": "h", "yref": "container", "yanchor": "bottom", "y": 0, "x": 0}
    )
    figure.update_layout(
        template="plotly_white",
        # the title sits just above the plot, left-aligned, in a top margin tall enough that plotly's
        # mode bar (top right of the figure, shown on hover) stays above it and never covers it
        title={"text": title, "font": {"size": 15}, "x": 0, "xanchor": "left", "xref": "paper",
               "y": 1, "yanchor": "bottom", "yref": "paper", "pad": {"b": 8}} if title else None,
        height=height,
        margin={"l": 10, "r": 10, "t": 66 if title else 34, "b": 10},
        legend=legend,
        font={"size": 13},
    )
    return figure


# ---------------------------------------------------------------------- generic shapes
def lines(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    x_title: str,
    y_title: str,
    title: str = "",
    percent: bool = False,
    legend_right: Optional[bool] = None,
) -> go.Figure:
    """One line per named ``(x, y)`` series: training curves, accuracy against epsilon, certified radius.

    The legend goes to the right of more than four series unless ``legend_right`` says otherwise (a
    figure in a narrow column keeps its plot area by wrapping the legend in rows underneath)."""
    figure = go.Figure()
    for index, (name, (xs, ys)) in enumerate(series.items()):
        values = [100 * float(v) if percent else float(v) for v in ys]
        figure.add_scatter(
            x=list(xs),
            y=values,
            name=name,
            mode="lines+markers",
            line={"color": SERIES[index % len(SERIES)]},
            marker={"size": 6},
        )
    figure.update_xaxes(title=x_title)
    figure.update_yaxes(title=y_title, range=[0, 100] if percent else None)
    many = len(series) > 4
    right = many if legend_right is None else legend_right
    return style(figure, title=title, height=380 if many else 320, legend_right=right)


def histogram(samples: Mapping[str, Sequence[float]], *, x_title: str, title: str = "") -> go.Figure:
    """Overlaid histograms, one per named sample, counted in scans."""
    figure = go.Figure()
    for index, (name, values) in enumerate(samples.items()):
        figure.add_histogram(
            x=list(values), name=name, opacity=0.75, marker_color=SERIES[index % len(SERIES)]
        )
    figure.update_layout(barmode="overlay")
    figure.update_xaxes(title=x_title)
    figure.update_yaxes(title="scans")
    return style(figure, title=title)


def matrix(
    values: np.ndarray,
    rows: Sequence[str],
    columns: Sequence[str],
    *,
    title: str,
    x_title: str,
    y_title: str,
    text: str = "{:.0%}",
    height: int = 320,
) -> go.Figure:
    """A labelled heatmap of a table (rows down, columns across), each cell written with ``text``."""
    values = np.asarray(values, dtype=float)
    figure = go.Figure(
        go.Heatmap(
            z=values,
            x=list(columns),
            y=list(rows),
            colorscale=SEQUENTIAL,
            showscale=False,
            text=[[text.format(value) for value in row] for row in values],
            texttemplate="%{text}",
            textfont={"size": 15},
            hovertemplate=f"{y_title} %{{y}}, {x_title} %{{x}}: %{{text}}<extra></extra>",
        )
    )
    figure.update_xaxes(title=x_title, side="bottom")
    figure.update_yaxes(title=y_title, autorange="reversed")
    return style(figure, title=title, height=height)


def confusion(counts: np.ndarray, classes: Sequence[str], *, title: str) -> go.Figure:
    """Counts with the true class on rows and the prediction on columns; the diagonal is correct."""
    figure = matrix(
        counts, classes, classes, title=title, x_title="predicted", y_title="true", text="{:.0f}", height=300
    )
    figure.update_xaxes(tickangle=-35)
    return figure


# ---------------------------------------------------------------------- the report's
def epsilon_curves(sweeps: Sequence[SweepResult]) -> go.Figure:
    """Accuracy against epsilon: a colour per model, a dash per attack; the worst case in bold."""
    figure = go.Figure()
    for m, sweep in enumerate(sweeps):
        xs = [0.0] + [eps * 255 for eps in sweep.epsilons]
        for a, (attack, values) in enumerate(sweep.accuracy.items()):
            worst = attack == WORST_CASE
            bounds = [sweep.clean_interval, *sweep.intervals.get(attack, [None] * len(values))]
            figure.add_scatter(
                x=xs,
                y=[100 * sweep.clean] + [100 * v for v in values],
                error_y=error_bars(bounds, [sweep.clean, *values]),
                # as the tables write it: as precise as the scans behind each point allow
                text=[
                    format_share(value, None if bound is None else bound.scans)
                    for value, bound in zip([sweep.clean, *values], bounds)
                ],
                hovertemplate="ε %{x:.3~f}/255: %{text}<extra>%{fullData.name}</extra>",
                mode="lines+markers",
                name=f"{sweep.model}: {attack}",
                line={
                    "color": SERIES[m % len(SERIES)],
                    "dash": "solid" if worst else DASHES[(a + 1) % len(DASHES)],
                    "width": 3.5 if worst else 1.5,
                },
            )
    figure.update_xaxes(title="ε (grey levels, k/255; 0 = clean)")
    figure.update_yaxes(title="accuracy (%)", range=[0, 100])
    # the legend wraps in rows under the plot (a right-hand legend of many series squeezes the plot of a
    # half-width column to a third of it); each extra row of four series gets its own height
    rows = math.ceil(sum(len(sweep.accuracy) for sweep in sweeps) / 4)
    title = "Accuracy as the attack budget grows (bars: 95% intervals)"
    return style(figure, title=title, height=380 + 24 * max(rows - 1, 0), legend_right=False)


def strength_ladder(reports: Sequence[StrengthReport]) -> go.Figure:
    """PGD accuracy along the growing-epsilon ladder of each strength check (must fall to ~0)."""
    series = {
        f"{check.model} (from ε={format_epsilon(check.eps)})": (
            [e * 255 for e, _ in check.ladder],
            [a for _, a in check.ladder],
        )
        for check in reports
    }
    return lines(
        series,
        x_title="ε (grey levels, k/255)",
        y_title="PGD accuracy (%)",
        percent=True,
        title="Strength check: accuracy must fall to near zero as ε grows",
    )


def transfer_heatmap(result: TransferResult) -> go.Figure:
    """Target accuracy on examples crafted on each source model."""
    return matrix(
        result.accuracy,
        result.models,
        result.models,
        title=f"Transfer: accuracy under {result.attack.title} crafted on another model ({result.scans} "
        "scans)",
        x_title="attacked model",
        y_title="examples crafted on",
    )


def ensemble_accuracies(result: EnsembleResult) -> go.Figure:
    """Robust accuracy of each member under its own attack, and of the ensemble under the transfer
    from each member and under the whole-ensemble attack, with 95% intervals; clean accuracy as a tick."""
    intervals = result.intervals()
    labels = list(intervals)
    values = [interval.estimate for interval in intervals.values()]
    members = len(result.members)
    colours = [NEUTRAL] * members + [CLEAN] * members + [ATTACKED]
    cleans = [*result.member_clean, *[result.clean_accuracy] * (members + 1)]
    figure = go.Figure()
    figure.add_bar(
        x=labels,
        y=[100 * v for v in values],
        error_y=error_bars(list(intervals.values()), values),
        marker_color=colours,
        name="robust accuracy",
    )
    figure.add_scatter(
        x=labels, y=[100 * v for v in cleans], mode="markers", name="clean accuracy",
        marker={"symbol": "line-ew-open", "size": 26, "color": "#1f2a33", "line": {"width": 2}},
    )
    figure.update_yaxes(title=f"accuracy under {result.attack.title} (%)", range=[0, 105])
    how = "soft-vote surrogate" if result.surrogate else "end to end"
    return style(
        figure,
        title=f"Members and ensemble ({result.scans} scans): the whole-ensemble attack ({how}) against "
        "transfers",
        height=360,
    )


def shared_failures(result: EnsembleResult) -> go.Figure:
    """How often the members fail on the same scans: per condition, the share of scans where all, a
    majority and any of them are wrong."""
    measured = result.shared_failures()
    figure = go.Figure()
    shares = (
        ("all_fail", "all members wrong"),
        ("majority_fail", "a majority wrong"),
        ("any_fail", "any member wrong"),
    )
    for index, (field, name) in enumerate(shares):
        figure.add_bar(
            x=[shared.condition for shared in measured],
            y=[100 * getattr(shared, field) for shared in measured],
            name=name,
            marker_color=SERIES[index],
        )
    figure.update_layout(barmode="group")
    figure.update_yaxes(title="share of the scans (%)", range=[0, 100])
    return style(figure, title="Do the members fail on the same scans?")


def minimal_epsilon_histogram(results: Sequence[MinimalEpsilon]) -> go.Figure:
    """How many grey levels it takes to flip each correctly classified scan (never flipped: left out)."""
    samples = {}
    for result in results:
        values = result.values[result.correct]
        samples[f"{result.model} ({result.attack})"] = (values[np.isfinite(values)] * 255).tolist()
    return histogram(
        samples,
        x_title="smallest flipping ε (grey levels, k/255; scans never flipped are left out)",
        title="How much change each scan needs before the answer flips",
    )


def certified_curves(curves: Sequence[tuple[str, CertifiedCurve]]) -> go.Figure:
    """Certified accuracy against L2 radius (randomized smoothing), the radius in grey levels like every
    L2 size the lab shows, the noise σ per pixel like every ε."""
    series = {
        f"{model} (σ={format_epsilon(curve.sigma)}, n={curve.n})": (
            [radius / GREY_LEVEL for radius in curve.radii],
            curve.accuracy,
        )
        for model, curve in curves
    }
    return lines(
        series,
        x_title="L2 radius (grey levels)",
        y_title="certified accuracy (%)",
        percent=True,
        title="Certified accuracy by randomized smoothing (a guarantee, not an attack)",
    )


def error_bars(
    intervals: Sequence[Optional[Interval]], values: Sequence[float], *, scale: float = 100
) -> dict:
    """Plotly ``error_y`` for ``values`` from their intervals (None: no bar), in percent by default."""
    known = [i is not None and np.isfinite(i.low) and np.isfinite(i.high) for i in intervals]
    upper = [scale * (i.high - v) if ok else None for i, v, ok in zip(intervals, values, known)]
    lower = [scale * (v - i.low) if ok else None for i, v, ok in zip(intervals, values, known)]
    return {"type": "data", "symmetric": False, "array": upper, "arrayminus": lower, "thickness": 1.2}


def reliability_diagram(calibrations: Sequence[tuple[str, Calibration]]) -> go.Figure:
    """Accuracy against confidence per confidence bin, one line per (model, condition); on the
    diagonal a model is as sure as it is right, below it overconfident. Marker area follows the
    scans in the bin."""
    figure = go.Figure()
    figure.add_scatter(
        x=[0, 100], y=[0, 100], mode="lines", name="calibrated", line={"color": "#8a99a6", "dash": "dot"}
    )
    for m, (model, result) in enumerate(calibrations):
        filled = result.reliability.scans > 0
        figure.add_scatter(
            x=100 * result.reliability.confidence[filled],
            y=100 * result.reliability.accuracy[filled],
            mode="lines+markers",
            name=f"{model}: {result.condition} (ECE {format_share(result.ece, result.scans)})",
            marker={"size": 6 + 18 * np.sqrt(result.reliability.scans[filled] / max(result.scans, 1))},
            line={"color": SERIES[m % len(SERIES)], "dash": DASHES[m // len(SERIES) % len(DASHES)]},
        )
    figure.update_xaxes(title="confidence of the answer (%)", range=[0, 100])
    figure.update_yaxes(title="share of those answers that are right (%)", range=[0, 100])
    return style(figure, title="Reliability: how often answers of a given confidence are right")


def corruption_errors(reports: Sequence[CorruptionReport]) -> go.Figure:
    """Error under each corruption, averaged over its five severities, one bar per model, with 95%
    intervals; the clean error for reference."""
    figure = go.Figure()
    for m, result in enumerate(reports):
        names = ["clean", *result.corruptions]
        clean = 1.0 - float(result.clean_correct.mean())
        means = [clean, *(float(e) for e in result.errors().mean(axis=1))]
        bounds = [None, *(result.mean_error_interval(c) for c in range(len(result.corruptions)))]
        figure.add_bar(
            x=names,
            y=[100 * v for v in means],
            error_y=error_bars(bounds, means),
            name=result.model,
            marker_color=SERIES[m % len(SERIES)],
        )
    figure.update_layout(barmode="group")
    figure.update_yaxes(title="error, mean of severities 1-5 (%)", range=[0, 100])
    return style(figure, title="Error under CT corruptions (bars: 95% intervals)")


def faithfulness_scores(reports: Sequence[FaithfulnessReport]) -> go.Figure:
    """Mean ROAD score of each model's maps, clean and attacked, with 95% intervals (above 0: the
    map marks what the answer rests on)."""
    figure = go.Figure()
    for condition, colour in (("clean", SERIES[0]), ("attacked", SERIES[1])):
        means = [getattr(report, condition).mean for report in reports]
        figure.add_bar(
            x=[report.model for report in reports],
            y=[mean.estimate for mean in means],
            error_y=error_bars(means, [mean.estimate for mean in means], scale=1),
            name=condition,
            marker_color=colour,
        )
    figure.add_hline(y=0, line={"color": "#8a99a6", "dash": "dot"})
    figure.update_layout(barmode="group")
    figure.update_yaxes(title="ROAD score (probability)")
    return style(figure, title="Faithfulness of the Grad-CAM maps (ROAD; 0 = no better than a random map)")


def comparison_forest(comparisons: Sequence[PairedComparison]) -> go.Figure:
    """Each paired comparison as its difference in points with the 95% interval: to the right of
    zero the second model holds more scans, to the left the first."""
    labels = [f"{c.second} − {c.first}: {c.condition}" for c in comparisons]
    figure = go.Figure()
    figure.add_scatter(
        x=[100 * c.difference.estimate for c in comparisons],
        y=labels,
        text=[c.points() for c in comparisons],  # the sentences' own rounding
        hovertemplate="%{y}: %{text}<extra></extra>",
        error_x=error_bars([c.difference for c in comparisons], [c.difference.estimate for c in comparisons]),
        mode="markers",
        marker={"color": [SERIES[1] if c.clear else "#8a99a6" for c in comparisons], "size": 10},
        showlegend=False,
    )
    figure.add_vline(x=0, line={"color": "#8a99a6", "dash": "dot"})
    figure.update_xaxes(title="difference in accuracy (points; coloured: the interval excludes 0)")
    figure.update_yaxes(autorange="reversed")
    title = "Paired comparison on the same scans (bars: 95% intervals)"
    return style(figure, title=title, height=120 + 28 * len(labels))
