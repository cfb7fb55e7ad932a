"""Threats as background jobs, and where their results live in the run store.

A threat job's folder is ``<run>/threats/<kind>-<timestamp>/`` under the victim (extraction) or the first
target (membership), as an evaluation's is ``<run>/evaluations/<timestamp>/``. It holds the job's
``request.json``, ``status.json`` and ``job.log``, the models the threat trained (``surrogates/``,
``shadows/``: runs of the lab's loop, nested, so the run store never lists them as runs), and when done
``result.json`` and ``report.html``. The dashboard starts a job with :func:`start_threat_job` and returns
at once; the child runs ``python -m pipeline extract|membership --config-json <job>/request.json
--job-dir <job>``, which calls :func:`run_threat_job`: status, progress and cancel through
:class:`pipeline.jobs.JobContext`, the result logged to MLflow (:mod:`pipeline.tracking`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Final, Optional, Union

from pipeline import jobs, tracking
from pipeline.progress import ProgressCallback
from pipeline.store import REQUEST, read_record, resolve_run, write_request
from pipeline.threats import extraction, membership
from pipeline.threats.extraction import ExtractionSettings, run_extraction
from pipeline.threats.membership import MembershipSettings, run_membership
from pipeline.threats.report import FILES, ThreatResult, save_result

THREATS: Final[str] = "threats"
#: The command-line subcommand of each threat.
COMMANDS: Final[dict[str, str]] = {extraction.KIND: "extract", membership.KIND: "membership"}
ThreatSettings = Union[ExtractionSettings, MembershipSettings]

#: What a cancelled threat job leaves: its figures are saved together, once all are measured.
CANCELLED_KEEPS: Final[str] = (
    "no result is kept: a threat's figures are saved together once every one is measured, so those measured "
    "before the cancel are lost"
)


def kind_of(settings: ThreatSettings) -> str:
    return extraction.KIND if isinstance(settings, ExtractionSettings) else membership.KIND


def home_run(settings: ThreatSettings) -> Path:
    """The run a threat job belongs to: the victim, or the first target."""
    run = settings.victim if isinstance(settings, ExtractionSettings) else settings.targets[0]
    return resolve_run(settings.runs_dir, str(run))


def new_threat_dir(settings: ThreatSettings) -> Path:
    """A fresh ``<run>/threats/<kind>-<timestamp>`` path (not created), numbered when the second is taken."""
    base = home_run(settings) / THREATS / f"{kind_of(settings)}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, number = base, 2
    while candidate.exists():
        candidate, number = base.with_name(f"{base.name}-{number}"), number + 1
    return candidate


def start_threat_job(settings: ThreatSettings) -> Path:
    """Start the threat in a separate process; return its job folder at once.

    The settings were validated when they were built and the runs they name are looked up here, so a bad
    setting is a message for the caller, never a failed job."""
    job_dir = new_threat_dir(settings)
    job_dir.mkdir(parents=True)
    write_request(job_dir, settings.to_dict())
    command = COMMANDS[kind_of(settings)]
    jobs.launch(job_dir, [command, "--quiet", "--config-json", str(job_dir / REQUEST), "--job-dir", str(job_dir)])
    return job_dir


def run_threat_job(
    settings: ThreatSettings,
    job_dir: Path | str,
    *,
    echo: Optional[ProgressCallback] = None,
    track: Optional[bool] = None,
) -> Optional[tuple[ThreatResult, dict[str, Path]]]:
    """In the job's process (or the command line's): run the threat with status, progress and cancel in
    ``job_dir``, save its result there and log it to MLflow. Returns None when it was cancelled."""
    job_dir = Path(job_dir)
    kind = kind_of(settings)
    home = home_run(settings)
    synthetic = read_record(home).is_synthetic
    cancelled = f"cancelled; {CANCELLED_KEEPS}"
    with jobs.JobContext(job_dir, kind=kind, echo=echo, cancelled_message=cancelled) as job:
        job.status(phase="running", message="starting", progress=0.0)
        with tracking.tracked(
            home.parent, name=f"{kind} of {home.name}"[:250], kind=kind, params=settings.to_dict(),
            synthetic=synthetic, tags={"lunglab.run_dir": str(home), "lunglab.job_dir": str(job_dir)}, flag=track,
            cancelled=(jobs.JobCancelled, KeyboardInterrupt),
        ) as tracker:
            if isinstance(settings, ExtractionSettings):
                result: ThreatResult = run_extraction(settings, job_dir, job.progress())
            else:
                result = run_membership(settings, job_dir, job.progress())
            paths = save_result(result, job_dir)
            tracker.log_metrics(result.metrics(), step=0)
            tracker.log_files(paths.values(), "reports")
        job.finish(
            message=f"{kind} finished", outputs={name: str(path) for name, path in paths.items()},
            **({"tracking": tracker.entry} if tracker.entry else {}),
        )
        return result, paths
    return None


def threat_jobs(run_dirs: list[Path | str], kind: str) -> list[tuple[Path, jobs.JobState]]:
    """Every job of ``kind`` under the given runs, with its state, newest first."""
    found = [
        (path, state)
        for run_dir in run_dirs
        for path, state in jobs.list_jobs(Path(run_dir) / THREATS)
        if path.name.startswith(f"{kind}-")
    ]
    return sorted(found, key=lambda item: item[0].name.split("-", 1)[1], reverse=True)


def finished_results(run_dirs: list[Path | str], kind: str) -> list[Path]:
    """Job folders of ``kind`` holding a result (from the dashboard or the command line), newest first."""
    found = [
        path.parent
        for run_dir in run_dirs
        for path in Path(run_dir).glob(f"{THREATS}/{kind}-*/{FILES['json']}")
    ]
    return sorted(found, key=lambda folder: (folder / FILES["json"]).stat().st_mtime, reverse=True)
