"""The dashboard's own plotly figures: a scan's probabilities, its attack trace and perturbation, the data.

They share the lab's one palette and style with the evaluation report's figures
(:mod:`pipeline.evaluation.figures`, which the report views and training curves use directly).
Each function takes plain numbers (what the pipeline returned) and returns a figure; none of
them computes anything a reader would call a result.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import plotly.graph_objects as go

from pipeline.evaluation.figures import ATTACKED, CLEAN, DIVERGING, SERIES, style


def probability_text(value: float) -> str:
    """A probability in ``[0, 1]`` as the bars show it and every sentence says it: ``99.7%``."""
    return f"{100 * float(value):.1f}%"


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
        figure.add_bar(
            y=list(classes),
            x=[100 * float(v) for v in values],
            name=name,
            orientation="h",
            marker_color=colour,
            text=[probability_text(v) for v in values],
            textposition="auto",
        )
    figure.update_xaxes(range=[0, 100], title="probability (%)")
    figure.update_yaxes(autorange="reversed")
    figure.update_layout(barmode="group")
    return style(figure, title=title, height=260)


def step_trace(probability: Sequence[float], class_name: str, *, x_title: str, title: str = "") -> go.Figure:
    """The true class's probability at each point of the attack (point 0 is the original scan).

    No threshold line: with three or more classes no fixed probability decides the answer (the
    answer changes when another class overtakes this one, which can be anywhere below 50%).
    """
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
    figure.update_xaxes(title=x_title, dtick=max(1, len(values) // 10))
    figure.update_yaxes(range=[0, 100], title=f"P({class_name}) %")
    return style(figure, title=title, height=260)


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
    return style(figure, title=title, height=340)


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
    return style(figure, title=title, height=260)


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
    return style(figure, title=title, height=260)
