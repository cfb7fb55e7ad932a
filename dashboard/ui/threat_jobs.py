"""What the threat tabs share: a settings form drawn from a settings schema, the live jobs of a threat,
the choice of a finished result, and its report to download.

A threat job is a background process writing into its folder under the run it attacks
(:mod:`pipeline.threats.background`); everything here reads that folder back, so a refresh or a restarted
dashboard shows the same jobs and results.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Optional

import streamlit as st

from dashboard.ui.controls import param_control
from dashboard.ui.feedback import shown_errors
from dashboard.ui.job_view import job_panel
from pipeline.jobs import job_state
from pipeline.params import params_of
from pipeline.threats.background import CANCELLED_KEEPS, finished_results, start_threat_job, threat_jobs
from pipeline.threats.report import FILES, ThreatResult, read_result


def settings_controls(settings: type, names: Iterable[str], key: str, columns: int = 3) -> dict[str, Any]:
    """A widget per named field of the settings dataclass ``settings`` (its schema's defaults, ranges and
    help), laid out in ``columns``; returns field: value (None where an automatic value was kept)."""
    params = params_of(settings)
    values: dict[str, Any] = {}
    for number, name in enumerate(names):
        if number % columns == 0:
            row = st.columns(columns)
        with row[number % columns]:
            values[name] = param_control(params[name], f"{key}:{name}")
    return values


def start(settings_of: Any, watch_key: str, what: str) -> None:
    """Build the settings (``settings_of()``; a bad value is a message) and start the threat's job."""
    with shown_errors(f"start the {what}"):
        job = start_threat_job(settings_of())
        st.session_state[watch_key] = str(job)
        st.toast(f"The {what} runs in the background; you can leave this page.")


def live_jobs(run_dirs: list[str], kind: str, watch_key: str, what: str) -> None:
    """The threat's running jobs, and the one this session started if it failed or was cancelled, each
    with its progress, time left and a cancel button."""
    running = [str(path) for path, state in threat_jobs(run_dirs, kind) if state.running]
    watched = st.session_state.get(watch_key)
    ended = [watched] if watched and watched not in running and job_state(watched).phase not in ("done",) else []
    for job_dir in running + ended:
        with st.container(border=True):
            st.markdown(f"**{what.capitalize()} {Path(job_dir).name}**")
            job_panel(job_dir, key=f"{kind}:{job_dir}", curves=False, what=what, kept=CANCELLED_KEEPS)


def chosen_result(run_dirs: list[str], kind: str, watch_key: str, key: str) -> Optional[tuple[Path, ThreatResult]]:
    """The finished result chosen in a select box (newest first; the job this session started, once it
    is done); None when there is none yet or it cannot be read (said on the page)."""
    folders = {str(folder): folder for folder in finished_results(run_dirs, kind)}
    if not folders:
        st.caption(
            f"Finished results appear here, including those run with `python -m pipeline "
            f"{'extract' if kind == 'extraction' else kind}`."
        )
        return None
    watched = st.session_state.get(watch_key)
    followed = f"{key}:followed"
    if watched in folders and st.session_state.get(followed) != watched:
        st.session_state[key], st.session_state[followed] = watched, watched
    chosen = st.selectbox("Result", list(folders), key=key, format_func=lambda path: _label(folders[path]))
    with shown_errors("show the result"):
        return folders[chosen], read_result(folders[chosen] / FILES["json"])
    return None


def report_download(folder: Path, key: str) -> None:
    """The self-contained HTML report, to save or mail."""
    path = folder / FILES["html"]
    if path.is_file():
        st.download_button(
            "Download the HTML report", path.read_bytes(), file_name=f"{folder.name}.html", mime="text/html",
            key=key, icon=":material/download:",
        )


def _label(folder: Path) -> str:
    written = time.localtime((folder / FILES["json"]).stat().st_mtime)
    return f"{folder.parent.parent.name} · {time.strftime('%Y-%m-%d %H:%M', written)}"
