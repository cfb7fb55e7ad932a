"""Training: standard and adversarial strategies, the loop, background jobs and presets.

``train(TrainConfig(...), "runs")`` trains in this process; ``start_job`` does the same in a
background process for the dashboard; ``python -m pipeline train`` is the command line.
"""

from pipeline.jobs import JobState, cancel_job, job_state
from pipeline.training.background import resume_job, start_job
from pipeline.training.config import PRESETS, TrainConfig
from pipeline.training.loop import finished_run, planned_phases, train

__all__ = [
    "PRESETS",
    "JobState",
    "TrainConfig",
    "cancel_job",
    "finished_run",
    "job_state",
    "planned_phases",
    "resume_job",
    "start_job",
    "train",
]
