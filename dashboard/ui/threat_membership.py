"""The Threats page's membership-inference tab: does a model give away which scans it was trained on?

The form builds :class:`pipeline.threats.membership.MembershipSettings` (a standard and an adversarially
trained model side by side by default, after the demo), a background job trains the shadow models and
scores the candidates; the result shows ROC AUC and the true-positive rate at 1% and 0.1% false
positives for each attack and model, each with its 95% interval, and the ROC curves.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard.ui import demo as demo_card
from dashboard.ui.session import selected_run
from dashboard.ui.settings import runs_dir
from dashboard.ui.status import run_label, synthetic_badge
from dashboard.ui.threat_jobs import chosen_result, live_jobs, report_download, settings_controls, start
from pipeline.store import RunRecord
from pipeline.threats.figures import auc_bars, roc_curves
from pipeline.threats.membership import ATTACKS, KIND, MembershipResult, MembershipSettings
from pipeline.threats.report import MEMBERSHIP_NOTE, auc_text
from pipeline.threats.roc import FPR_TARGETS

WATCH_KEY = "threats.membership.watch"
SHOWN_KEY = "threats:membership:shown"
FIELDS = ("shadows", "shadow_epochs", "candidates", "shadow_seed", "keep_models")


def default_targets(runs: dict[str, RunRecord]) -> list[str]:
    """The demo's standard and robust models when both are here (the comparison Song et al. make), else
    the sidebar's model."""
    demo = demo_card.current()
    if demo is not None:
        by_place = {Path(path).resolve(): path for path in runs}
        pair = [by_place.get(Path(model.run_dir).resolve()) for model in demo.models]
        if all(pair):
            return [path for path in pair if path]
    selected = selected_run()
    return [selected] if selected in runs else list(runs)[:1]


def render(runs: dict[str, RunRecord]) -> None:
    """The whole tab for the usable runs ``runs`` (run folder: record)."""
    st.markdown(
        "Given a patient's scan, can someone tell whether it was in the model's **training set**? Each attack "
        "scores every candidate scan; what counts is how many members it finds while almost never accusing a "
        "non-member (Carlini et al. 2022). Adversarially trained models are known to leak more "
        "(Song et al. 2019): compare one with a standard model."
    )
    targets = st.multiselect(
        "Models to attack", list(runs), default=default_targets(runs), key="threats:membership:targets",
        format_func=lambda path: run_label(runs[path]),
        help="Each is attacked on its own training scans (members) and test scans (non-members)",
    )
    if any(runs[path].is_synthetic for path in targets):
        synthetic_badge()
    values = settings_controls(MembershipSettings, FIELDS, "threats:membership")
    minutes = sum(runs[path].training_minutes(values.get("shadow_epochs")) for path in targets) * int(
        values.get("shadows") or 0
    )
    if minutes:
        st.caption(
            f"Each shadow model trains like its target: about {max(minutes, 1):.0f} min of training in all on this "
            "machine (fewer shadow epochs shrink it; the full setting, 16 or more shadows, is for a GPU)."
        )
    if st.button("Start the membership attack", type="primary", icon=":material/play_arrow:",
                 key="threats:membership:start"):
        start(
            lambda: MembershipSettings(targets=tuple(targets), runs_dir=str(runs_dir()),
                                       **{k: v for k, v in values.items() if v is not None}),
            WATCH_KEY, "membership attack",
        )
    live_jobs(list(runs), KIND, WATCH_KEY, "membership attack")
    st.divider()
    shown = chosen_result(list(runs), KIND, WATCH_KEY, SHOWN_KEY)
    if shown is not None and isinstance(shown[1], MembershipResult):
        result_view(*shown)


def result_view(folder: Path, result: MembershipResult) -> None:
    """One finished membership attack: a table over targets and attacks, the AUC bars, the ROC curves."""
    if result.synthetic:
        synthetic_badge()
    rows = []
    for target in result.targets:
        for key, summary in target.attacks.items():
            rows.append({
                "model": target.name, "strategy": target.info.get("strategy"), "attack": ATTACKS[key][0],
                "ROC AUC": auc_text(summary.auc),
                **{f"TPR at {fpr:.1%} FPR": summary.tpr[fpr].format() for fpr in FPR_TARGETS},
            })
    st.dataframe(rows, hide_index=True)
    for target in result.targets:
        floor = target.attacks["loss"].fpr_floor
        st.caption(
            f"**{target.name}**: accuracy on members {target.member_accuracy.format()}, on non-members "
            f"{target.non_member_accuracy.format()} (the gap is overfitting); {target.attacks['loss'].members} "
            f"members and as many non-members, so no false-positive rate below {floor:.1%} can be observed; "
            f"{len(target.shadows)} shadow models of {target.shadow_epochs} epochs ({target.variance} variance)."
        )
    left, right = st.columns(2)
    left.plotly_chart(auc_bars(result), key=f"membership:{folder}:auc", config={"displaylogo": False})
    right.plotly_chart(roc_curves(result), key=f"membership:{folder}:roc", config={"displaylogo": False})
    st.caption(MEMBERSHIP_NOTE)
    report_download(folder, key=f"membership:{folder}:download")
