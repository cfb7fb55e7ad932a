"""Background jobs: a ``python -m pipeline ...`` process per job, watched through its directory.

The dashboard must return at once, survive a browser refresh and a restart of itself, and never
show a dead job as running. So a job is a separate process in its own session (started by
exec, so a parent that already holds CUDA is never forked into the child), writing its output
to ``job.log`` in the job directory; the launcher records the child's pid, the start time the
operating system gives it (through psutil, so Linux and macOS alike) and its command line in
``status.json``. Anyone can later read that file, and a job whose
status says "running" but whose process is gone (or whose pid now belongs to another process)
is reported, and recorded, as failed with the end of its log.

Cancelling writes a ``cancel`` flag the job checks between batches; if the job is still alive
after a grace period, its process group gets SIGTERM.

Inside the job process, :class:`JobContext` is the one lifecycle training and evaluation share:
it records the process, writes phases and (throttled) progress, stops the work when a cancel
is asked for, takes its share of the machine's cores beside the lab's other jobs
(:mod:`pipeline.cores`), and records how the job ended: done, cancelled, or failed with the error's text.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import psutil

from pipeline.cores import CoreShare
from pipeline.data.dicomweb import remembered_env
from pipeline.errors import CheckpointError, UserInputError
from pipeline.progress import Progress, ProgressCallback, Step, TimeLeft, report
from pipeline.store import (
    STATUS,
    TERMINAL_PHASES,
    atomic_write_bytes,
    read_status,
    remove_run,
    update_status,
)

CANCEL_FLAG = "cancel"
LOG = "job.log"
#: A job that has not recorded its process this long after being queued never started.
START_TIMEOUT_S = 120.0
DEFAULT_GRACE_S = 20.0
LOG_TAIL_LINES = 15
#: Seconds between two progress writes to a job's status.json.
STATUS_INTERVAL_S = 1.0


class JobCancelled(Exception):
    """Raised inside a job when it was asked to stop; it ends with phase "cancelled"."""


@dataclass(frozen=True)
class JobState:
    """A job as seen from outside: its status plus whether its process is really alive."""

    phase: str
    running: bool
    status: dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None
    log_tail: str = ""

    @property
    def progress(self) -> float:
        return float(self.status.get("progress", 1.0 if self.phase == "done" else 0.0))

    @property
    def eta_s(self) -> Optional[float]:
        return self.status.get("eta_s") if self.running else None

    @property
    def message(self) -> str:
        return str(self.status.get("message", ""))


# ----------------------------------------------------------------------------- launching
def launch(job_dir: Path | str, args: Sequence[str], *, env: Optional[dict[str, str]] = None) -> int:
    """Start ``python -m pipeline *args`` for ``job_dir`` and return its pid without waiting.

    The child runs in a new session (so cancelling reaches everything it spawns, torchrun's
    workers included) from this interpreter, with stdout and stderr in ``job.log``.
    """
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pipeline", *map(str, args)]
    update_status(job_dir, {"phase": "queued", "created_at": time.time(), "error": None})
    with open(job_dir / LOG, "ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(Path(__file__).resolve().parent.parent),
            env={**os.environ, **remembered_env(), **(env or {})},  # a PACS login of the dashboard
            close_fds=True,
        )
    # Read before reaping: a child that died at once is still there, as a zombie, to be asked.
    start_time = process_start_time(process.pid)
    # Reap the child when it exits so that it does not linger as a zombie in this process.
    threading.Thread(target=process.wait, daemon=True, name=f"reap-{process.pid}").start()
    job = {
        "pid": process.pid,
        "start_time": start_time,
        "started_at": time.time(),
        "command": command,
        "log": LOG,
    }
    update_status(job_dir, {"job": job})
    return process.pid


def register_self(job_dir: Path | str) -> None:
    """In a job process: record this process as the job's, unless a live launcher record exists.

    A training started from a terminal (or resumed there) thus also shows as running to the
    dashboard, and a stale record from an earlier, dead process is replaced.
    """
    pid = os.getpid()
    own = {
        "pid": pid,
        "start_time": process_start_time(pid),
        "started_at": time.time(),
        "command": sys.argv,
        "log": None,
    }

    def change(status: dict[str, Any]) -> dict[str, Any] | None:
        if _live_process(status.get("job")):
            return None
        return {**status, "job": own, "created_at": status.get("created_at", own["started_at"])}

    update_status(job_dir, change)


# ------------------------------------------------------------------------------- watching
def job_state(job_dir: Path | str) -> JobState:
    """The job's phase, with dead or vanished processes reported (and recorded) as failed."""
    job_dir = Path(job_dir)
    status = read_status(job_dir)
    phase = str(status.get("phase", "unknown"))
    if phase in TERMINAL_PHASES or phase == "unknown":
        return JobState(
            phase, False, status, status.get("error"), _log_tail(job_dir) if phase == "failed" else ""
        )
    process = _live_process(status.get("job"))
    if process:
        _enforce_grace(job_dir, status, process)
        return JobState(phase, True, status)
    if status.get("job") is None and time.time() - _created_at(status) < START_TIMEOUT_S:
        return JobState(phase, True, status)
    final = update_status(job_dir, lambda current: _mark_ended(job_dir, current))
    return JobState(str(final.get("phase")), False, final, final.get("error"), _log_tail(job_dir))


