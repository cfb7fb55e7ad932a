"""The Threats page's model-extraction tab: steal a saved model from its answers, then attack with the copy.

The form builds :class:`pipeline.threats.extraction.ExtractionSettings`, a background job trains a
surrogate per query budget and measures it; the result shows agreement and transfer success against the
query budget, beside the white-box and random-noise successes, every figure with its 95% interval.
"""

from __future__ import annotations

from pathlib import Path
import streamlit as st

from dashboard.ui.session import selected_run
from dashboard.ui.settings import runs_dir
from dashboard.ui.status import run_label, synthetic_badge
from dashboard.ui.threat_jobs import chosen_result, live_jobs, report_download, settings_controls, start
from pipeline.store import RunRecord
from pipeline.threats.extraction import KIND, ExtractionResult, ExtractionSettings
from pipeline.threats.figures import agreement_curve, transfer_curve
from pipeline.threats.report import EXTRACTION_NOTE

WATCH_KEY = "threats.extraction.watch"
SHOWN_KEY = "threats:extraction:shown"
#: Settings drawn as widgets, in this order (the victim and the budgets have widgets of their own).
FIELDS = ("answers", "epochs", "arch", "attack", "eps", "steps", "query_seed", "limit", "keep_models")
DEFAULTS = ExtractionSettings(victim="(any)")


def render(runs: dict[str, RunRecord]) -> None:
    """The whole tab for the usable runs ``runs`` (run folder: record)."""
    st.markdown(
        "Someone who can only **query** the deployed model sends it scans of their own and trains a copy "
        "(a *surrogate*) on its answers. How many queries does a usable copy take, and do attacks crafted on "
        "the copy fool the original? (Tramèr et al. 2016; Papernot et al. 2017.)"
    )
    _form(runs)
    live_jobs(list(runs), KIND, WATCH_KEY, "extraction")
    st.divider()
    shown = chosen_result(list(runs), KIND, WATCH_KEY, SHOWN_KEY)
    if shown is not None and isinstance(shown[1], ExtractionResult):
        result_view(*shown)


def _form(runs: dict[str, RunRecord]) -> None:
    selected = selected_run()
    choices = list(runs)
    victim = st.selectbox(
        "Victim: the deployed model", choices, index=choices.index(selected) if selected in runs else 0,
        key="threats:extraction:victim", format_func=lambda path: run_label(runs[path]),
        help="The saved model the attacker can only query",
    )
    if runs[victim].is_synthetic:
        synthetic_badge()
    budgets = st.text_input(
        "Query budgets", ", ".join(map(str, DEFAULTS.budgets)), key="threats:extraction:budgets",
        help="Comma-separated: one surrogate is trained per budget, from that many answers of the victim. "
        "Each costs a training; on a CPU start with a few hundred.",
    )
    values = settings_controls(ExtractionSettings, FIELDS, "threats:extraction")
    minutes = _training_minutes(runs[victim], budgets, int(values.get("epochs") or 0))
    if minutes:
        st.caption(
            f"Training the surrogates takes about {max(minutes, 1):.0f} min on this machine, judged by how fast "
            "the victim trained (a surrogate of another architecture differs)."
        )
    if st.button("Start the extraction", type="primary", icon=":material/play_arrow:", key="threats:extraction:start"):
        start(
            lambda: ExtractionSettings(victim=victim, runs_dir=str(runs_dir()), budgets=budgets,
                                       **{k: v for k, v in values.items() if v is not None}),
            WATCH_KEY, "extraction",
        )


def result_view(folder: Path, result: ExtractionResult) -> None:
    """One finished extraction: the key figures, the table, both figures and the report."""
    if result.synthetic:
        synthetic_badge()
    st.markdown(
        f"**{result.victim}** answered with **{result.settings.get('answers')}**; {result.scans} of its test scans "
        f"measured; attack {result.attack_label}."
    )
    if result.surrogates:
        best = result.surrogates[-1]
        figures = (
            (f"Agreement from {best.queries} queries", best.agreement,
             "Share of the victim's test scans the surrogate answers as the victim does"),
            ("Transfer success", best.transfer,
             "Share of the scans the victim classifies correctly that attacks crafted on that surrogate fool"),
            ("White-box success", result.white_box, "The same attack with the victim's own weights"),
            ("Random ±ε noise", result.noise, "Chance: every pixel moved by the budget at random"),
        )
        for column, (label, interval, help_text) in zip(st.columns(len(figures)), figures):
            column.metric(label, interval.format(0).split(" (")[0], help=help_text)
            column.caption(interval.bounds(0))
    st.dataframe(
        [
            {"queries": s.queries, "agreement": s.agreement.format(), "transfer success": s.transfer.format(),
             "surrogate's accuracy": s.accuracy.format(), "training (s)": round(s.seconds)}
            for s in result.surrogates
        ],
        hide_index=True,
    )
    left, right = st.columns(2)
    left.plotly_chart(agreement_curve(result), key=f"extraction:{folder}:agreement", config={"displaylogo": False})
    right.plotly_chart(transfer_curve(result), key=f"extraction:{folder}:transfer", config={"displaylogo": False})
    st.caption(EXTRACTION_NOTE)
    report_download(folder, key=f"extraction:{folder}:download")


def _training_minutes(victim: RunRecord, budgets: str, epochs: int) -> float:
    """How long the surrogates for ``budgets`` (the form's text) take to train for ``epochs`` each, at the
    victim's own training speed (images per second, from its epochs); 0 when either is unknown."""
    speeds = [float(line["images_per_s"]) for line in victim.metrics if line.get("images_per_s")]
    try:
        queries = sum(int(part) for part in budgets.split(",") if part.strip())
    except ValueError:
        return 0.0
    if not speeds or not queries:
        return 0.0
    return queries * epochs / (sum(speeds) / len(speeds)) / 60
