"""The first-run path: no model yet, so offer to train a small demo model in the background."""

from __future__ import annotations

import streamlit as st

from dashboard.ui.feedback import shown_errors
from dashboard.ui.job_view import job_panel
from dashboard.ui.settings import runs_dir
from pipeline.jobs import job_state
from pipeline.store import list_runs
from pipeline.training import TrainConfig, start_job

DEMO_RUN_KEY = "demo.run"


def demo_config() -> TrainConfig:
    """The training preset meant for a CPU demo, on the synthetic phantom."""
    return TrainConfig.from_preset("quick", data="synthetic")


def describe(config: TrainConfig) -> str:
    return (
        f"A {config.arch.replace('resnet', 'ResNet-')} trained the normal way (no adversarial training) on "
        f"{config.data.count} synthetic phantom scans of {config.data.image_size}×{config.data.image_size} "
        f"pixels for {config.epochs} epochs. It exists so you can try the tools right away: it has never "
        "seen a real scan, is not a medical model, and its answers mean nothing clinically (its accuracy "
        "is on the Models page). It takes a few minutes on a laptop CPU, seconds on a GPU."
    )


def running_jobs() -> list[str]:
    return [str(record.run_dir) for record in list_runs(runs_dir()) if job_state(record.run_dir).running]


def offer() -> None:
    """Explain that a model is needed and train the demo one on request, showing live progress."""
    active = running_jobs()
    if active:
        st.info(
            "A model is being trained. This page fills in as soon as its first epoch is saved.",
            icon=":material/hourglass_top:",
        )
        for run_dir in active:
            job_panel(run_dir, key=f"demo:{run_dir}", curves=False)
        return
    if st.session_state.get(DEMO_RUN_KEY):  # the demo ended without a model: say why
        job_panel(st.session_state[DEMO_RUN_KEY], key="demo:ended", curves=False)
    config = demo_config()
    with st.container(border=True):
        st.markdown("#### No trained model yet")
        st.write(
            "Attacking a scan needs a model to attack. Train one on the **Train** page, import one on the "
            "**Models** page, or start the demo model here."
        )
        st.caption(describe(config))
        if st.button(
            "Train a quick demo model", type="primary", icon=":material/play_arrow:", key="demo:start"
        ):
            with shown_errors("start the demo training"):
                st.session_state[DEMO_RUN_KEY] = str(start_job(config, runs_dir()))
                st.rerun()
