"""Train: choose a recipe, start it as a background job, and watch it learn.

The page builds a :class:`pipeline.training.TrainConfig` from the controls and calls
:func:`pipeline.training.start_job`; progress and curves are read back from the run directory,
so they keep updating after a refresh and survive a restart of the dashboard.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import streamlit as st

from dashboard.ui.controls import param_control
from dashboard.ui.feedback import shown_errors
from dashboard.ui.job_view import job_panel
from dashboard.ui.run_table import job_states, runs_table
from dashboard.ui.session import dataset_choice, dataset_summary
from dashboard.ui.settings import runs_dir
from dashboard.ui.status import run_label, select_run_next, synthetic_badge, usable_runs
from pipeline.jobs import JobState, job_state
from pipeline.params import params_of
from pipeline.store import list_runs
from pipeline.training import PRESETS, TrainConfig, resume_job, start_job
from pipeline.training.strategies import strategy_class

PRESET_WORDS = {
    "quick": "Quick — a CPU demo in minutes",
    "full": "Full — the reference study's scale, for a GPU",
}
#: Shown directly; every other training setting sits under "Advanced settings".
MAIN = ("arch", "strategy", "epochs", "eps", "steps", "batch_size", "device", "pretrained")
#: Settings given by other widgets or meaningless in the dashboard (the data comes from the Data page).
OTHER = ("transfer_run", "transfer_eps", "init_from", "teacher_run", "victim_run")
#: Architectures too deep to learn from scratch in the quick preset without help.
DEEP = ("resnet50", "resnet101")


def settings_form(preset: str) -> dict[str, Any]:
    defaults = TrainConfig.from_preset(preset)
    fields = {
        name: dataclasses.replace(param, default=getattr(defaults, name))
        for name, param in params_of(TrainConfig).items()
        if name not in OTHER
    }
    values: dict[str, Any] = {}
    for number, param in enumerate(fields[name] for name in MAIN):
        if number % 3 == 0:
            columns = st.columns(3)
        with columns[number % 3]:
            values[param.name] = param_control(param, f"train:{preset}:{param.name}")
    st.caption(strategy_class(values["strategy"]).description)
    # the strategies that learn from another saved run: which run, in one select each
    source_runs = {
        "transfer": ("transfer_run", "Model that crafts the transfer examples", None),
        "distillation": (
            "teacher_run",
            "Teacher: the model whose soft labels are distilled",
            "Any saved model. Its answers, softened at the temperature under Advanced settings, are "
            "what the new model learns; starting from the teacher itself (Start from) is the fast way.",
        ),
        "extraction": (
            "victim_run",
            "Victim: the model whose answers are learnt",
            "Any saved model of the same scan size. Only its answers on these scans are learnt, never their "
            "labels (what it answers: victim answers, under Advanced settings). The Threats page does this for "
            "several query budgets and attacks the copies.",
        ),
    }
    if values["strategy"] in source_runs:
        name, label, help_text = source_runs[values["strategy"]]
        saved = {str(record.run_dir): record for record in usable_runs()}
        values[name] = st.selectbox(
            label,
            list(saved) or [None],
            format_func=lambda path: run_label(saved[path]) if path else "no saved model",
            key=f"train:{preset}:{name}",
            help=help_text,
        )
    starts = {str(record.run_dir): record for record in usable_runs()}
    values["init_from"] = st.selectbox(
        "Start from",
        [None, *starts],
        format_func=lambda path: run_label(starts[path]) if path else "new weights",
        key=f"train:{preset}:init_from",
        help="Continue from a saved model of the same architecture, e.g. fine-tune a normally trained "
        "model adversarially: the cheap way to a robust model when training one from scratch is too slow.",
    )
    if (
        preset == "quick"
        and values["strategy"] not in ("standard", "transfer", "distillation", "extraction")
        and not values["init_from"]
    ):
        st.info(
            "On a CPU, adversarial training from scratch rarely gets past answering one class within "
            "the quick preset. Train a normal model first and start from it here: a few adversarial "
            "epochs then make it robust (bench/RESULTS.md).",
            icon=":material/lightbulb:",
        )
    with st.expander("Advanced settings"):
        columns = st.columns(3)
        for number, param in enumerate(item for name, item in fields.items() if name not in MAIN):
            with columns[number % 3]:
                value = param_control(param, f"train:{preset}:{param.name}")
                if value is not None:
                    values[param.name] = value
    from_scratch = not (values["init_from"] or values["pretrained"] or values.get("zero_init_residual"))
    if preset == "quick" and values["arch"] in DEEP and from_scratch:
        st.info(
            "A ResNet50 or ResNet101 trained from scratch on a CPU stays near chance within the quick "
            "preset. Turn on zero_init_residual under Advanced settings and give it about 12 epochs "
            "(bench/RESULTS.md).",
            icon=":material/lightbulb:",
        )
    return values


def start(preset: str, values: dict[str, Any]) -> None:
    config = TrainConfig.from_preset(preset, **values, data=dataset_choice())
    st.session_state["train.watch"] = str(start_job(config, runs_dir()))


def data_line(preset: str) -> None:
    """The data the model will train on: the Data page's choice, split as the Data page shows it."""
    choice = dataset_choice()
    st.markdown(f"**Data** · {dataset_summary(choice)} (change it on the Data page)")
    if choice.synthetic:
        synthetic_badge()
    suggested = TrainConfig.from_preset(preset).data.image_size
    if choice.image_size != suggested:
        st.caption(f"The {preset} preset is tuned for {suggested} px scans; the Data page sets the size.")


def resume_stopped(states: dict[str, JobState]) -> None:
    stopped = [path for path, state in states.items() if state.phase in ("cancelled", "failed")]
    if not stopped:
        return
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    chosen = left.selectbox(
        "Resume a stopped run from its last finished epoch",
        stopped,
        format_func=lambda path: Path(path).name,
        key="train:resume-run",
    )
    if right.button("Resume", icon=":material/replay:", key="train:resume"):
        with shown_errors("resume the run"):
            st.session_state["train.watch"] = str(resume_job(chosen))
            st.rerun()


st.title("Train")
st.caption(
    "Teach a model to read the scans — normally, or with attacks mixed in so it learns to resist them."
)
preset = (
    st.segmented_control(
        "Preset", list(PRESETS), default="quick", format_func=PRESET_WORDS.get, key="train:preset"
    )
    or "quick"
)
data_line(preset)
values = settings_form(preset)
if st.button("Start training", type="primary", icon=":material/play_arrow:", key="train:start"):
    with shown_errors("start the training"):
        start(preset, values)
        st.toast("Training started in the background. You can leave this page; it keeps running.")

st.subheader("Progress")
records = list_runs(runs_dir())
states = job_states(records)
watched = st.session_state.get("train.watch")
shown = [path for path, state in states.items() if state.running]
if watched and watched not in shown:
    shown.append(watched)
if not shown:
    st.caption("No training is running. Started trainings appear here with live curves.")
for run_dir in shown:
    with st.container(border=True):
        st.markdown(f"**{Path(run_dir).name}**")
        if not job_panel(run_dir, key=f"train:{run_dir}") and job_state(run_dir).phase == "done":
            if st.button("Use this model", key=f"train:use:{run_dir}", icon=":material/check:"):
                select_run_next(run_dir)
                st.rerun()

st.subheader("All runs")
if records:
    runs_table(records, states)
    resume_stopped(states)
else:
    st.caption("No runs yet.")
