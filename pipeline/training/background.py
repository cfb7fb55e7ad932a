"""Training as a background job: the dashboard starts it, returns at once and watches the run directory.

The run directory is created here, before the child process starts, so a page refresh (or a
restarted dashboard) finds the job through :func:`pipeline.store.list_runs` immediately; the
child reads its settings from ``request.json`` in that directory.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import jobs
from pipeline.errors import UserInputError
from pipeline.store import REQUEST, new_run_dir, write_request
from pipeline.training.config import TrainConfig
from pipeline.training.loop import with_start_run


def start_job(config: TrainConfig, runs_dir: Path | str) -> Path:
    """Start training ``config`` in a separate process; return the new run's directory at once."""
    config = with_start_run(config, runs_dir)  # a mismatched starting run is refused here, not in the job
    run_dir = new_run_dir(runs_dir, config.run_label)
    write_request(run_dir, config.to_dict())
    jobs.launch(
        run_dir, ["train", "--quiet", "--config-json", str(run_dir / REQUEST), "--run-dir", str(run_dir)]
    )
    return run_dir


def resume_job(run_dir: Path | str) -> Path:
    """Continue a stopped, cancelled or crashed run in the background from its last finished epoch."""
    run_dir = Path(run_dir)
    if jobs.job_state(run_dir).running:
        raise UserInputError(f"run {run_dir.name} is still running; there is nothing to resume")
    jobs.launch(run_dir, ["train", "--quiet", "--resume", str(run_dir)])
    return run_dir
