"""Live progress for background work, polled by a fragment so the rest of the page stays usable."""

from __future__ import annotations

from typing import Any, Callable

import streamlit as st

from dashboard.ui.tasks import Task
from pipeline.progress import ProgressCallback

POLL_SECONDS = 1.0
def background(
    key: str,
    label: str,
    work: Callable[[ProgressCallback], Any],
    *,
    inputs: dict[str, Any],
    wait: float = 1.0,
) -> Any:
    """``work(progress)`` for ``inputs``, run in a background thread and kept under ``key``.

    Returns the result once there is one (at once when ``work`` finishes within ``wait``
    seconds, as a cached load does); until then draws live progress and returns None. A failure
    is raised here, in the script, and forgotten, so the next run tries again.
    """
    task: Task | None = st.session_state.get(key)
    if task is None or task.inputs != inputs:
        if task is not None:
            task.cancel()
        task = st.session_state[key] = Task(label, work, inputs).start()
    if task.running and not task.wait(wait):
        _poll(key)
        return None
    if task.error is not None:
        del st.session_state[key]
        raise task.error
    return task.result


def take_finished(key: str) -> Task | None:
    """Remove and return the task under ``st.session_state[key]`` once it has finished."""
    task: Task | None = st.session_state.get(key)
    if task is None or task.running:
        return None
    del st.session_state[key]
    return task


def show_progress(key: str) -> None:
    """Live progress with a Cancel button while the task under ``key`` runs; nothing otherwise."""
    task: Task | None = st.session_state.get(key)
    if task is not None and task.running:
        _poll(key)


@st.fragment(run_every=POLL_SECONDS)
def _poll(key: str) -> None:
    task: Task | None = st.session_state.get(key)
    if task is None:
        return
    if not task.running:
        st.rerun(scope="app")
    step = f" — {task.message}" if task.message else ""
    st.progress(task.fraction, text=f"{task.label}{step} · {task.time_left()}")
    if st.button("Cancel", key=f"{key}:cancel", icon=":material/stop_circle:"):
        task.cancel()
        st.toast("Cancelling — the current step finishes first.")
