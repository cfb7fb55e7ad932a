"""Models: every run with its settings and results; compare, export, import, delete; each run's
entry in MLflow and the switch that turns tracking on or off.

Each action is one call into :mod:`pipeline.store`; uploads are screened there (zip entries,
sizes, safetensors only, shapes checked against the architecture) before anything is kept.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import streamlit as st

from dashboard.ui.checkpoints import import_checkpoint
from dashboard.ui.feedback import shown_errors
from dashboard.ui.job_view import training_curves
from dashboard.ui.run_table import job_states, runs_table, state_word
from dashboard.ui.session import selected_run
from dashboard.ui.settings import runs_dir
from dashboard.ui.status import run_label, select_run_next, usable_runs
from pipeline import tracking
from pipeline.jobs import delete_run, job_state
from pipeline.models import ARCHITECTURES
from pipeline.errors import UserInputError
from pipeline.store import RunRecord, export_run, import_run, list_runs
from pipeline.training.strategies import available as available_strategies
from pipeline.training.strategies import strategy_class
from pipeline.units import format_epsilon, format_share

#: Runs and weights may be larger than scans: up to the server's cap (a ResNet-101 is about 170 MB).
MODEL_UPLOAD_MB = 200
#: The settings only some strategies read (the others ignore them).
STRATEGY_SETTINGS = frozenset(name for strategy in available_strategies() for name in strategy_class(strategy).uses)
#: Settings shown in the comparison table, in this order.
COMPARED = (
    "arch",
    "strategy",
    "eps",
    "steps",
    "epochs",
    "data.image_size",
    "batch_size",
    "optimizer",
    "lr",
    "data.source",
    "data.split_strategy",
    "data.split_seed",
    "seed",
)


def used(record: RunRecord, key: str) -> bool:
    """Whether the run's training read ``key``: a strategy's own settings (budget, steps) are listed
    only for the strategies that use them, so a standard run shows no budget it never had."""
    if key not in STRATEGY_SETTINGS:
        return True
    try:
        return key in strategy_class(str(record.config.get("strategy"))).uses
    except UserInputError:  # a strategy this version does not know: show what was recorded
        return True


def setting(record: RunRecord, key: str) -> str:
    """One setting (``data.x`` for the data's) as a person reads it: budgets as k/255, a dash if missing,
    ``not used`` for a strategy's setting this run's strategy does not read."""
    if not used(record, key):
        return "not used"
    group, _, name = key.rpartition(".")
    value = (record.config.get(group) or {} if group else record.config).get(name)
    if key == "eps" and isinstance(value, (int, float)):
        return format_epsilon(value)
    return "—" if value is None else str(value)


def status_sentence(record: RunRecord) -> str:
    """What the run is doing or how it ended, from the store as it is now."""
    state = job_state(record.run_dir)
    if state.running:
        done, epochs = len(record.metrics), record.config.get("epochs", "?")
        return f"{state_word(state)}, {done} of {epochs} epochs finished (this page follows it)"
    return record.status.get("message") or state.phase


def details(record: RunRecord) -> None:
    left, right = st.columns([1, 1.6])
    with left:
        st.markdown("##### Settings")
        st.table([{"setting": key, "value": setting(record, key)} for key in COMPARED if used(record, key)],
                 hide_index=True)
        st.caption(f"Status: {status_sentence(record)}")
        with st.expander("Everything recorded about this run"):
            st.json({key: value for key, value in record.config.items() if key != "split"}, expanded=1)
            st.json(record.status, expanded=False)
    with right:
        training_curves(record.run_dir, key=f"models:{record.name}")


def tracker_entry(record: RunRecord) -> None:
    """The run's entry in MLflow, or why it has none."""
    entry = record.status.get("tracking") or {}
    link = tracking.run_link(entry)
    if link:
        st.link_button("Open in MLflow", link, icon=":material/open_in_new:")
        serve = tracking.ui_command(str(entry.get("uri", "")))
        if serve:
            st.caption(f"The run is in a local MLflow store; serve it with `{serve}` (the `mlflow` package).")
    elif entry.get("error"):
        st.caption(f"Not in MLflow: {entry['error']}")


def tracking_switch() -> None:
    """Whether new trainings and evaluations of this runs folder are logged to MLflow, and where."""
    folder = runs_dir()
    current = tracking.setting(folder)
    uri = tracking.tracking_uri(folder)
    title = f"Experiment tracking: {'on' if current.enabled else 'off'}"
    with st.expander(title, icon=":material/monitoring:"):
        st.toggle(
            "Log new trainings and evaluations to MLflow",
            value=current.enabled,
            key="models:tracking",
            disabled=current.source.startswith("environment"),
            on_change=lambda: tracking.save_switch(folder, st.session_state["models:tracking"]),
            help="Parameters, per-epoch metrics, the kept model's location and the report files",
        )
        if current.source.startswith("environment"):
            st.caption(f"Set by {tracking.ENV} in the environment the dashboard was started with.")
        st.caption(f"Tracker: `{uri}` (MLFLOW_TRACKING_URI chooses another), experiment "
                   f"`{tracking.experiment_name()}`.")


def compare(records: list[RunRecord]) -> None:
    chosen = st.multiselect(
        "Compare runs",
        [r.name for r in records],
        max_selections=4,
        key="models:compare",
        help="Their settings and best results side by side",
    )
    if len(chosen) < 2:
        return
    by_name = {record.name: record for record in records}
    rows = [{"setting": key, **{name: setting(by_name[name], key) for name in chosen}} for key in COMPARED]
    for label, metric in (("clean val. acc.", "val_acc"), ("val. acc. under PGD", "val_robust_acc")):
        rows.append(
            {
                "setting": label,
                **{
                    name: format_share((by_name[name].best or {}).get(metric))
                    for name in chosen
                },
            }
        )
    st.table(rows, hide_index=True)


def export(record: RunRecord) -> None:
    """The zip is built only when the button is pressed (a run with optimizer state is hundreds of MB)."""
    st.download_button(
        "Export (zip)",
        lambda: export_run(record.run_dir, include_last=False).read_bytes(),
        file_name=f"{record.name}.zip",
        mime="application/zip",
        key=f"models:download:{record.name}",
        icon=":material/download:",
        help="Settings, metrics and the selected weights (safetensors); no scans. The optimizer "
        "state for resuming training is left out so the file stays small enough to import.",
    )


def delete(record: RunRecord) -> None:
    with st.popover("Delete…", icon=":material/delete:"):
        st.write(f"Delete **{record.name}** and its weights for good? This cannot be undone.")
        typed = st.text_input("Type the run's name to confirm", key=f"models:confirm:{record.name}")
        if st.button(
            "Delete the run",
            type="primary",
            key=f"models:delete:{record.name}",
            disabled=typed.strip() != record.name,
        ):
            with shown_errors("delete the run"):
                delete_run(record.run_dir)
                st.toast(f"Deleted {record.name}.")
                st.rerun()


def with_temporary_file(data: bytes, suffix: str, action: Callable[[Path], Path]) -> Path:
    """Give ``action`` a private temporary copy of an upload; the copy is gone afterwards."""
    with tempfile.TemporaryDirectory(prefix="lunglab-upload-") as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(data)
        return action(path)


def imports() -> None:
    left, right = st.columns(2)
    with left, st.container(border=True):
        st.markdown("##### Import a run exported from this lab")
        upload = st.file_uploader(
            "Run zip", type=["zip"], key="models:import-zip", max_upload_size=MODEL_UPLOAD_MB
        )
        if upload is not None and st.button("Import the run", key="models:import", icon=":material/upload:"):
            with shown_errors("import the run"):
                run_dir = with_temporary_file(
                    upload.getvalue(), ".zip", lambda path: import_run(path, runs_dir())
                )
                select_run_next(str(run_dir))
                st.toast(f"Imported {run_dir.name}.")
                st.rerun()
    with right, st.container(border=True):
        st.markdown("##### Import weights trained elsewhere")
        st.caption(
            "Only .safetensors files are accepted (never pickled .pt/.pth files, which can run code). "
            "The weights must fit one of the lab's one-channel ResNets exactly."
        )
        upload = st.file_uploader(
            "Weights", type=["safetensors"], key="models:import-weights", max_upload_size=MODEL_UPLOAD_MB
        )
        arch = st.selectbox(
            "Architecture",
            list(ARCHITECTURES),
            index=list(ARCHITECTURES).index("resnet50"),
            key="models:import-arch",
        )
        size = st.number_input("Image size it was trained at (px)", 32, 1024, 224, key="models:import-size")
        if upload is not None and st.button(
            "Import the weights", key="models:import-weights-go", icon=":material/upload:"
        ):
            with shown_errors("import the weights"):
                run_dir = with_temporary_file(
                    upload.getvalue(),
                    ".safetensors",
                    lambda path: import_checkpoint(path, runs_dir(), arch=arch, image_size=int(size)),
                )
                select_run_next(str(run_dir))
                st.toast(f"Imported as {run_dir.name}.")
                st.rerun()


st.title("Models")
st.caption("Every trained model, how it was trained and how well it did; move models between machines.")
records = list_runs(runs_dir())
if records:
    runs_table(records, job_states(records))
    compare(records)
    by_dir = {str(record.run_dir): record for record in records}
    # Opens on the model in use (else the newest with a saved model), not on a run still in its first epoch.
    usable = [str(record.run_dir) for record in usable_runs(records)]
    first = selected_run() if selected_run() in by_dir else next(iter(usable), next(iter(by_dir)))
    chosen = st.selectbox(
        "Run",
        list(by_dir),
        index=list(by_dir).index(first),
        key="models:run",
        format_func=lambda path: run_label(by_dir[path]),
    )
    record = by_dir[chosen]
    if record.error:
        st.error(record.error, icon=":material/error:")
    actions = st.columns([1, 1, 1, 3])
    if record.has_model and actions[0].button("Use this model", key="models:use", icon=":material/check:"):
        select_run_next(chosen)
        st.rerun()
    if record.has_model:
        with actions[1]:
            export(record)
    with actions[2]:
        delete(record)
    with actions[3]:
        tracker_entry(record)
    details(record)
else:
    st.info("No runs yet: train one on the Train page or import one below.", icon=":material/info:")
tracking_switch()
st.subheader("Import")
imports()
