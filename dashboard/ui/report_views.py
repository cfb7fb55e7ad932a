"""Drawing a saved evaluation (``report.json``): tables, confusion matrices, curves, checks.

The dashboard reads the report the background job wrote, so what is shown is exactly what the
CSV and HTML downloads contain, and it is still there after a refresh or a restart. Its figures
are the HTML report's own (:mod:`pipeline.evaluation.figures`), drawn from the same typed results
rebuilt from the saved report.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import streamlit as st

from dashboard.ui.controls import grey_levels_text
from dashboard.ui.status import synthetic_badge
from pipeline.attacks import attack_class
from pipeline.evaluation import figures
from pipeline.evaluation.calibration import CONFIDENT, Calibration
from pipeline.evaluation.certify import CertifiedCurve
from pipeline.evaluation.corruption import SEVERITIES, CorruptionErrors, CorruptionReport
from pipeline.evaluation.ensemble import ENSEMBLE_NOTE, EnsembleResult, accuracy_rows, shared_rows
from pipeline.evaluation.detectors import DETECTOR_NOTE, detection_sentence, detector_table
from pipeline.evaluation.faithfulness import FaithfulnessReport
from pipeline.evaluation.intervals import Interval, PairedComparison, percent_text
from pipeline.evaluation.reference import COLUMN_LABELS
from pipeline.evaluation.report import stopped_note
from pipeline.evaluation.sweeps import MinimalEpsilon, SweepResult
from pipeline.evaluation.transfer import TransferResult
from pipeline.evaluation.verdict import VERDICT_NOTE, verdict_table
from pipeline.units import format_epsilon, format_share, share_decimals

CHART = {"displaylogo": False}


def percent(value: Optional[float]) -> str:
    """A share of the report's scans: whole percent, as the test sets of this lab are small."""
    return format_share(value)


def with_interval(value: Optional[float], interval: Optional[dict[str, Any]]) -> str:
    """``43% (35–51)``: a share and its 95% interval, where the report has one (older: none)."""
    if interval is None or value is None:
        return percent(value)
    return interval_cell(Interval.from_dict(interval))


def interval_cell(interval: Interval, digits: Optional[int] = None) -> str:
    """A share and its 95% interval in percent, ``43% (35–51)``, as precise as its scans allow unless
    ``digits`` is given; a dash when there is none."""
    if not math.isfinite(interval.estimate):
        return "—"
    digits = share_decimals(interval.scans) if digits is None else digits
    shown = f"{percent_text(interval.estimate, digits)}%"
    if not math.isfinite(interval.low):
        return shown
    return f"{shown} ({percent_text(interval.low, digits)}–{percent_text(interval.high, digits)})"


def chart(figure: Any, key: str, caption: str) -> None:
    """A figure with its one-line reading underneath."""
    st.plotly_chart(figure, key=key, config=CHART)
    st.caption(caption)


def attack_label(name: str) -> str:
    """An attack as the tables name it (``CW-L∞``), never by its registry name (``cw-linf``)."""
    return COLUMN_LABELS.get(name) or attack_class(name).title


def header(report: dict[str, Any]) -> None:
    settings = report["settings"]
    attacks = ", ".join(map(attack_label, settings["attacks"]))
    labels = settings["epsilon_labels"]
    curve = [label for label in settings.get("curve_epsilon_labels") or [] if label not in labels]
    shown = curve and "pgd" in settings["attacks"]
    curve_text = f" (PGD also at {', '.join(curve)}, for the curve)" if shown else ""
    st.markdown(
        f"**{report['scans']} {report['split']} scans** of {report['dataset']} · attacks "
        f"{attacks} at ε = {', '.join(settings['epsilon_labels'])}{curve_text} · "
        f"{settings['steps']} steps · {report['device']} · {report['seconds']:.0f} s · {report['created']}"
    )
    level = report.get("strength_level")
    groups = report.get("groups")
    st.caption(
        "In brackets: 95% intervals"
        + (
            f", resampling the {groups} groups of related scans the grouped split found."
            if groups
            else " (Wilson; the scans counted as independent)."
        )
        + (f" Strength checks at the **{level}** level." if level else "")
        + (" The full level (literature settings, every ε, every scan) is one choice away in the form above."
           if level and level != "full" else "")
    )
    if report["synthetic"]:
        synthetic_badge()
        st.caption(
            "Synthetic phantom: these figures show how the methods behave, not how a model reads real scans."
        )


