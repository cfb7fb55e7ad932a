"""Plotly figures in one calm style: the same colours for "clean" and "attacked" everywhere.

Each function takes plain numbers (what the pipeline returned) and returns a figure; none of
them computes anything a reader would call a result.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import plotly.graph_objects as go

CLEAN = "#2f6f8f"
ATTACKED = "#c2553f"
NEUTRAL = "#8a99a6"
SERIES = ("#2f6f8f", "#c2553f", "#6a8f3f", "#8f6a2f", "#6b5b95", "#3f8f86", "#a05d7a")
#: White in the middle so "no change" reads as nothing; blue darker, red brighter.
DIVERGING = [[0.0, "#2c5f8a"], [0.5, "#ffffff"], [1.0, "#b2432f"]]
SEQUENTIAL = [[0.0, "#f4f7f9"], [1.0, "#2f6f8f"]]


def _style(figure: go.Figure, *, title: str = "", height: int = 320, legend_right: bool = False) -> go.Figure:
    """The common look; many series get their legend on the right, where it cannot cover the axes."""
    legend = (
        {"orientation": "v", "yanchor": "top", "y": 1, "x": 1.02}
        if legend_right
        else {"orientation": "h", "yanchor": "top", "y": -0.3, "x": 0}
    )
    figure.update_layout(
        template="plotly_white",
        title={"text": title, "font": {"size": 15}} if title else None,
        height=height,
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        legend=legend,
        font={"size": 13},
    )
    return figure


def probabilities(
    classes: Sequence[str],
    clean: Sequence[float],
    attacked: Optional[Sequence[float]] = None,
    *,
    title: str = "",
) -> go.Figure:
    """Class probabilities before (and after) the attack, as horizontal bars in percent."""
    figure = go.Figure()
    series = [("original scan", clean, CLEAN)] + (
        [("attacked scan", attacked, ATTACKED)] if attacked is not None else []
    )
    for name, values, colour in series:
        percent = [100 * float(v) for v in values]
        figure.add_bar(
            y=list(classes),
            x=percent,
            name=name,
            orientation="h",
            marker_color=colour,
            text=[f"{p:.1f}%" for p in percent],
            textposition="auto",
        )
    figure.update_xaxes(range=[0, 100], title="probability (%)")
    figure.update_yaxes(autorange="reversed")
    figure.update_layout(barmode="group")
    return _style(figure, title=title, height=260)


def step_trace(probability: Sequence[float], class_name: str, *, title: str = "") -> go.Figure:
    """The true class's probability after each attack step (step 0 is the original scan)."""
    values = [100 * float(v) for v in probability]
    figure = go.Figure(
        go.Scatter(
            x=list(range(len(values))),
            y=values,
            mode="lines+markers",
            line={"color": ATTACKED},
            marker={"size": 5},
            name=class_name,
        )
    )
    figure.add_hline(y=50, line_dash="dot", line_color=NEUTRAL)
    figure.update_xaxes(title="attack step", dtick=max(1, len(values) // 10))
    figure.update_yaxes(range=[0, 100], title=f"P({class_name}) %")
    return _style(figure, title=title, height=260)


def perturbation(delta_levels: np.ndarray, *, title: str = "") -> go.Figure:
    """The perturbation in grey levels on a symmetric diverging scale (white = unchanged)."""
    limit = max(float(np.abs(delta_levels).max()), 1e-6)
    figure = go.Figure(
        go.Heatmap(
            z=np.flipud(delta_levels),
            colorscale=DIVERGING,
            zmin=-limit,
            zmax=limit,
            zmid=0,
            colorbar={"title": {"text": "grey<br>levels"}, "thickness": 12},
            hovertemplate="change %{z:.1f} grey levels<extra></extra>",
        )
    )
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False, scaleanchor="x")
    return _style(figure, title=title, height=340)


def confusion(counts: np.ndarray, classes: Sequence[str], *, title: str) -> go.Figure:
    """Counts with the true class on rows and the prediction on columns; the diagonal is correct."""
    figure = matrix(
        counts, classes, classes, title=title, x_title="predicted", y_title="true", text="{:.0f}", height=300
    )
    figure.update_xaxes(tickangle=-35)
    return figure


def class_balance(counts: Mapping[str, int], *, title: str = "Scans per class") -> go.Figure:
    figure = go.Figure(
        go.Bar(
            x=list(counts),
            y=list(counts.values()),
            marker_color=CLEAN,
            text=list(counts.values()),
            textposition="auto",
        )
    )
    figure.update_yaxes(title="scans")
    return _style(figure, title=title, height=260)


def split_sizes(sizes: Mapping[str, Mapping[str, int]], *, title: str = "The split by class") -> go.Figure:
    """Stacked bars: for each part of the split (train/val/test), how many scans of each class."""
    figure = go.Figure()
    classes = sorted({name for part in sizes.values() for name in part})
    for index, name in enumerate(classes):
        figure.add_bar(
            x=list(sizes),
            y=[sizes[part].get(name, 0) for part in sizes],
            name=name,
            marker_color=SERIES[index % len(SERIES)],
        )
    figure.update_layout(barmode="stack")
    figure.update_yaxes(title="scans")
    return _style(figure, title=title, height=260)


def lines(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    x_title: str,
    y_title: str,
    title: str = "",
    percent: bool = False,
) -> go.Figure:
    """One line per named ``(x, y)`` series: training curves, accuracy against epsilon, certified radius."""
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
    return _style(figure, title=title, height=380 if many else 320, legend_right=many)


def histogram(samples: Mapping[str, Sequence[float]], *, x_title: str, title: str = "") -> go.Figure:
    figure = go.Figure()
    for index, (name, values) in enumerate(samples.items()):
        figure.add_histogram(
            x=list(values), name=name, opacity=0.75, marker_color=SERIES[index % len(SERIES)]
        )
    figure.update_layout(barmode="overlay")
    figure.update_xaxes(title=x_title)
    figure.update_yaxes(title="scans")
    return _style(figure, title=title)


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
    return _style(figure, title=title, height=height)
