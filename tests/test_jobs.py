"""Background training jobs: start, progress, cancel, crash reports, dead processes, two at once."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.errors import UserInputError
from pipeline.jobs import (
    LOG,
    START_TIMEOUT_S,
    JobContext,
    delete_run,
    job_state,
    process_alive,
    process_start_time,
)
from pipeline.store import (
    list_runs,
    load_model,
    read_config,
    read_metrics,
    read_status,
    update_status,
)
from pipeline.training import TrainConfig, cancel_job, start_job
from tests.training_helpers import REPO, TINY, child_env, metric_epochs, wait_for

LONG = {**TINY, "epochs": 200}


def _pid(run_dir: Path) -> int:
    wait_for(lambda: "job" in read_status(run_dir), timeout=30)
    return int(read_status(run_dir)["job"]["pid"])


def _seen_from_another_process(run_dir: Path) -> str:
    """What a freshly started dashboard process would report for this run."""
    code = (
        "import sys; from pipeline.store import list_runs; from pipeline.jobs import job_state;"
        "r = [r for r in list_runs(sys.argv[1]) if r.name == sys.argv[2]][0];"
        "s = job_state(r.run_dir); print(s.phase, s.running)"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(run_dir.parent), run_dir.name],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_start_progress_cancel(tmp_path: Path) -> None:
    run_dir = start_job(TrainConfig.from_dict(LONG), tmp_path)
    assert [record.run_dir for record in list_runs(tmp_path)] == [
        run_dir
    ]  # visible before the child has started
    assert job_state(run_dir).running
    wait_for(lambda: len(read_metrics(run_dir)) >= 1, timeout=120)
    state = job_state(run_dir)
    assert state.running and 0 < state.progress < 1 and state.status["epochs"] == 200
    assert _seen_from_another_process(run_dir).endswith("True")
    cancel_job(run_dir, grace_s=60)
    wait_for(lambda: not job_state(run_dir).running, timeout=60)
    state = job_state(run_dir)
    assert state.phase == "cancelled", state
    assert _seen_from_another_process(run_dir) == "cancelled False"
    load_model(run_dir)  # the finished epochs are kept
    assert read_config(run_dir)["epochs"] == 200


def test_crash_is_reported_in_status(tmp_path: Path) -> None:
    run_dir = start_job(TrainConfig.from_dict({**TINY, "data": str(tmp_path / "no-such-folder")}), tmp_path)
    wait_for(lambda: not job_state(run_dir).running, timeout=60)
    state = job_state(run_dir)
    assert state.phase == "failed"
    assert "no-such-folder" in state.error
    assert "error:" in (run_dir / LOG).read_text()


def test_killed_process_is_shown_failed_not_running(tmp_path: Path) -> None:
    run_dir = start_job(TrainConfig.from_dict(LONG), tmp_path)
    pid = _pid(run_dir)
    wait_for(lambda: read_status(run_dir).get("phase") == "training", timeout=120)
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not process_alive(pid), timeout=30)
    state = job_state(run_dir)
    assert state.phase == "failed" and not state.running
    assert "ended without finishing" in state.error
    assert read_status(run_dir)["phase"] == "failed"  # recorded, not only reported


def test_sigterm_ends_the_job_as_cancelled(tmp_path: Path) -> None:
    run_dir = start_job(TrainConfig.from_dict(LONG), tmp_path)
    pid = _pid(run_dir)
    wait_for(lambda: read_status(run_dir).get("phase") == "training", timeout=120)
    os.killpg(pid, signal.SIGTERM)
    wait_for(lambda: not job_state(run_dir).running, timeout=60)
    assert job_state(run_dir).phase == "cancelled"


def test_reused_or_missing_pid_is_not_running(tmp_path: Path) -> None:
    reused = tmp_path / "reused"
    reused.mkdir()
    me = os.getpid()
    started = process_start_time(me)
    update_status(reused, {"phase": "training", "job": {"pid": me, "start_time": started + 5.0}})
    assert process_alive(me, started) and not process_alive(me, started + 5.0)
    assert job_state(reused).phase == "failed"
    never = tmp_path / "never-started"
    never.mkdir()
    update_status(never, {"phase": "queued", "created_at": time.time() - START_TIMEOUT_S - 1})
    assert job_state(never).phase == "failed" and "never started" in job_state(never).error


def test_malformed_job_records_are_failed_never_running(tmp_path: Path) -> None:
    """A hand-edited status.json must not crash, keep a run running forever, or name pid 1."""
    for name, job in (
        ("text-pid", {"pid": "abc"}),
        ("init", {"pid": 1, "start_time": None, "command": ["rm", "-rf"]}),
        ("no-start-time", {"pid": os.getpid()}),
        ("whole-number-start", {"pid": os.getpid(), "start_time": 12345}),
        ("pid-zero", {"pid": 0, "start_time": process_start_time(os.getpid())}),
    ):
        run_dir = tmp_path / name
        run_dir.mkdir()
        update_status(run_dir, {"phase": "training", "job": job})
        state = job_state(run_dir)
        assert state.phase == "failed" and not state.running, (name, state)
        assert "names no process" in state.error and read_status(run_dir)["phase"] == "failed"
        delete_run(run_dir)


def test_cancel_signals_only_a_recorded_process(tmp_path: Path) -> None:
    """Cancel must SIGTERM the process its record proves is the job's, and nothing else."""
    stranger, ours = (subprocess.Popen(["sleep", "60"], start_new_session=True) for _ in range(2))
    try:
        for process, job in (
            (stranger, {"pid": stranger.pid}),  # a live pid without its start time
            (ours, {"pid": ours.pid, "start_time": process_start_time(ours.pid)}),
        ):
            run_dir = tmp_path / str(process.pid)
            run_dir.mkdir()
            update_status(run_dir, {"phase": "training", "job": job})
            cancel_job(run_dir, grace_s=0)
        assert ours.wait(timeout=30) == -signal.SIGTERM
        assert stranger.poll() is None
    finally:
        for process in (stranger, ours):
            process.kill()
            process.wait()