def reference_tables(report: dict[str, Any]) -> None:
    for table in report["reference_tables"]:
        st.markdown(f"##### Accuracy at ε = {grey_levels_text(table['eps'])}")
        rows = [
            {
                "model": row["model"],
                **{
                    COLUMN_LABELS.get(column, column): with_interval(
                        row.get(column), (row.get("intervals") or {}).get(column)
                    )
                    for column in table["columns"]
                },
                "worst case, all attacks": percent(row.get("worst_case_all_attacks")),
                "trained classifier?": trained_cell(row.get("trained_classifier")),
            }
            for row in table["rows"]
        ]
        st.table(rows, hide_index=True)
        study = table["reference_study"]
        st.caption(f"For comparison only, {study['source']}:")
        # Its own table: its columns are not ours (its CW was CW-L2, unbounded), so no cell is shared.
        st.table(
            [
                {
                    "model": name,
                    **{COLUMN_LABELS[column]: f"{value:.1f}%" for column, value in values.items()},
                }
                for name, values in study["rows"].items()
            ],
            hide_index=True,
        )
        st.caption(
            f"Share of scans each model still reads correctly under each attack. The study's figures are "
            f"quoted as published: {study['caveat']}"
        )


def defence_verdicts(report: dict[str, Any]) -> None:
    """The defence verdict table (naive and adaptive attack side by side), when the evaluation has one."""
    verdicts = report.get("defence_verdicts") or []
    if not verdicts:
        return
    st.markdown(f"##### Defence verdicts at ε = {grey_levels_text(verdicts[0]['eps'])}")
    st.table(verdict_table(verdicts), hide_index=True)
    st.caption(VERDICT_NOTE)


def ensembles(report: dict[str, Any]) -> None:
    """Each ensemble's members and whole under one attack, and how often its members fail together."""
    for number, model in enumerate(report["models"]):
        for saved in model.get("defenses") or []:
            if saved.get("kind") != "ensemble":
                continue
            result = EnsembleResult.from_dict(saved)
            st.markdown(f"##### Ensemble: {result.defense}")
            st.write(result.sentence())
            if result.surrogate:
                st.caption(
                    "A majority vote has no gradient: the whole-ensemble figure is an attack through a "
                    "differentiable surrogate, the soft vote (the members' mean probabilities)."
                )
            st.table(accuracy_rows(result), hide_index=True)
            chart(
                figures.ensemble_accuracies(result),
                f"evaluate:ensemble:{number}",
                "Grey: each member under its own attack; blue: the ensemble under the attack crafted on one "
                "member (transfer); red: the ensemble attacked whole. Ticks: clean accuracy.",
            )
            st.markdown("###### How often the members fail on the same scans")
            st.table(shared_rows(result), hide_index=True)
            chart(
                figures.shared_failures(result),
                f"evaluate:ensemble-shared:{number}",
                "Scans all, a majority and any of the members get wrong: clean, each member under its own "
                "attack, and all of them on the scans crafted against the whole ensemble.",
            )
            st.caption(ENSEMBLE_NOTE)


def detectors(report: dict[str, Any]) -> None:
    """Each adversarial-example detector against PGD and against its adaptive attack, when the
    evaluation measured detectors: the report's table, and one sentence per detector."""
    rows = detector_table(report["models"])
    if not rows:
        return
    first = next(d for model in report["models"] for d in model.get("detectors") or [])
    st.markdown(f"##### Adversarial-example detectors at ε = {grey_levels_text(first['eps'])}")
    st.table(rows, hide_index=True)
    for model in report["models"]:
        for saved in model.get("detectors") or []:
            st.markdown(f"**{model['name']}**: {detection_sentence(saved)}")
    st.caption(DETECTOR_NOTE)


def trained_cell(check: Optional[dict[str, Any]]) -> str:
    """The table cell for :mod:`pipeline.evaluation.degenerate`'s judgment ("—" in older reports); the
    reasons stand in full above the tabs."""
    if not check:
        return "—"
    return "⚠ no (see above)" if check["flagged"] else "yes"


def untrained_warnings(report: dict[str, Any]) -> None:
    """Above every figure: each model whose answers show it is not a trained classifier."""
    for model in report["models"]:
        check = model["report"].get("trained_classifier")
        if check and check["flagged"]:
            st.warning(f"**{model['name']}**: {check['reason']}.", icon=":material/block:")


