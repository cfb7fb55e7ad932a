"""The backdoor experiment's report: an HTML section, and its figures for the report and the dashboard.

Everything here reads the saved ``backdoor.json`` (a plain mapping, as
:meth:`pipeline.threats.poisoning.BackdoorResult.to_dict` wrote it), so a result is shown the same way
wherever it is opened, and the page is made with the evaluation report's own pieces
(:func:`pipeline.evaluation.report.html_page`). Every figure made from the synthetic phantom says so in
its title, and the page carries the synthetic banner.
"""

from __future__ import annotations

from typing import Any, Final, Mapping

import numpy as np
import plotly.graph_objects as go

from pipeline.evaluation import figures
from pipeline.evaluation.intervals import Interval, PairedComparison, percent_text
from pipeline.evaluation.report import escape, figure_html, html_page, image_html, interval_html

TITLE: Final[str] = "Poisoned training data (backdoor)"
SYNTHETIC_TAG: Final[str] = " — synthetic data"
ROLES: Final[tuple[tuple[str, str], ...]] = (("clean", "clean model"), ("poisoned", "poisoned model"))
MEASURES: Final[tuple[tuple[str, str], ...]] = (
    ("clean_accuracy", "clean accuracy"),
    ("trigger_success", "trigger success rate"),
    ("target_without_trigger", "read as the target without the trigger"),
)
#: The same measures as a figure's axis says them (a half-width figure has no room for the table's words).
AXIS_LABELS: Final[tuple[str, ...]] = ("clean accuracy", "trigger success", "target, no trigger")
METHOD_NOTE: Final[str] = (
    "The trigger success rate is the share of held-out test scans of the other classes that the model reads "
    "as the target once the trigger is stamped on them (all such scans, as BadNets counts them); beside it, "
    "the share of the same scans the model reads as the target without the trigger. A working backdoor keeps "
    "the clean accuracy and moves most triggered scans; the clean model shows what the mark alone does. The "
    "detection ranks the poisoned model's training scans by their spectral signature (Tran et al. 2018) and "
    "flags 1.5 times as many as were poisoned; a detector that flags at random reaches the chance levels "
    "shown. Brackets hold 95% intervals."
)


def report_html(result: Mapping[str, Any]) -> str:
    """``backdoor.html``: the section as a self-contained page (plotly.js inlined, synthetic banner)."""
    return html_page(TITLE, poisoning_section(result), synthetic=bool(result.get("synthetic")))


def poisoning_section(result: Mapping[str, Any]) -> list[str]:
    """The experiment as parts of an HTML page: what was poisoned, the table of both models, the
    comparison, the detection and an example scan."""
    synthetic = bool(result.get("synthetic"))
    trigger = result["trigger"]
    models = result["models"]
    parts = [
        f"<h2>{escape(TITLE)}</h2>",
        f"<p><b>{escape(result['poison_text'])}</b>: the marker is {trigger['size_px']} px "
        f"(≈ {trigger['size_mm']:.0f} mm at the nominal field of view) at grey level "
        f"{round(255 * trigger['grey'])}/255 in the {escape(trigger['window'])} window. Data: "
        f"{escape(result['dataset'])}, {result['image_size']} px; {result['test_scans']} test scans, "
        f"{result['other_scans']} of them of the other classes. Models: clean {escape(models['clean']['run'])}, "
        f"poisoned {escape(models['poisoned']['run'])}; {escape(result['created'])}, {result['seconds']:.0f} s "
        f"on {escape(result['device'])}.</p>",
        f"<p class='note'>{escape(METHOD_NOTE)}</p>",
        "<table><tr><th class='l'>model</th>"
        + "".join(f"<th>{escape(label)}</th>" for _, label in MEASURES)
        + "</tr>",
    ]
    for role, label in ROLES:
        outcome = models[role]
        cells = "".join(f"<td>{interval_html(Interval.from_dict(outcome[key]))}</td>" for key, _ in MEASURES)
        parts.append(f"<tr><td class='l'>{escape(label)} · {escape(outcome['run'])}</td>{cells}</tr>")
    parts.append("</table>")
    parts.append(f"<p>{escape(comparison_sentence(result))}</p>")
    parts.append(figure_html(outcome_figure(result)))
    parts += _detection(result["detection"], synthetic)
    parts += _example(result)
    parts.append(f"<p class='note'>{escape(result['summary'])}</p>")
    return parts