def _mark_ended(job_dir: Path, status: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The final status of a job whose process is gone without saying how it ended."""
    if status.get("phase") in TERMINAL_PHASES:
        return None  # it finished properly a moment ago
    if cancel_requested(job_dir):
        return {**status, "phase": "cancelled", "finished_at": time.time()}
    job = status.get("job")
    tail = _log_tail(job_dir).strip().splitlines()
    last = tail[-1] if tail else "the log is empty"
    if job is None:
        error = f"the job's process never started: {last}"
    elif _job_process(job) is None:
        error = (
            f"the job record in {STATUS} ({json.dumps(job)[:200]}) names no process this lab started "
            "(it needs a process id above 1 and that process's start time), so the job cannot be running"
        )
    else:
        error = f"the job's process ({job['pid']}) ended without finishing: {last}"
    return {**status, "phase": "failed", "finished_at": time.time(), "error": error}


def _job_process(job: Any) -> Optional[tuple[int, float]]:
    """(pid, start time) of a well-formed job record, else None: only such a record is ours.

    ``status.json`` may be edited by anyone: pid 0, 1 or below would make a signal reach init or
    whole process groups, and a pid without its start time may since belong to any process.
    """
    if not isinstance(job, dict):
        return None
    pid, start_time = job.get("pid"), job.get("start_time")
    if type(pid) is int and pid > 1 and type(start_time) is float:
        return pid, start_time
    return None


def _live_process(job: Any) -> Optional[tuple[int, float]]:
    """The job's (pid, start time) while that very process runs; None when it ended or is not ours."""
    process = _job_process(job)
    return process if process is not None and process_alive(*process) else None


def _created_at(status: dict[str, Any]) -> float:
    created = status.get("created_at")
    return float(created) if type(created) in (int, float) else 0.0


def process_alive(pid: int, start_time: Optional[float] = None) -> bool:
    """Whether ``pid`` runs, is not a zombie, and is the same process (same start time).

    A process this user may not inspect is not one of ours, so it counts as not alive.
    """
    try:
        process = psutil.Process(pid)
        if process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return False
        return start_time is None or _same_start(process.create_time(), start_time)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def process_start_time(pid: int) -> Optional[float]:
    """When ``pid`` started, in seconds since the epoch as the OS reports it; None if it is gone."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _same_start(reported: float, recorded: float) -> bool:
    """Whether two readings of a start time name the same process.

    Linux counts a start time in clock ticks since boot, and psutil adds the boot time, which
    shifts when the wall clock is stepped; a second of slack absorbs that. A pid reused within
    the same second as its first process's start is not a practical risk.
    """
    return abs(reported - recorded) < 1.0


def _log_tail(job_dir: Path) -> str:
    path = job_dir / LOG
    try:
        with open(path, "rb") as log:
            log.seek(max(0, path.stat().st_size - 8192))
            lines = log.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-LOG_TAIL_LINES:])


def list_jobs(root: Path | str) -> list[tuple[Path, JobState]]:
    """Every job directory directly under ``root`` with its state, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [
        (path, job_state(path))
        for path in root.iterdir()
        if path.is_dir() and not path.name.startswith(".") and (path / STATUS).is_file()
    ]
    return sorted(found, key=lambda item: _created_at(item[1].status), reverse=True)


# ----------------------------------------------------------------------------- cancelling
def cancel_job(job_dir: Path | str, *, grace_s: float = DEFAULT_GRACE_S) -> None:
    """Ask a job to stop; SIGTERM its process group if it still runs ``grace_s`` seconds later.

    Returns at once. The job stops at its next batch and keeps its last finished epoch.
    """
    job_dir = Path(job_dir)
    if not (job_dir / STATUS).is_file():
        raise UserInputError(f"{job_dir} is not a job directory; nothing to cancel")
    atomic_write_bytes(job_dir / CANCEL_FLAG, b"cancel requested\n")
    status = update_status(job_dir, {"cancel_requested_at": time.time(), "cancel_grace_s": grace_s})
    process = _job_process(status.get("job"))
    if process is not None and status.get("phase") not in TERMINAL_PHASES:
        timer = threading.Timer(grace_s, _terminate, args=process)
        timer.daemon = True
        timer.start()


def cancel_requested(job_dir: Path | str) -> bool:
    return (Path(job_dir) / CANCEL_FLAG).exists()


def clear_cancel(job_dir: Path | str) -> None:
    """Forget an old cancel request before a job is started again in the same directory."""
    with contextlib.suppress(FileNotFoundError):
        (Path(job_dir) / CANCEL_FLAG).unlink()


def _enforce_grace(job_dir: Path, status: dict[str, Any], process: tuple[int, float]) -> None:
    """SIGTERM a job past its cancel grace period (covers a dashboard restarted meanwhile)."""
    asked = status.get("cancel_requested_at")
    if asked and cancel_requested(job_dir) and time.time() - asked > float(status.get("cancel_grace_s", 0)):
        _terminate(*process)


def _terminate(pid: int, start_time: float) -> None:
    if process_alive(pid, start_time):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)


