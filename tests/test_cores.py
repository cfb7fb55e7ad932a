"""The lab's jobs share the machine's cores instead of fighting over them (issue 22, point 3).

Real processes stand in for other jobs: a sleeping Python child registered as a running job, then
killed. Nothing here depends on how long anything takes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import torch

from pipeline.cores import CoreShare, register, running_jobs
from pipeline.jobs import JobContext


@pytest.fixture
def two_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def other_job() -> Iterator[subprocess.Popen]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    yield child
    child.kill()
    child.wait()


def test_a_job_takes_its_share_while_another_runs_and_its_threads_back_after(
    tmp_path: Path, two_threads: None, other_job: subprocess.Popen
) -> None:
    folder = tmp_path / "jobs"
    with CoreShare(folder, interval_s=0.0) as share:
        assert running_jobs(folder) == 1 and share.adjust() == 2  # alone: every thread it was given
        register(other_job.pid, folder)
        assert running_jobs(folder) == 2 and share.adjust() == 1  # beside another job: half
        other_job.kill()
        other_job.wait()
        assert share.adjust() == 2 and running_jobs(folder) == 1  # the other ended: its registration goes
        with CoreShare(folder, interval_s=0.0):  # a job inside a job (the demo's trainings): one process
            assert running_jobs(folder) == 1
        assert running_jobs(folder) == 1
    assert running_jobs(folder) == 0 and torch.get_num_threads() == 2


def test_a_registration_of_a_dead_or_reused_pid_is_not_a_job(
    tmp_path: Path, other_job: subprocess.Popen
) -> None:
    folder = tmp_path / "jobs"
    path = register(other_job.pid, folder)
    path.write_text(path.read_text().replace('"created": ', '"created": 1'))  # another process, same pid
    (folder / "garbage.json").write_text("not json")
    assert running_jobs(folder) == 0 and not list(folder.iterdir())


def test_every_job_context_registers_its_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, two_threads: None, other_job: subprocess.Popen
) -> None:
    monkeypatch.setenv("LUNGLAB_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "jobs"
    register(other_job.pid, folder)
    with JobContext(tmp_path / "job", kind="training") as job:
        assert running_jobs(folder) == 2
        job.report(1, 10, "epoch 1")
        assert torch.get_num_threads() == 1
    assert running_jobs(folder) == 1 and torch.get_num_threads() == 2
