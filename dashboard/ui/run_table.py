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

#: Accuracies in whole percent: validation sets of tens of scans cannot support decimals.
ACCURACY = {"format": "%.0f%%"}
#: The columns shown and their widths in pixels: together they fit the page at 1,440 px without
#: scrolling (970 of its 980); the full text of a problem is listed under the table, never cut off.
WIDTHS = {
    "run": 235,
    "model": 205,
    "state": 75,
    "epochs": 60,
    "clean val. acc.": 100,
    "val. acc. under PGD": 130,
    "problem": 165,
}


#: A running training's phases in one word: validating an epoch is still training, not an evaluation.
RUNNING_WORDS = {"queued": "starting", "loading": "starting", "validating": "training"}


def state_word(state: JobState) -> str:
    """``starting``, ``training``, ``done``, ``failed``, ``cancelled``: what a run is doing now."""
    return RUNNING_WORDS.get(state.phase, state.phase) if state.running else state.phase


def run_row(record: RunRecord, state: JobState) -> dict[str, Any]:
    best = record.best or {}
    trained = check_epoch(best, record.config.get("classes") or CLASSES)
    return {
        "run": record.name,
        "model": model_summary(record),
        "state": state_word(state),
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
    """One row per run: what it is, whether it runs, how it did; each problem in full underneath."""
    rows = [run_row(record, states[str(record.run_dir)]) for record in records]
    links = any(row["MLflow"] for row in rows)
    st.dataframe(
        [
            {
                **{name: row[name] for name in WIDTHS},
                **{name: _percent(row[name]) for name in ("clean val. acc.", "val. acc. under PGD")},
                "problem": _headline(row["problem"]),  # the job's own failure shows as its state
                **({"MLflow": row["MLflow"]} if links else {}),
            }
            for row in rows
        ],
        hide_index=True,
        column_config={
            **{name: st.column_config.Column(width=width) for name, width in WIDTHS.items()},
            **{
                name: st.column_config.NumberColumn(width=WIDTHS[name], **ACCURACY)
                for name in ("clean val. acc.", "val. acc. under PGD")
            },
            "MLflow": st.column_config.LinkColumn(
                display_text="open", help="The run in the MLflow UI", width="small"
            ),
        },
    )
    for row in rows:
        for text in dict.fromkeys(filter(None, (row["problem"], row["job"]))):
            st.caption(f"**{row['run']}**: {text}")


def _percent(value: object) -> object:
    return 100 * value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _headline(text: str) -> str:
    """A problem's first clause, short enough for a table cell (``not a trained classifier``)."""
    return text.split(";")[0].split(":")[0].strip()