def test_two_trainings_at_once_do_not_mix(tmp_path: Path) -> None:
    first = start_job(TrainConfig.from_dict({**TINY, "count": 30, "epochs": 2, "seed": 1}), tmp_path)
    second = start_job(
        TrainConfig.from_dict({**TINY, "count": 30, "epochs": 2, "seed": 2, "strategy": "pgd"}), tmp_path
    )
    assert first != second
    wait_for(lambda: not job_state(first).running and not job_state(second).running, timeout=240)
    for run_dir, seed, strategy in ((first, 1, "standard"), (second, 2, "pgd")):
        assert job_state(run_dir).phase == "done", (run_dir / LOG).read_text()
        config = read_config(run_dir)
        assert (config["seed"], config["strategy"]) == (seed, strategy)
        assert metric_epochs(run_dir) == [1, 2]
        load_model(run_dir)
    assert {record.run_dir for record in list_runs(tmp_path)} == {first, second}


def _cancelled_midway(job: JobContext) -> None:
    progress = job.progress()
    progress(1, 4, "first step")
    (job.job_dir / "cancel").write_text("cancel requested\n")
    progress(2, 4, "second step")
    raise AssertionError("the progress callback should have stopped the work")


def _failing(error: BaseException):
    def work(job: JobContext) -> None:
        raise error

    return work


def test_one_lifecycle_records_how_every_job_ended(tmp_path: Path) -> None:
    """Training and evaluation jobs share this context: the phases, the error line, cancelling."""
    for name, work, phase, error in (
        ("done", lambda job: job.finish(message="all good"), "done", None),
        ("cancelled", _cancelled_midway, "cancelled", None),
        ("user-error", _failing(UserInputError("eps must lie in [0, 1]")), "failed", "eps must lie in [0, 1]"),
        ("crash", _failing(RuntimeError("boom")), "failed", "RuntimeError: boom"),
    ):
        job_dir = tmp_path / "evaluations" / name  # made by the job, as an evaluation's --job-dir is
        with contextlib.suppress(UserInputError, RuntimeError):
            with JobContext(job_dir, kind="test", cancelled_message="stopped; nothing lost") as job:
                job.status(phase="working")
                work(job)
        status = read_status(job_dir)
        assert status["phase"] == phase and status["kind"] == "test" and status.get("error") == error, status
        assert job.cancelled == (phase == "cancelled") and not job_state(job_dir).running
        assert status["job"]["pid"] == os.getpid()  # the process recorded itself on entry
        if phase == "cancelled":
            assert status["message"] == "stopped; nothing lost" and status["progress"] == 0.25