def confusion_matrices(report: dict[str, Any]) -> None:
    for model in report["models"]:
        result = model["report"]
        classes = result["classes"]
        panels = [("clean scans", result["clean"])] + [
            (attack["attack"]["label"], attack) for attack in result["attacks"]
        ]
        st.markdown(f"##### {model['name']}")
        labels = [label for label, _ in panels[1:]]
        # The table's attacks at its largest budget show the most; any other (a curve's) is one click away.
        largest = max(report["settings"]["epsilons"])
        at_largest = [
            label
            for label, attack in panels[1:]
            if math.isclose(float(attack["attack"]["params"].get("eps") or -1.0), largest, rel_tol=1e-9)
        ]
        shown = st.multiselect(
            "Attacks to show",
            labels,
            default=at_largest or labels[-3:],
            key=f"evaluate:cm:{model['name']}",
            # a chip is narrow: the attack's explanation in brackets stays in the chart's title
            format_func=lambda label: re.sub(r" \([^)]*\)", "", label),
        )
        chosen = [panels[0]] + [panel for panel in panels[1:] if panel[0] in shown]
        columns = st.columns(min(len(chosen), 4))
        for number, (label, outcome) in enumerate(chosen):
            with columns[number % len(columns)]:
                st.plotly_chart(
                    figures.confusion(
                        np.asarray(outcome["confusion"]),
                        classes,
                        # two lines: in a quarter of the page one would run past the plot's edge
                        title=f"{label}<br>{percent(outcome['accuracy'])} correct",
                    ),
                    key=f"evaluate:cm:{model['name']}:{label}",
                    # a quarter of the page is too narrow for plotly's mode bar: it wraps into rows over
                    # the title; these small tables need no zoom (the fullscreen button stays Streamlit's)
                    config={**CHART, "displayModeBar": False},
                )
        st.caption(
            "Rows: the true diagnosis; columns: what the model said. The diagonal is correct; an attack "
            "moves counts off it, e.g. malignant scans read as benign."
        )


def epsilon_curves(report: dict[str, Any]) -> None:
    sweeps = [SweepResult.from_dict(model["sweep"]) for model in report["models"]]
    if not any(sweep.epsilons for sweep in sweeps):
        return
    chart(
        figures.epsilon_curves(sweeps),
        "evaluate:curves",
        "How quickly each model loses accuracy as the allowed change per pixel grows (a colour per model, "
        "a dash per attack; bars: 95% intervals). 'worst case' counts a scan as robust only if it survives "
        "every attack.",
    )


def minimal_epsilons(report: dict[str, Any]) -> None:
    results = [
        MinimalEpsilon.from_dict(model["minimal_epsilon"])
        for model in report["models"]
        if model.get("minimal_epsilon")
    ]
    if not results:
        return
    if not any(np.isfinite(result.values[result.correct]).any() for result in results):
        st.caption(
            "No correctly read scan flipped within the largest budget searched by the minimal-ε search."
        )
        return
    chart(
        figures.minimal_epsilon_histogram(results),
        "evaluate:mineps",
        "Per correctly read scan, the smallest PGD budget that changes the answer; further right is more "
        "robust. Scans that no searched budget flips are left out.",
    )


def transfer(report: dict[str, Any]) -> None:
    if not report.get("transfer"):
        return
    chart(
        figures.transfer_heatmap(TransferResult.from_dict(report["transfer"])),
        "evaluate:transfer",
        "Accuracy of each model (columns) on attacked scans crafted on another model (rows): a low value off "
        "the diagonal means an attacker does not need access to that model.",
    )


def strength(report: dict[str, Any]) -> None:
    found = False
    for model in report["models"]:
        for check in model.get("strength") or []:
            found = True
            flagged = check["masking"] or check["weak_attack"] or check.get("degenerate", False)
            (st.warning if flagged else st.success)(
                f"**{model['name']}** at ε = {format_epsilon(check['eps'])}: {check['verdict']}",
                icon=":material/warning:" if flagged else ":material/verified:",
            )
            # A static table: its sentences wrap instead of being cut off at the cell's edge.
            st.table(
                [
                    {
                        "check": item["title"],
                        "flag": "⚠" if item["flagged"] else "ok",
                        "numbers": item["detail"],
                        "meaning": item["explanation"],
                    }
                    for item in check["checks"]
                ],
                hide_index=True,
                border="horizontal",
            )
    if not found:
        st.caption("Strength checks were not run for this evaluation.")
    else:
        st.caption(
            "Checks that the attacks were strong enough to trust the numbers: a one-step attack beating an "
            "iterative one, or accuracy not falling as ε grows, are signs of gradient masking."
        )


