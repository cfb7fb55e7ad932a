"""Live view of a background job (training or evaluation), read from its directory every couple of seconds.

The job is a separate process that writes ``status.json`` and ``metrics.jsonl``; reading them
back (not holding any handle) is what lets the view survive a page refresh or a restart.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import streamlit as st

from dashboard.ui.feedback import shown_errors
from pipeline.evaluation.figures import lines
from pipeline.jobs import JobState, cancel_job, job_state
from pipeline.progress import time_left_words
from pipeline.store import read_metrics

POLL_SECONDS = 2.0


def training_curves(run_dir: Path, key: str) -> None:
    """Loss and clean/robust accuracy per epoch, as far as the run has come."""
    # A run imported from elsewhere may carry lines without an epoch number or with text for numbers.
    metrics = [line for line in read_metrics(run_dir) if not math.isnan(_number(line.get("epoch")))]
    if not metrics:
        st.caption("Curves appear after the first epoch.")
        return
    epochs = [line["epoch"] for line in metrics]
    accuracy = {
        label: (epochs, [_number(line.get(name)) for line in metrics])
        for label, name in (
            ("validation, clean", "val_acc"),
            ("validation, mean class recall", "val_balanced_acc"),
            ("validation, under PGD", "val_robust_acc"),
            ("training, clean", "train_acc"),
            ("training, under PGD", "train_robust_acc"),
        )
        if any(name in line for line in metrics)
    }
    left, right = st.columns(2)
    left.plotly_chart(
        lines(
            {"training loss": (epochs, [_number(line.get("train_loss")) for line in metrics])},
            x_title="epoch",
            y_title="loss",
            title="Loss",
        ),
        key=f"{key}:loss",
        config={"displaylogo": False},
    )
    right.plotly_chart(
        # a half-width column: the legend wraps underneath rather than squeezing the plot from the right
        lines(accuracy, x_title="epoch", y_title="accuracy (%)", title="Accuracy", percent=True,
              legend_right=False),
        key=f"{key}:acc",
        config={"displaylogo": False},
    )
    st.caption(
        "Accuracy on clean scans and under a PGD attack after each epoch; a robust model keeps "
        "the two curves close. Mean class recall (balanced accuracy) weighs the rare benign class "
        "like the others; by default standard training keeps the epoch where it is highest."
    )


def _number(value: object) -> float:
    """``value`` as a float for plotting, NaN (a gap in the curve) when it is not a number."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


def job_time_left(state: JobState, now: float) -> str:
    """The job's time left at ``now``: its last estimate counted down since it was written.

    A job writes ``eta_s`` at ``eta_at`` and ``progress_at`` when its progress last moved
    (:meth:`pipeline.jobs.JobContext.report`); read against the clock, a job gone quiet shows as
    overdue instead of repeating its last estimate.
    """
    status = state.status
    written = status.get("eta_at")
    moved = status.get("progress_at", written)
    seconds = None if state.eta_s is None or written is None else state.eta_s - (now - written)
    return time_left_words(seconds, now - moved if moved is not None else 0.0)


def job_panel(
    run_dir: Path | str,
    *,
    key: str,
    curves: bool = True,
    what: str = "training",
    kept: str = "its last finished epoch is kept",
) -> bool:
    """Draw the job's progress (live while it runs); returns True while it is still running.

    ``kept`` says what of a job that stopped early is still there (its last epoch, finished sections).
    """
    state = job_state(run_dir)
    if state.running:
        _live(str(run_dir), key, curves, what)
        return True
    if state.phase == "failed":
        name, why = Path(run_dir).name, state.error or "no reason recorded"
        st.error(f"The {what} {name} failed: {why}. {kept.capitalize()}.", icon=":material/error:")
    elif state.phase == "cancelled":
        st.warning(f"The {what} {Path(run_dir).name} was cancelled; {kept}.", icon=":material/stop_circle:")
    if curves:
        training_curves(Path(run_dir), key)
    return False


@st.fragment(run_every=POLL_SECONDS)
def _live(run_dir: str, key: str, curves: bool, what: str) -> None:
    state = job_state(run_dir)
    if not state.running:
        st.rerun(scope="app")
    st.progress(
        min(max(state.progress, 0.0), 1.0),
        text=f"{state.message or state.phase} · {job_time_left(state, time.time())}",
    )
    if st.button(
        f"Cancel the {what}",
        key=f"{key}:cancel",
        icon=":material/stop_circle:",
        disabled=bool(state.status.get("cancel_requested_at")),
    ):
        with shown_errors(f"cancel the {what}"):
            cancel_job(run_dir)
            st.toast("Cancelling: the job stops after its current batch.")
    if curves:
        training_curves(Path(run_dir), key)
