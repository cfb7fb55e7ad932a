"""Evaluation as a background job: the dashboard starts it, returns at once and watches its directory.

As with training (:mod:`pipeline.training.background`), the job's settings travel as a JSON file,
``request.json`` in the job directory, and the child process runs ``python -m pipeline evaluate
--config-json <job>/request.json --job-dir <job>``. The job directory is ``<first
run>/evaluations/<timestamp>/`` (an ensemble alone: its first member's); the reports land there, and
:func:`pipeline.jobs.job_state` follows it (``status["outputs"]`` names the files when done).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from pipeline import jobs
from pipeline.errors import UserInputError
from pipeline.evaluation.ensemble import member_records
from pipeline.evaluation.request import EvaluationRequest, evaluate_runs, new_evaluation_dir
from pipeline.evaluation.suite import EvaluationSuite
from pipeline.progress import ProgressCallback
from pipeline.store import REQUEST, resolve_run, write_request


def start_evaluation_job(request: EvaluationRequest) -> Path:
    """Start evaluating ``request`` in a separate process; return its job directory at once.

    The request was validated when it was built, so a bad setting is a message for the caller,
    never a failed job.
    """
    if request.ensemble:  # members that do not fit together are a message now, not a failed job
        member_records(request.ensemble, runs_dir=request.runs_dir)
    first = resolve_run(request.runs_dir, (request.runs or request.ensemble)[0])  # an ensemble's first member
    job_dir = Path(request.out) if request.out else new_evaluation_dir(first)
    job_dir.mkdir(parents=True, exist_ok=True)
    write_request(job_dir, dataclasses.replace(request, out=str(job_dir)).to_dict())
    jobs.launch(
        job_dir, ["evaluate", "--quiet", "--config-json", str(job_dir / REQUEST), "--job-dir", str(job_dir)]
    )
    return job_dir


def run_job(
    request: EvaluationRequest,
    job_dir: Path,
    *,
    echo: Optional[ProgressCallback] = None,
    writer: bool = True,
) -> tuple[EvaluationSuite, dict[str, Path]]:
    """In the job's process: evaluate with status and progress in ``job_dir``, stopping when cancelled.
    Only a ``writer`` writes the status (rank 0 of a sharded evaluation).

    Raises :class:`UserInputError` when the job was cancelled; the sections that had finished are
    kept in ``job_dir``'s report, marked incomplete.
    """
    with jobs.JobContext(job_dir, kind="evaluation", echo=echo, writer=writer) as job:
        job.status(phase="running", message="loading runs", progress=0.0)
        suite, paths = evaluate_runs(request, job.progress())
        job.finish(message="evaluation finished", outputs={kind: str(path) for kind, path in paths.items()})
        return suite, paths
    raise UserInputError(f"the evaluation was cancelled; the sections that had finished are in {job_dir}")
