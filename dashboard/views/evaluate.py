"""Evaluate: run strong attacks over held-out scans in the background, then read the report.

The page builds an :class:`pipeline.evaluation.EvaluationRequest` from its form, starts it with
:func:`pipeline.evaluation.background.start_evaluation_job` and draws the ``report.json`` the job
writes beside its run; past evaluations stay listed. After the demo it starts from the demo's two
models (the comparison the demo is for); before any model exists it points to the demo; when the
evaluation it started ends, the page shows that one.
"""

from __future__ import annotations

import re

import time
from pathlib import Path

import streamlit as st

from dashboard.ui import demo as demo_card
from dashboard.ui.ensembles import ensemble_choice
from dashboard.ui.feedback import shown_errors
from dashboard.ui.job_view import job_panel
from dashboard.ui.report_views import report_view
from dashboard.ui.session import selected_run
from dashboard.ui.status import run_label, usable_runs
from pipeline.attacks import attack_class, available, transfer_attacks
from pipeline.evaluation.background import start_evaluation_job
from pipeline.evaluation.corruption import CT_CORRUPTIONS
from pipeline.evaluation.detectors import DETECTORS
from pipeline.evaluation.report import FILES, read_report
from pipeline.evaluation.request import EVALUATIONS, EvaluationRequest
from pipeline.evaluation.strength import STRENGTH_LEVELS
from pipeline.evaluation.suite import SuiteSettings
from pipeline.jobs import job_state, list_jobs
from pipeline.store import RunRecord
from pipeline.units import format_epsilons

WATCH_KEY = "evaluate.watch"
#: The evaluation shown below the form (the selectbox's key).
SHOWN_KEY = "evaluate:shown"
#: The watched evaluation whose finished report has been brought on screen (once, then the choice is free).
FOLLOWED_KEY = "evaluate.followed"
#: The form starts from the settings' own defaults, as the command line's flags do.
DEFAULTS = SuiteSettings()


def attack_choices() -> list[str]:
    """The default attacks (the reference table's) first; then every other attack with an L∞ budget."""
    others = [
        name
        for name in available()
        if attack_class(name).norm == "linf"
        and any(param.name == "eps" for param in attack_class(name).params)
        and name not in DEFAULTS.attacks
    ]
    return [*DEFAULTS.attacks, *others]


def running_jobs(run_dirs: list[str]) -> list[str]:
    """Evaluation jobs still running under the given runs."""
    return [
        str(path)
        for run_dir in run_dirs
        for path, state in list_jobs(Path(run_dir) / EVALUATIONS)
        if state.running
    ]


def finished_reports(run_dirs: list[str]) -> list[Path]:
    """Folders holding a complete report (from the dashboard or the command line), newest first."""
    found = [
        path.parent for run_dir in run_dirs for path in Path(run_dir).glob(f"{EVALUATIONS}/*/{FILES['json']}")
    ]
    return sorted(found, key=lambda folder: (folder / FILES["json"]).stat().st_mtime, reverse=True)


def report_label(folder: Path) -> str:
    written = time.localtime((folder / FILES["json"]).stat().st_mtime)
    return f"{folder.parent.parent.name} · {time.strftime('%Y-%m-%d %H:%M', written)}"


def default_models(runs: dict[str, RunRecord]) -> list[str]:
    """The models the form starts with: the sidebar's; after the demo, while one of its models (or
    none) is in use, both of the demo's, standard and robust, for the comparison the demo is for."""
    selected = selected_run()
    demo = demo_card.current()
    if demo is not None:
        by_place = {Path(path).resolve(): path for path in runs}
        pair = [by_place.get(Path(model.run_dir).resolve()) for model in demo.models]
        if all(pair) and (selected is None or selected in pair):
            return [path for path in pair if path]
    return [path for path in (selected,) if path in runs]


def no_model_yet() -> None:
    """Nothing to evaluate: the demo's two models are the quickest start; say where to get them."""
    if demo_card.preparing():
        st.info(
            "The demo is being prepared. Its two models appear here as soon as both are ready.",
            icon=":material/hourglass_top:",
        )
        demo_card.progress_panel()
        return
    with st.container(border=True):
        st.markdown("#### No trained model yet")
        st.write(
            "An evaluation needs a trained model, and a comparison two. The demo prepares a standard and an "
            "adversarially trained model on the synthetic phantom: evaluated together, they show what "
            "adversarial training buys. Prepare it on the Attack page, train a model on the Train page, or "
            "import one on the Models page."
        )
        st.page_link(
            "views/attack.py", label="Prepare the demo on the Attack page", icon=":material/science:"
        )


