"""Preparing the demo as a background job: the dashboard starts it and watches ``runs/demo-job``.

The job directory holds only the job's ``status.json`` and ``job.log`` (no run record), so the
run store never lists it as a run; the two models it trains are ordinary runs beside it, visible
as they train.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pipeline import jobs
from pipeline.demo.core import Demo, prepare_demo
from pipeline.errors import UserInputError
from pipeline.progress import ProgressCallback

JOB_DIR_NAME = "demo-job"


def demo_job_dir(runs_dir: Path | str) -> Path:
    """Where the demo job of ``runs_dir`` records its status."""
    return Path(runs_dir) / JOB_DIR_NAME


def start_demo_job(runs_dir: Path | str, recipe: str, *, device: str = "auto") -> Path:
    """Start preparing the demo in a separate process; return its job directory at once.

    Raises :class:`UserInputError` when a demo job of ``runs_dir`` is still running.
    """
    job_dir = demo_job_dir(runs_dir)
    if jobs.job_state(job_dir).running:
        raise UserInputError("the demo is already being prepared; its progress is shown here")
    jobs.launch(job_dir, ["demo", "--train", "--quiet", "--runs-dir", str(runs_dir), "--recipe", recipe,
                          "--device", device, "--job-dir", str(job_dir)])
    return job_dir


def run_demo_job(runs_dir: Path | str, recipe: str, *, device: str = "auto",
                 echo: Optional[ProgressCallback] = None) -> Optional[Demo]:
    """In the job's process: prepare the demo with status and progress in the job directory.

    Returns None when the job was cancelled (the runs finished before the cancel stay).
    """
    with jobs.JobContext(demo_job_dir(runs_dir), kind="demo", echo=echo,
                         cancelled_message="cancelled; the models finished so far are kept") as job:
        job.status(phase="running", message="starting", progress=0.0)
        demo = prepare_demo(runs_dir, recipe, device=device, progress=job.progress())
        job.finish(message="the demo is ready", runs=[model.run_dir.name for model in demo.models])
        return demo
    return None
