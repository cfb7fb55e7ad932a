"""Plotly figures of evaluation results, for the HTML report (plotly, never streamlit).

Each function takes a result object and returns a figure; nothing here computes a metric.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from pipeline.evaluation.certify import CertifiedCurve
from pipeline.evaluation.strength import StrengthReport
from pipeline.evaluation.sweeps import MinimalEpsilon, SweepResult
from pipeline.evaluation.transfer import TransferResult
from pipeline.units import format_epsilon

SERIES = ("#2f6f8f", "#c2553f", "#6a8f3f", "#8f6a2f", "#6b5b95", "#3f8f86", "#a05d7a")
DASHES = ("solid", "dash", "dot", "dashdot")


def _style(figure: go.Figure, title: str, *, height: int = 360) -> go.Figure:
    figure.update_layout(
        template="plotly_white",
        title=title,
        height=height,
        margin={"l": 50, "r": 20, "t": 50, "b": 50},
        legend={"orientation": "h", "y": -0.25},
    )
    return figure


def epsilon_curves(sweeps: Sequence[SweepResult]) -> go.Figure:
    """Accuracy against epsilon: a colour per model, a dash per attack; the worst case in bold."""
    figure = go.Figure()
    for m, sweep in enumerate(sweeps):
        xs = [0.0] + [eps * 255 for eps in sweep.epsilons]
        for a, (attack, values) in enumerate(sweep.accuracy.items()):
            worst = attack == "worst case"
            figure.add_scatter(
                x=xs,
                y=[100 * sweep.clean] + [100 * v for v in values],
                mode="lines+markers",
                name=f"{sweep.model}: {attack}",
                line={
                    "color": SERIES[m % len(SERIES)],
                    "dash": "solid" if worst else DASHES[(a + 1) % len(DASHES)],
                    "width": 3.5 if worst else 1.5,
                },
            )
    figure.update_xaxes(title="epsilon (grey levels, k/255)")
    figure.update_yaxes(title="accuracy (%)", range=[0, 100])
    return _style(figure, "Accuracy against the perturbation budget (0 = clean)")


def strength_ladder(reports: Sequence[StrengthReport]) -> go.Figure:
    """PGD accuracy along the growing-epsilon ladder of each strength check (must fall to ~0)."""
    figure = go.Figure()
    for m, check in enumerate(reports):
        figure.add_scatter(
            x=[e * 255 for e, _ in check.ladder],
            y=[100 * a for _, a in check.ladder],
            mode="lines+markers",
            name=f"{check.model} (from ε={format_epsilon(check.eps)})",
            line={"color": SERIES[m % len(SERIES)]},
        )
    figure.update_xaxes(title="epsilon (grey levels, k/255)")
    figure.update_yaxes(title="PGD accuracy (%)", range=[0, 100])
    return _style(figure, "Strength check: accuracy must fall to near zero as epsilon grows")


def transfer_heatmap(result: TransferResult) -> go.Figure:
    """Target accuracy (%) on examples crafted on each source model."""
    values = 100 * np.asarray(result.accuracy)
    figure = go.Figure(
        go.Heatmap(
            z=values,
            x=result.models,
            y=result.models,
            zmin=0,
            zmax=100,
            colorscale="Blues",
            showscale=False,
            text=[[f"{v:.0f}%" for v in row] for row in values],
            texttemplate="%{text}",
        )
    )
    figure.update_xaxes(title="evaluated on (target)")
    figure.update_yaxes(title="crafted on (source)", autorange="reversed")
    return _style(figure, f"Transfer: accuracy under {result.attack.title} crafted on another model")


def minimal_epsilon_histogram(results: Sequence[MinimalEpsilon]) -> go.Figure:
    """How many grey levels it takes to flip each correctly classified scan."""
    figure = go.Figure()
    for m, result in enumerate(results):
        values = result.values[result.correct]
        shown = np.where(np.isfinite(values), values * 255, np.nan)
        figure.add_histogram(
            x=shown[np.isfinite(shown)],
            name=f"{result.model} ({result.attack})",
            opacity=0.7,
            marker_color=SERIES[m % len(SERIES)],
        )
    figure.update_layout(barmode="overlay")
    figure.update_xaxes(title="smallest flipping epsilon (grey levels; scans never flipped are left out)")
    figure.update_yaxes(title="scans")
    return _style(figure, "Per-scan minimal epsilon")


def certified_curves(curves: Sequence[tuple[str, CertifiedCurve]]) -> go.Figure:
    """Certified accuracy against L2 radius (randomized smoothing)."""
    figure = go.Figure()
    for m, (model, curve) in enumerate(curves):
        figure.add_scatter(
            x=curve.radii,
            y=[100 * v for v in curve.accuracy],
            mode="lines+markers",
            name=f"{model} (σ={curve.sigma:g}, n={curve.n})",
            line={"color": SERIES[m % len(SERIES)]},
        )
    figure.update_xaxes(title="L2 radius (image scale)")
    figure.update_yaxes(title="certified accuracy (%)", range=[0, 100])
    return _style(figure, "Certified accuracy by randomized smoothing (a guarantee, not an attack)")
