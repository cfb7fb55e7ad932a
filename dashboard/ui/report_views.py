"""Drawing a saved evaluation (``report.json``): tables, confusion matrices, curves, checks.

The dashboard reads the report the background job wrote, so what is shown is exactly what the
CSV and HTML downloads contain, and it is still there after a refresh or a restart. Its figures
are the HTML report's own (:mod:`pipeline.evaluation.figures`), drawn from the same typed results
rebuilt from the saved report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import streamlit as st

from dashboard.ui.controls import grey_levels_text
from dashboard.ui.status import synthetic_badge
from pipeline.attacks import attack_class
from pipeline.evaluation import figures
from pipeline.evaluation.certify import CertifiedCurve
from pipeline.evaluation.reference import COLUMN_LABELS
from pipeline.evaluation.report import INCOMPLETE
from pipeline.evaluation.sweeps import MinimalEpsilon, SweepResult
from pipeline.evaluation.transfer import TransferResult
from pipeline.units import format_epsilon, format_share

CHART = {"displaylogo": False}


def percent(value: Optional[float]) -> str:
    """A share of the report's scans: whole percent, as the test sets of this lab are small."""
    return format_share(value)


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
    st.markdown(
        f"**{report['scans']} {report['split']} scans** of {report['dataset']} · attacks "
        f"{attacks} at ε = {', '.join(settings['epsilon_labels'])} · "
        f"{settings['steps']} steps · {report['device']} · {report['seconds']:.0f} s · {report['created']}"
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
                    COLUMN_LABELS.get(column, column): percent(row.get(column)) for column in table["columns"]
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
        # The attacks run last, at the largest budget, show the most; any other is one click away.
        shown = st.multiselect(
            "Attacks to show", labels, default=labels[-3:], key=f"evaluate:cm:{model['name']}"
        )
        chosen = [panels[0]] + [panel for panel in panels[1:] if panel[0] in shown]
        columns = st.columns(min(len(chosen), 4))
        for number, (label, outcome) in enumerate(chosen):
            with columns[number % len(columns)]:
                st.plotly_chart(
                    figures.confusion(
                        np.asarray(outcome["confusion"]),
                        classes,
                        title=f"{label} · {percent(outcome['accuracy'])}",
                    ),
                    key=f"evaluate:cm:{model['name']}:{label}",
                    config=CHART,
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
        "a dash per attack). 'worst case' counts a scan as robust only if it survives every attack.",
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
        st.warning(INCOMPLETE, icon=":material/hourglass_bottom:")
    untrained_warnings(report)
    tabs = st.tabs(
        ["Reference table", "Confusion matrices", "Robustness curves", "Strength checks", "Certified"]
    )
    with tabs[0]:
        reference_tables(report)
        transfer(report)
    with tabs[1]:
        confusion_matrices(report)
    with tabs[2]:
        epsilon_curves(report)
        minimal_epsilons(report)
    with tabs[3]:
        strength(report)
    with tabs[4]:
        certified(report)
        if not any(model.get("certified") for model in report["models"]):
            st.caption("Certification was not run for this evaluation.")
    downloads(outputs)