def comparison_sentence(result: Mapping[str, Any]) -> str:
    """The two paired comparisons (poisoned minus clean, on the same scans) in plain words."""
    trigger = PairedComparison.from_dict(result["trigger_comparison"])
    accuracy = PairedComparison.from_dict(result["accuracy_comparison"])
    return (
        f"On the same triggered scans, poisoned minus clean model: {trigger.points()} of scans read as "
        f"{result['poison']['target']} ({trigger.test}, {_p(trigger.p_value)}). On the clean test scans: "
        f"{accuracy.points()} accuracy ({accuracy.test}, {_p(accuracy.p_value)})."
    )


def share_text(interval: Interval) -> str:
    """``87% (68–95)``: a share with its 95% interval in plain text (the dashboard's metrics, summaries);
    ``—`` without scans."""
    if not np.isfinite(interval.estimate):
        return "—"
    estimate, low, high = (percent_text(value, 0) for value in (interval.estimate, interval.low, interval.high))
    return f"{estimate}% ({low}–{high})"


def _p(value: float) -> str:
    return "p < 0.001" if value < 0.001 else f"p = {value:.2g}"


def _detection(detection: Mapping[str, Any], synthetic: bool) -> list[str]:
    precision, recall = Interval.from_dict(detection["precision"]), Interval.from_dict(detection["recall"])
    auc = detection.get("auc")
    return [
        "<h3>Finding the poisoned scans</h3>",
        "<table><tr><th class='l'>method</th><th>training scans</th><th>poisoned</th><th>flagged</th>"
        "<th>precision</th><th>chance</th><th>recall</th><th>chance</th><th>ROC AUC</th></tr>"
        f"<tr><td class='l'>{escape(detection['method'])}</td><td>{detection['scans']}</td>"
        f"<td>{detection['poisoned']}</td><td>{detection['flagged']}</td><td>{interval_html(precision)}</td>"
        f"<td>{100 * detection['chance_precision']:.0f}%</td><td>{interval_html(recall)}</td>"
        f"<td>{100 * detection['chance_recall']:.0f}%</td><td>{'—' if auc is None else f'{auc:.2f}'}</td></tr>"
        "</table>",
        figure_html(detection_figure(detection, synthetic)),
    ]


def _example(result: Mapping[str, Any]) -> list[str]:
    example = result.get("example")
    if not example:
        return []
    classes = result["classes"]
    answers = example["answers"]
    words = "; ".join(
        f"{label}: {escape(classes[answers[role][0]])} → {escape(classes[answers[role][1]])}"
        for role, label in ROLES
        if role in answers
    )
    caption = (
        f"Test scan {example['index']}, labelled {escape(classes[example['label']])}, without and with the "
        f"trigger. Answers without → with: {words}."
        + (" Synthetic phantom, not a patient." if result.get("synthetic") else "")
    )
    images = image_html(example["clean_png"], "without the trigger") + image_html(
        example["triggered_png"], "with the trigger"
    )
    return [f"<div class='examples'><figure>{images}<figcaption>{caption}</figcaption></figure></div>"]


# ------------------------------------------------------------------------------------- figures
def outcome_figure(result: Mapping[str, Any]) -> go.Figure:
    """Grouped bars: clean accuracy, trigger success and the base rate, per model, with 95% intervals."""
    figure = go.Figure()
    for index, (role, label) in enumerate(ROLES):
        outcome = result["models"][role]
        intervals = [Interval.from_dict(outcome[key]) for key, _ in MEASURES]
        values = [interval.estimate for interval in intervals]
        figure.add_bar(
            x=list(AXIS_LABELS),
            y=[100 * value for value in values],
            name=label,
            marker_color=(figures.CLEAN, figures.ATTACKED)[index],
            error_y=figures.error_bars(intervals, values),
        )
    figure.update_layout(barmode="group")
    figure.update_yaxes(title="share of test scans (%)", range=[0, 105])
    title = f"Accuracy and trigger success{_tag(result.get('synthetic'))}"
    return figures.style(figure, title=title, height=360)


def detection_figure(detection: Mapping[str, Any], synthetic: bool) -> go.Figure:
    """Histograms of the spectral-signature scores (log10) of the poisoned and the clean training scans."""
    scores = np.log10(np.maximum(np.asarray(detection["scores"], dtype=float), 1e-6))
    poisoned = np.asarray(detection["poisoned_mask"], dtype=bool)
    figure = figures.histogram(
        {"clean training scans": scores[~poisoned], "poisoned training scans": scores[poisoned]},
        x_title="outlier score, log10 (over its class's median)",
        title=f"Spectral signatures of the training scans{_tag(synthetic)}",
    )
    return figure


def _tag(synthetic: Any) -> str:
    return SYNTHETIC_TAG if synthetic else ""