def certified(report: dict[str, Any]) -> None:
    curves = [
        (model["name"], CertifiedCurve.from_dict(model["certified"]))
        for model in report["models"]
        if model.get("certified")
    ]
    if not curves:
        return
    chart(
        figures.certified_curves(curves),
        "evaluate:certified",
        "The share of scans whose answer is guaranteed not to change for any perturbation of at most this "
        "size: a proof, not an attack.",
    )


def comparisons(report: dict[str, Any]) -> None:
    """Each model against the baseline, scan by scan, in plain words and as a forest plot."""
    found = [PairedComparison.from_dict(item) for item in report.get("comparisons") or []]
    if not found:
        st.caption("Paired comparisons need two models or more evaluated together.")
        return
    st.markdown(f"##### Compared with {report.get('baseline')}, on the same scans")
    for comparison in found:
        if comparison.clear:
            st.markdown(f"**{comparison.sentence}**")
        else:
            st.caption(comparison.sentence)
    chart(
        figures.comparison_forest(found),
        "evaluate:comparisons",
        "Only scans one model gets right and the other wrong carry evidence (McNemar's test). A coloured "
        "point's interval excludes zero: that difference is more than chance on scans like these.",
    )


def calibration(report: dict[str, Any]) -> None:
    """ECE and confidently wrong answers per model and condition, and the reliability diagram."""
    rows, shown = [], []
    for model in report["models"]:
        results = [Calibration.from_dict(item) for item in model.get("calibration") or []]
        rows += [
            {
                "model": model["name"],
                "condition": result.condition,
                # as the reliability diagram's legend and the HTML report write them
                "accuracy": format_share(result.accuracy, result.scans),
                "mean confidence": format_share(result.mean_confidence, result.scans),
                "ECE": format_share(result.ece, result.scans),
                "confidence of wrong answers": format_share(result.wrong_confidence, result.scans),
                f"wrong with ≥ {CONFIDENT:.0%} confidence": interval_cell(result.confidently_wrong),
            }
            for result in results
        ]
        shown += [(model["name"], result) for result in results[:1] + results[-1:]]
    if not rows:
        st.caption("Calibration was not measured in this evaluation.")
        return
    st.markdown("##### Calibration: does the model know when it is wrong?")
    st.dataframe(rows, hide_index=True)
    chart(
        figures.reliability_diagram(shown),
        "evaluate:reliability",
        "On the dotted line a model is right as often as it is sure. An attack that flips a scan usually "
        "leaves the model sure of its wrong answer, the clinically harmful case counted in the last column.",
    )


def corruptions(report: dict[str, Any]) -> None:
    """Error under each CT corruption and severity, and CE / mCE against the baseline."""
    found = [
        (CorruptionReport.from_dict(model["corruption"]), model.get("corruption_errors"))
        for model in report["models"]
        if model.get("corruption")
    ]
    if not found:
        st.caption(
            "CT corruptions were not run; switch them on in the form above (they take about as long as the "
            "attacks)."
        )
        return
    st.markdown("##### CT corruptions at five severities")
    for result, errors in found:
        summary = CorruptionErrors.from_dict(errors) if errors else None
        st.markdown(
            f"**{result.model}**: clean error {percent(result.clean_error)}"
            + (
                f"; mCE {percent_text(summary.mce.estimate, 0)}% and relative mCE "
                f"{percent_text(summary.relative_mce.estimate, 0)}% of {summary.baseline}'s"
                if summary
                else ""
            )
        )
        st.dataframe(
            [
                {
                    "corruption": name,
                    **{
                        f"severity {severity}": interval_cell(result.error_interval(c, s), 0)
                        for s, severity in enumerate(SEVERITIES)
                    },
                    "mean": interval_cell(result.mean_error_interval(c), 0),
                    **({"CE": interval_cell(summary.ce[c], 0)} if summary else {}),
                }
                for c, name in enumerate(result.corruptions)
            ],
            hide_index=True,
        )
    chart(
        figures.corruption_errors([result for result, _ in found]),
        "evaluate:corruptions",
        "Error of each model under scanner and PACS accidents (lowered dose, streaks, rings, motion, JPEG, a "
        "shifted window, a coarser matrix), averaged over five severities; CE is relative to the baseline "
        "model (100% = the baseline's error), as ImageNet-C and MedMNIST-C report it.",
    )


