"""``status.json``: a run's (or an evaluation job's) phase and progress, updated under a lock.

The job writes it, and any number of watchers (dashboards, terminals) read it and may mark a
dead job failed; a file lock serialises these read-modify-write updates.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from pathlib import Path
from typing import Any, Callable, Final, Iterator, Mapping, Optional

from pipeline.errors import CheckpointError
from pipeline.store.files import atomic_write_json, read_json, save_failure
from pipeline.store.layout import STATUS

#: Phases after which nothing more will happen to a run.
TERMINAL_PHASES: Final[frozenset[str]] = frozenset({"done", "failed", "cancelled", "imported"})
LOCK: Final[str] = ".status.lock"


@contextlib.contextmanager
def _status_lock(run_dir: Path) -> Iterator[None]:
    """Serialise read-modify-write of ``status.json`` between the job and its watchers."""
    path = Path(run_dir) / LOCK
    try:
        lock = open(path, "a+b")
    except OSError as error:
        raise CheckpointError(save_failure(path.with_name(STATUS), error)) from error
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_status(run_dir: Path) -> dict[str, Any]:
    """``status.json``, or {} when it is missing, damaged or not an object.

    It only records progress and job details: damage there must not make a run's model
    unusable, and the next update rewrites the file whole.
    """
    try:
        return read_json(Path(run_dir) / STATUS, default={}) or {}
    except CheckpointError:
        return {}


def update_status(
    run_dir: Path, change: Mapping[str, Any] | Callable[[dict[str, Any]], Optional[dict]]
) -> dict[str, Any]:
    """Merge ``change`` into ``status.json`` (or let it compute the new status) under a lock.

    A callable receives the current status and returns the new one, or None to leave it alone;
    this lets a watcher mark a dead job failed without overwriting a final status written a
    moment earlier by the job itself.
    """
    with _status_lock(run_dir):
        current = read_status(run_dir)
        if callable(change):
            new = change(dict(current))
            if new is None:
                return current
        else:
            new = {**current, **change}
        new["updated_at"] = time.time()
        atomic_write_json(Path(run_dir) / STATUS, new)
        return new
