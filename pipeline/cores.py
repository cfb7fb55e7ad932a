"""The CPU cores of one machine, shared among the lab's jobs running on it.

PyTorch gives every process as many threads as the machine has cores. Two jobs on a 2-core machine then
run four busy threads on two cores, and their OpenMP threads wait on one another: each of two trainings
started together ran 4.1x slower than alone, not 2x, and its epochs swung between 35 and 81 s, so no
time left could hold (``bench/RESULTS.md``, "Time left": 102 s alone; 417 s each for two at once with two
threads each; 136 s each with one thread each). So each job registers its process in a folder of this
machine (:func:`registry_dir`) and takes its share of the cores it was given: those cores divided by the
lab's jobs running now, looked at again every :data:`CHECK_INTERVAL_S` seconds as jobs start and end.

Only the lab's own jobs are counted (a job started from the dashboard or a terminal, through
:class:`pipeline.jobs.JobContext`); other programs on the machine are the operating system's business.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Final, Optional

import psutil

from pipeline.data.dataset import cache_dir

#: Seconds between two looks at how many jobs run.
CHECK_INTERVAL_S: Final[float] = 5.0


def registry_dir() -> Path:
    """Where the running jobs of this machine are registered: ``<cache>/jobs``."""
    return cache_dir() / "jobs"


def register(pid: int, folder: Optional[Path] = None) -> Path:
    """Register process ``pid`` as a running job (its start time included, so that a later process given
    the same pid is not counted). Returns the registration file. Raises psutil.NoSuchProcess when there
    is no such process."""
    folder = folder or registry_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{pid}.json"
    path.write_text(json.dumps({"pid": pid, "created": psutil.Process(pid).create_time()}), encoding="utf-8")
    return path


def running_jobs(folder: Optional[Path] = None) -> int:
    """How many registered jobs are alive; registrations of processes that are gone are removed."""
    folder = folder or registry_dir()
    alive = 0
    for path in folder.glob("*.json") if folder.is_dir() else ():
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            if psutil.Process(int(entry["pid"])).create_time() == entry["created"]:
                alive += 1
                continue
        except (OSError, ValueError, KeyError, TypeError, psutil.Error):
            pass
        with contextlib.suppress(OSError):
            path.unlink()
    return alive


class CoreShare:
    """This process's share of the cores while it runs a job: ``with CoreShare():`` registers it, and
    :meth:`adjust` (called with every progress report) sets torch's thread count to the threads the
    process had on entry divided by the jobs running (at least one), at most every
    :data:`CHECK_INTERVAL_S` seconds. Nested shares in one process (the demo's job runs two trainings)
    count the process once. On exit the process gets its threads back."""

    _depth = 0  #: CoreShare contexts open in this process

    def __init__(self, folder: Optional[Path] = None, interval_s: float = CHECK_INTERVAL_S) -> None:
        self.folder, self.interval_s = folder or registry_dir(), interval_s
        self.threads = 1
        self._checked = -float("inf")
        self._path: Optional[Path] = None

    def __enter__(self) -> CoreShare:
        import torch

        self.threads = torch.get_num_threads()
        if CoreShare._depth == 0:
            with contextlib.suppress(OSError):
                self._path = register(os.getpid(), self.folder)
        CoreShare._depth += 1
        self.adjust()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        CoreShare._depth -= 1
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()
        torch.set_num_threads(self.threads)

    def adjust(self, now: Optional[float] = None) -> int:
        """Take this process's share now (at most every ``interval_s`` seconds); returns torch's threads."""
        import torch

        now = time.monotonic() if now is None else now
        if now - self._checked >= self.interval_s:
            self._checked = now
            share = max(1, self.threads // max(running_jobs(self.folder), 1))
            if share != torch.get_num_threads():
                torch.set_num_threads(share)
        return torch.get_num_threads()