def delete_run(run_dir: Path | str) -> None:
    """Remove a run; refused while its job is still running (cancel it first)."""
    run_dir = Path(run_dir)
    if job_state(run_dir).running:
        raise UserInputError(f"run {run_dir.name} is still running; cancel it and wait for it to stop first")
    remove_run(run_dir)


def raise_on_sigterm() -> None:
    """In a job process: turn SIGTERM into :class:`JobCancelled` so the job records how it ended."""

    def handler(signum: int, frame: Any) -> None:
        raise JobCancelled("stopped by SIGTERM")

    signal.signal(signal.SIGTERM, handler)


def error_text(error: BaseException) -> str:
    """What a failed job's status says: a user error's own message, anything else with its type."""
    return str(error) if isinstance(error, UserInputError) else f"{type(error).__name__}: {error}"


class JobContext:
    """A job's lifecycle inside its own process, written to ``status.json`` in its directory.

    ``with JobContext(run_dir, kind="training") as job:`` records this process as the job's,
    then the work calls :meth:`status` for phases, :meth:`report` (or the :meth:`progress`
    callback, which also stops the work when a cancel was asked for) and :meth:`finish`. On the
    way out the context records how the job ended: a :class:`JobCancelled` ends it as
    "cancelled" and is not raised further (:attr:`cancelled` says so); an interrupt is recorded
    as cancelled and re-raised; any other error is recorded as "failed" with its text and
    re-raised. Only a ``writer`` writes (one rank of a distributed job).
    """

    def __init__(
        self,
        job_dir: Path | str,
        *,
        kind: str,
        writer: bool = True,
        cancelled_message: str = "cancelled",
        echo: Optional[ProgressCallback] = None,
    ) -> None:
        self.job_dir, self.kind, self.writer = Path(job_dir), kind, writer
        self.cancelled_message, self.echo = cancelled_message, echo
        self.started = time.time()
        self.cancelled = False
        self._written = 0.0
        self._key: Optional[tuple[Any, ...]] = None  #: the phase of the last status written
        self._timer = TimeLeft()
        #: the share of the machine's cores this job takes beside the lab's other jobs (the writer's
        #: process; torchrun gives each rank of a distributed job its own threads)
        self._cores: Optional[CoreShare] = CoreShare() if writer else None

    def __enter__(self) -> JobContext:
        if self.writer:
            self.job_dir.mkdir(parents=True, exist_ok=True)
            register_self(self.job_dir)
        self.status(kind=self.kind, error=None, worker_pid=os.getpid(), started_at=self.started)
        if self._cores is not None:
            self._cores.__enter__()
        return self

    def __exit__(self, kind: Any, error: Optional[BaseException], traceback: Any) -> bool:
        if self._cores is not None:
            self._cores.__exit__(kind, error, traceback)
        if error is None:
            return False
        if isinstance(error, (JobCancelled, KeyboardInterrupt)):
            self.cancelled = True
            self._final(phase="cancelled", message=self.cancelled_message)
            return isinstance(error, JobCancelled)
        self._final(phase="failed", error=error_text(error))
        return False

    def status(self, **fields: Any) -> None:
        """Merge ``fields`` into the job's status (phase, message, anything the dashboard shows)."""
        if self.writer:
            update_status(self.job_dir, fields)

    def finish(self, **fields: Any) -> None:
        """Record that the job is done, with ``fields`` (a summary message, where its outputs are)."""
        self.status(phase="done", progress=1.0, eta_s=None, finished_at=time.time(), **fields)

    def cancel_requested(self) -> bool:
        return cancel_requested(self.job_dir)

    def report(self, done: int, total: int, message: str = "", *, step: Optional[Step] = None) -> None:
        """Progress: echoed at once, written at most every ``STATUS_INTERVAL_S`` seconds.

        ``step`` says which phase of its plan the work is in (see :class:`pipeline.progress.Step`);
        the time left ``eta_s`` is :class:`pipeline.progress.TimeLeft`'s, from every report. It is
        written with ``eta_at``, the time it was true, and ``progress_at``, when the work last moved,
        so a watcher counts it down and sees a job that went quiet.
        """
        report(self.echo, done, total, message, step=step)
        if self._cores is not None:
            self._cores.adjust()
        now = time.time()
        if not total:
            return
        fraction = min(done / total, 1.0)
        self._timer.update(fraction, now, step)
        key = None if step is None else step.key
        # at most once a second, and always when the work enters a new phase (an epoch's validation,
        # the next epoch): short epochs would otherwise leave the status at a phase's first report
        if now - self._written < STATUS_INTERVAL_S and key == self._key:
            return
        self._written, self._key = now, key
        eta_s = self._timer.seconds(now)
        self.status(
            progress=round(fraction, 4),
            eta_s=None if eta_s is None else round(eta_s, 1),
            eta_at=now,
            progress_at=self._timer.moved,
            **({"message": message} if message else {}),
        )

    def progress(self) -> Progress:
        """A progress callback for pipeline work that also raises :class:`JobCancelled` when asked to
        stop; it takes structured steps."""

        def callback(done: int, total: int, message: str, step: Optional[Step]) -> None:
            if self.cancel_requested():
                raise JobCancelled("cancelled by the user")
            self.report(done, total, message, step=step)

        return Progress(callback)

    def _final(self, **fields: Any) -> None:
        """Best effort: when the disk is full, the error that says so matters more than the status."""
        with contextlib.suppress(CheckpointError):
            self.status(**fields, finished_at=time.time(), eta_s=None)