def follow_finished(watched: str | None, reports: dict[str, Path]) -> None:
    """Once the evaluation this session started has finished, show it (not one shown before it)."""
    if (
        watched
        and watched in reports
        and st.session_state.get(FOLLOWED_KEY) != watched
        and job_state(watched).phase == "done"
    ):
        st.session_state[SHOWN_KEY] = watched
        st.session_state[FOLLOWED_KEY] = watched


def settings_form(runs: dict[str, RunRecord]) -> None:
    default = default_models(runs)
    # Enter in a number box must not start minutes of work: only the button does.
    with st.form("evaluate:form", enter_to_submit=False):
        chosen = st.multiselect(
            "Models",
            list(runs),
            default=default,
            key="evaluate:runs",
            format_func=lambda path: run_label(runs[path]),
            help="Compare e.g. a normally and an adversarially trained model on the same scans",
        )
        members, combine = ensemble_choice(
            runs,
            key="evaluate",
            label="And an ensemble of",
            help="Two or more models trained on the same data, combined into one and evaluated beside the "
            "models above: attacked whole, and by transfer from each member alone",
            in_form=True,
        )
        left, middle, right = st.columns(3)
        attacks = left.multiselect(
            "Attacks",
            attack_choices(),
            default=list(DEFAULTS.attacks),
            key="evaluate:attacks",
            # a chip is narrow: the title without its explanation in brackets (the help names them all)
            format_func=lambda name: re.sub(r" \([^)]*\)", "", attack_class(name).title),
        )
        epsilons = middle.text_input(
            "Budgets ε",
            format_epsilons(DEFAULTS.epsilons, ", "),
            key="evaluate:eps",
            help="Comma-separated, in grey levels: 4/255 is 4 of 255 levels (≈ 24 HU)",
        )
        curve = middle.text_input(
            "More budgets for the curve",
            format_epsilons(DEFAULTS.curve_epsilons, ", "),
            key="evaluate:curve",
            help="Accuracy against ε needs several budgets: PGD alone runs at these (the attacks above at "
            "the budgets above); empty for none",
        )
        split = right.selectbox(
            "Scans",
            ["test", "val"],
            key="evaluate:split",
            format_func={"test": "held-out test scans", "val": "validation scans"}.get,
        )
        limit = left.number_input(
            "At most this many scans (0 = all)",
            0,
            100_000,
            0,
            key="evaluate:limit",
            help="Fewer scans give a quick first look; classes are taken in turn",
        )
        strength = middle.toggle(
            "Strength checks",
            value=DEFAULTS.strength,
            key="evaluate:strength",
            help="Stronger attacks beside every figure to catch gradient masking (slower)",
        )
        level = middle.selectbox(
            "Strength of the checks",
            list(STRENGTH_LEVELS),
            index=list(STRENGTH_LEVELS).index(DEFAULTS.strength_settings.level),
            key="evaluate:form:level",
            format_func={
                "quick": f"quick: sized for a CPU (largest ε, {STRENGTH_LEVELS['quick'].scans} scans)",
                "full": "full: the literature's settings (every ε, every scan; for a GPU)",
            }.get,
            help="Quick keeps a whole evaluation of two small models within minutes on a laptop; full runs "
            "PGD-50 with 3 restarts, APGD-20 and AutoAttack with Square at 1,000 queries, as papers report",
        )
        corrupt = left.toggle(
            "CT corruptions at 5 severities",
            value=bool(DEFAULTS.corruptions),
            key="evaluate:form:corruptions",
            help="Low dose, streaks, rings, motion, JPEG, window shift, downsampling: every scan 35 times "
            "through each model, about as long as the attacks",
        )
        explained = left.number_input(
            "Explanations scored (0 = off)",
            0,
            256,
            DEFAULTS.faithfulness_scans,
            key="evaluate:form:faithfulness",
            help="How many scans' Grad-CAM maps are checked for faithfulness (ROAD), clean and attacked",
        )
        minimal = right.toggle(
            "Smallest flipping ε per scan",
            value=DEFAULTS.minimal_epsilon,
            key="evaluate:form:minimal",
            help="For every scan, the smallest PGD budget that changes the answer (a bisection: slower)",
        )
        transfer = right.toggle(
            "Transfer between the models",
            value=DEFAULTS.transfer,
            key="evaluate:form:transfer",
            help="Attacks crafted on one model, replayed on the others (needs two models or more)",
        )
        crafting = right.selectbox(
            "Transfer attack",
            transfer_attacks(),
            index=transfer_attacks().index(DEFAULTS.transfer_attack),
            key="evaluate:form:transfer-attack",
            format_func=lambda name: attack_class(name).title,
            help="What the transfer matrix crafts on each model, at the largest budget: PGD, or an attack "
            "made to transfer (MI-FGSM and the DI-, TI-, NI-, SI-NI- and VMI-FGSM family)",
        )
        detectors = right.multiselect(
            "Adversarial-example detectors",
            list(DETECTORS),
            default=list(DEFAULTS.detectors),
            key="evaluate:form:detectors",
            format_func={"mahalanobis": "Mahalanobis (features)", "squeeze": "Feature squeezing"}.get,
            help="Each flags 5% of clean validation scans by design; measured against PGD and against an "
            "attack that knows the detector (Mahalanobis: Lee et al. 2018; feature squeezing: Xu et al. 2018)",
        )
        sigma = middle.number_input(
            "Certify with noise σ (image scale 0–1; 0 = off)",
            0.0,
            10.0,
            0.0,
            step=0.05,
            key="evaluate:form:sigma",
            help="Randomized smoothing: a guaranteed radius per scan; 0.25 is usual (slow: 1,000 noisy copies per scan)",
        )
        submitted = st.form_submit_button(
            "Start the evaluation", type="primary", icon=":material/play_arrow:"
        )
    if submitted:
        with shown_errors("start the evaluation"):
            suite = SuiteSettings(
                attacks=tuple(attacks),
                epsilons=epsilons,
                curve_epsilons=curve,
                strength=strength,
                strength_settings=STRENGTH_LEVELS[level],
                corruptions=CT_CORRUPTIONS if corrupt else (),
                faithfulness_scans=int(explained),
                minimal_epsilon=minimal,
                certify_sigma=sigma or None,
                transfer=transfer,
                transfer_attack=crafting,
                detectors=tuple(detectors),
            )
            job = start_evaluation_job(
                EvaluationRequest(
                    runs=tuple(chosen),
                    ensemble=tuple(members),
                    combine=combine,
                    suite=suite,
                    split=split,
                    limit=int(limit) or None,
                )
            )
            st.session_state[WATCH_KEY] = str(job)
            st.toast("The evaluation runs in the background; you can leave this page.")