def faithfulness(report: dict[str, Any]) -> None:
    """ROAD scores of each model's Grad-CAM maps, clean and attacked."""
    found = [
        FaithfulnessReport.from_dict(model["faithfulness"])
        for model in report["models"]
        if model.get("faithfulness")
    ]
    for model in report["models"]:
        if (model.get("skipped") or {}).get("faithfulness"):
            st.caption(f"{model['name']}: faithfulness not measured: {model['skipped']['faithfulness']}")
    if not found:
        return
    st.markdown("##### Faithfulness of the explanations")
    # A static table: the maps' description and the reasons wrap instead of being cut off.
    st.table(
        [
            {
                "model": result.model,
                "maps": f"{result.method}, {result.layer} ({result.grid[0]}×{result.grid[1]} cells), "
                f"{result.imputation} imputation",
                "clean ROAD": f"{result.clean.mean.estimate:+.2f}",
                f"under {result.attacked.condition}": f"{result.attacked.mean.estimate:+.2f}",
                "change": f"{result.change.estimate:+.2f} ({result.change.bounds(0)} hundredths)",
                "left out": result.clean.problem or result.attacked.problem or "none",
            }
            for result in found
        ],
        hide_index=True,
    )
    chart(
        figures.faithfulness_scores(found),
        "evaluate:faithfulness",
        "ROAD: above 0, removing what the map marks hurts the answer more than removing the rest, so the map "
        "shows what the answer rests on; near 0 it is no better than a random map. Under attack the map "
        "explains the wrong answer.",
    )


def timing(report: dict[str, Any]) -> None:
    """Where the evaluation's time went."""
    rows = [
        {"model": model["name"], **{part: f"{seconds:.0f} s" for part, seconds in model["seconds"].items()}}
        for model in report["models"]
        if model.get("seconds")
    ]
    if rows:
        st.markdown("##### Where the time went")
        st.dataframe(rows, hide_index=True)


def downloads(outputs: dict[str, str]) -> None:
    columns = st.columns(3)
    for column, (kind, label, mime) in zip(
        columns,
        (
            ("csv", "Results (CSV)", "text/csv"),
            ("html", "Full report (HTML)", "text/html"),
            ("json", "Everything (JSON)", "application/json"),
        ),
    ):
        path = outputs.get(kind)
        if path and Path(path).is_file():
            column.download_button(
                label,
                Path(path).read_bytes(),
                file_name=Path(path).name,
                mime=mime,
                key=f"evaluate:download:{kind}",
                icon=":material/download:",
            )


def report_view(report: dict[str, Any], outputs: dict[str, str]) -> None:
    header(report)
    if report.get("complete") is False:
        st.warning(stopped_note(report.get("stopped")), icon=":material/hourglass_bottom:")
    untrained_warnings(report)
    (
        table_tab,
        comparison_tab,
        calibration_tab,
        corruption_tab,
        explanation_tab,
        confusion_tab,
        curve_tab,
        strength_tab,
        certified_tab,
    ) = st.tabs(
        [
            "Reference table",
            "Comparison",
            "Calibration",
            "Corruptions",
            "Explanations",
            "Confusion matrices",
            "Robustness curves",
            "Strength checks",
            "Certified",
        ]
    )
    with table_tab:
        reference_tables(report)
        defence_verdicts(report)
        ensembles(report)
        detectors(report)
        transfer(report)
    with comparison_tab:
        comparisons(report)
    with calibration_tab:
        calibration(report)
    with corruption_tab:
        corruptions(report)
    with explanation_tab:
        faithfulness(report)
    with confusion_tab:
        confusion_matrices(report)
    with curve_tab:
        epsilon_curves(report)
        minimal_epsilons(report)
    with strength_tab:
        strength(report)
    with certified_tab:
        certified(report)
        if not any(model.get("certified") for model in report["models"]):
            st.caption("Certification was not run for this evaluation.")
        timing(report)
    downloads(outputs)
