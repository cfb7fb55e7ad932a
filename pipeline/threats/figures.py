"""Plotly figures of the threats' results, drawn once for the HTML report and the dashboard alike.

They take the typed results (rebuilt from ``result.json`` by the dashboard with ``from_dict``) and use
the lab's one look (:mod:`pipeline.evaluation.figures`); every 95% interval is an error bar or a band,
and a figure measured on the synthetic phantom says so in its title. Nothing here computes a metric.
"""

from __future__ import annotations

import math
from typing import Sequence

import plotly.graph_objects as go

from pipeline.evaluation.figures import ATTACKED, CLEAN, DASHES, NEUTRAL, SERIES, error_bars, style
from pipeline.evaluation.intervals import Interval
from pipeline.threats.extraction import ExtractionResult
from pipeline.threats.membership import ATTACKS, MembershipResult

#: The subtitle's mark on every figure measured on the phantom.
SYNTHETIC_TITLE = "synthetic phantom — not a medical result"


def titled(title: str, synthetic: bool, detail: str = "") -> str:
    """``title`` with a smaller second line: the synthetic mark first where the figure was measured on the
    phantom (so a narrow column never cuts it off), then ``detail``."""
    below = "; ".join(part for part in (SYNTHETIC_TITLE if synthetic else "", detail) if part)
    return f"{title}<br><sup>{below}</sup>" if below else title


def agreement_curve(result: ExtractionResult) -> go.Figure:
    """Agreement with the victim (and the surrogate's own accuracy) against the query budget."""
    figure = go.Figure()
    queries = [surrogate.queries for surrogate in result.surrogates]
    for name, color, values in (
        ("agreement with the victim", CLEAN, [s.agreement for s in result.surrogates]),
        ("surrogate's accuracy (true labels)", NEUTRAL, [s.accuracy for s in result.surrogates]),
    ):
        figure.add_scatter(
            x=queries, y=[100 * v.estimate for v in values], name=name, mode="lines+markers",
            error_y=error_bars(values, [v.estimate for v in values]), line={"color": color},
        )
    _level(figure, result.victim_accuracy, "victim's accuracy", NEUTRAL, "dot", queries)
    figure.update_xaxes(title="queries sent to the victim", type="log")
    figure.update_yaxes(title="share of test scans (%)", range=[0, 103], dtick=20)
    title = titled("Agreement of the stolen copy with the victim", result.synthetic, "bars: 95% intervals")
    return _styled(figure, title, 380)


def transfer_curve(result: ExtractionResult) -> go.Figure:
    """Success of attacks crafted on each surrogate and shown to the victim, against the white-box and
    random-noise successes of the same budget."""
    figure = go.Figure()
    queries = [surrogate.queries for surrogate in result.surrogates]
    values = [surrogate.transfer for surrogate in result.surrogates]
    figure.add_scatter(
        x=queries, y=[100 * v.estimate for v in values], name="crafted on the surrogate, shown to the victim",
        mode="lines+markers", error_y=error_bars(values, [v.estimate for v in values]), line={"color": ATTACKED},
    )
    _level(figure, result.white_box, "white-box (crafted on the victim)", SERIES[4], "dash", queries)
    _level(figure, result.noise, "random ±ε noise (chance)", NEUTRAL, "dot", queries)
    figure.update_xaxes(title="queries sent to the victim", type="log")
    figure.update_yaxes(title="attack success on the victim (%)", range=[0, 103], dtick=20)
    title = titled("Attacks crafted on the copy, shown to the victim", result.synthetic,
                   f"{result.attack_label}; bars and bands: 95% intervals")
    return _styled(figure, title, 380)


def roc_curves(result: MembershipResult, attacks: Sequence[str] = ("lira", "loss")) -> go.Figure:
    """ROC curves on log-log axes (the low false-positive end is what matters): a colour per target, a
    dash per attack, the diagonal for guessing."""
    figure = go.Figure()
    floor = min((1.0 / max(t.attacks["loss"].non_members, 1) for t in result.targets), default=0.01)
    low = max(min(floor / 2, 1e-3), 1e-4)
    figure.add_scatter(x=[low, 1], y=[low, 1], name="guessing", mode="lines",
                       line={"color": NEUTRAL, "dash": "dot", "width": 1})
    for t, target in enumerate(result.targets):
        for a, key in enumerate(attacks):
            summary = target.attacks[key]
            # log axes cannot show 0: the curve starts at the lowest rate these candidates can show
            points = [(max(f, low), max(p, low)) for f, p in zip(summary.fpr, summary.tpr_curve)]
            figure.add_scatter(
                x=[f for f, _ in points], y=[p for _, p in points], mode="lines", line_shape="hv",
                name=f"{target.name}: {ATTACKS[key][0]} (AUC {summary.auc.estimate:.2f})",
                line={"color": SERIES[t % len(SERIES)], "dash": DASHES[a % len(DASHES)]},
            )
    figure.update_xaxes(title="false-positive rate (non-members called members)", type="log", range=[math.log10(low), 0])
    figure.update_yaxes(title="true-positive rate (members found)", type="log", range=[math.log10(low), 0])
    return _styled(figure, titled("Membership ROC, log-log", result.synthetic, "the low-FPR end matters"), 440)


def auc_bars(result: MembershipResult) -> go.Figure:
    """ROC AUC of every attack on every target, side by side, with 95% intervals; 0.5 is guessing."""
    figure = go.Figure()
    for t, target in enumerate(result.targets):
        values = [target.attacks[key].auc for key in ATTACKS]
        figure.add_bar(
            x=[ATTACKS[key][0] for key in ATTACKS], y=[v.estimate for v in values], name=target.name,
            marker_color=SERIES[t % len(SERIES)],
            error_y=error_bars(values, [v.estimate for v in values], scale=1),
        )
    figure.add_hline(y=0.5, line={"color": NEUTRAL, "dash": "dot"}, annotation_text="guessing")
    figure.update_layout(barmode="group")
    figure.update_yaxes(title="ROC AUC", range=[0, 1])
    return _styled(figure, titled("Membership attacks: ROC AUC", result.synthetic, "bars: 95% intervals"), 360)


def _styled(figure: go.Figure, title: str, height: int) -> go.Figure:
    """The lab's look, with room above the plot for the title's second line."""
    style(figure, title=title, height=height)
    figure.update_layout(margin={"t": 100}, title={"pad": {"b": 22}})
    return figure


def _level(figure: go.Figure, interval: Interval, name: str, color: str, dash: str, xs: list[int]) -> None:
    """A reference share as a horizontal line across the budgets, its 95% interval as a band."""
    if not xs:
        return
    left, right = min(xs), max(xs)
    figure.add_scatter(
        x=[left, right, right, left], y=[100 * interval.high] * 2 + [100 * interval.low] * 2, fill="toself",
        mode="lines", fillcolor=color, opacity=0.12, line={"width": 0}, hoverinfo="skip", showlegend=False,
    )
    figure.add_scatter(
        x=[left, right], y=[100 * interval.estimate] * 2, mode="lines", name=f"{name}: {interval.format()}",
        line={"color": color, "dash": dash},
    )