st.title("Evaluate")
st.caption(
    "How well the models hold up under strong attacks on scans they never saw, and whether the "
    "attacks were strong enough to trust the numbers."
)
runs = {str(record.run_dir): record for record in usable_runs()}
if not runs:
    no_model_yet()
    st.stop()
settings_form(runs)

running = running_jobs(list(runs))
watched = st.session_state.get(WATCH_KEY)
# A finished evaluation is shown below as a report; only a running, failed or cancelled one gets a box.
ended = [watched] if watched and watched not in running and job_state(watched).phase != "done" else []
for job_dir in running + ended:
    with st.container(border=True):
        st.markdown(f"**Evaluation {Path(job_dir).name}**")
        kept = (
            "the sections that had finished are kept: choose it under Evaluation below"
            if (Path(job_dir) / FILES["json"]).is_file()
            else "no section had finished, so nothing was kept"
        )
        job_panel(job_dir, key=f"evaluate:{job_dir}", curves=False, what="evaluation", kept=kept)

reports = {str(folder): folder for folder in finished_reports(list(runs))}
if not reports:
    st.caption("Finished evaluations appear here, including those run with `python -m pipeline evaluate`.")
    st.stop()
st.divider()
follow_finished(watched, reports)
chosen = st.selectbox(
    "Evaluation", list(reports), key=SHOWN_KEY, format_func=lambda path: report_label(reports[path])
)
with shown_errors("show the evaluation"):
    folder = reports[chosen]
    report_view(
        read_report(folder / FILES["json"]), {kind: str(folder / name) for kind, name in FILES.items()}
    )
