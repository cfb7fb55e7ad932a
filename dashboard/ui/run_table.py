"""The table of runs the Train and Models pages share: what each run is and how it did."""

from __future__ import annotations

from typing import Any

import streamlit as st

from dashboard.ui.status import model_summary
from pipeline.constants import CLASSES
from pipeline.evaluation.degenerate import check_epoch
from pipeline.jobs import JobState, job_state
from pipeline.store import RunRecord
from pipeline.tracking import run_link

ACCURACY = st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1)


def run_row(record: RunRecord, state: JobState) -> dict[str, Any]:
    best = record.best or {}
    trained = check_epoch(best, record.config.get("classes") or CLASSES)
    return {
        "run": record.name,
        "model": model_summary(record),
        "state": state.phase,
        "epochs": f"{len(record.metrics)}/{record.config.get('epochs', '?')}",
        "best epoch": best.get("epoch"),
        "clean val. acc.": best.get("val_acc"),
        "val. acc. under PGD": best.get("val_robust_acc"),
        # the run itself is readable even when its job record is not: that goes to its own column
        "problem": record.error or (trained.reason if trained is not None and trained.flagged else ""),
        "job": state.error or "",
        "MLflow": run_link(record.status.get("tracking") or {}),
    }


def job_states(records: list[RunRecord]) -> dict[str, JobState]:
    """Each run's job state by run directory (a dead process shows as failed, not running)."""
    return {str(record.run_dir): job_state(record.run_dir) for record in records}


def runs_table(records: list[RunRecord], states: dict[str, JobState]) -> None:
    """One row per run: what it is, whether it runs, how it did."""
    st.dataframe(
        [run_row(record, states[str(record.run_dir)]) for record in records],
        hide_index=True,
        column_config={
            "clean val. acc.": ACCURACY,
            "val. acc. under PGD": ACCURACY,
            "MLflow": st.column_config.LinkColumn(display_text="open", help="The run in the MLflow UI"),
        },
    )
