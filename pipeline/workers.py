"""Process pools whose children start clean: the one way this lab starts worker processes.

Why this exists. A ``spawn`` (or ``forkserver``) child first re-runs the parent's ``__main__``
(``multiprocessing.spawn.prepare``: the module named by ``__main__.__spec__``, else the file
``__main__.__file__``), so that objects pickled from ``__main__`` can be found. Streamlit's script
runner replaces ``sys.modules["__main__"]`` with a fake module whose ``__file__`` is the app script
(``streamlit/runtime/scriptrunner/script_runner.py``: "Install the fake module as the __main__
module") and never puts the old one back. So in the dashboard's server, and in a pytest process
that ran an ``AppTest`` of ``dashboard/app.py`` earlier, every spawned child executes the whole
dashboard as ``__mp_main__`` before doing its work: outside a Streamlit session that crashes
("AttributeError: 'Page' object has no attribute '_title'") and the pool breaks
("BrokenProcessPool: A process in the process pool was terminated abruptly").

The pools made here hand their children nothing of the parent's ``__main__``: the child imports only
what the submitted function's module needs. The work submitted must therefore be module-level
functions of importable modules (never of ``__main__``), which every pool in this lab uses anyway.
"""

from __future__ import annotations

import io
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import context, get_context, spawn, util
from typing import Any

__all__ = ["MAIN_KEYS", "clean_spawn_context", "process_pool"]

#: The preparation-data entries through which a spawned child re-runs its parent's ``__main__``.
MAIN_KEYS = ("init_main_from_name", "init_main_from_path")


def child_preparation(name: str) -> dict[str, Any]:
    """What a clean child is told before it starts: :func:`multiprocessing.spawn.get_preparation_data`
    for process ``name``, without :data:`MAIN_KEYS`."""
    data = spawn.get_preparation_data(name)
    for key in MAIN_KEYS:
        data.pop(key, None)
    return data


if sys.platform != "win32":
    from multiprocessing import popen_spawn_posix

    class _CleanPopen(popen_spawn_posix.Popen):
        """``spawn``'s POSIX launcher with :func:`child_preparation` as the child's preparation data.

        The body is CPython's ``popen_spawn_posix.Popen._launch`` (unchanged from 3.8 to 3.13) with
        the one call replaced; there is no public hook for it.
        """

        def _launch(self, process_obj: Any) -> None:
            from multiprocessing import resource_tracker

            tracker_fd = resource_tracker.getfd()
            self._fds.append(tracker_fd)
            prep_data = child_preparation(process_obj._name)
            fp = io.BytesIO()
            context.set_spawning_popen(self)
            try:
                context.reduction.dump(prep_data, fp)
                context.reduction.dump(process_obj, fp)
            finally:
                context.set_spawning_popen(None)
            parent_r = child_w = child_r = parent_w = None
            try:
                parent_r, child_w = os.pipe()
                child_r, parent_w = os.pipe()
                cmd = spawn.get_command_line(tracker_fd=tracker_fd, pipe_handle=child_r)
                self._fds.extend([child_r, child_w])
                self.pid = util.spawnv_passfds(spawn.get_executable(), cmd, self._fds)
                self.sentinel = parent_r
                with open(parent_w, "wb", closefd=False) as f:
                    f.write(fp.getbuffer())
            finally:
                fds_to_close = [fd for fd in (parent_r, parent_w) if fd is not None]
                self.finalizer = util.Finalize(self, util.close_fds, fds_to_close)
                for fd in (child_r, child_w):
                    if fd is not None:
                        os.close(fd)

    class _CleanProcess(context.SpawnProcess):
        _start_method = "spawn"

        @staticmethod
        def _Popen(process_obj: Any) -> _CleanPopen:
            return _CleanPopen(process_obj)

    class _CleanSpawnContext(context.SpawnContext):
        Process = _CleanProcess  # type: ignore[assignment]


def clean_spawn_context() -> context.BaseContext:
    """A ``spawn`` context whose children never run the parent's ``__main__`` (see the module doc).

    Spawn, not fork: the caller may hold threads (torch, a web server) that a fork would copy. On
    Windows, where the launcher differs, this is the plain spawn context.
    """
    if sys.platform == "win32":
        return get_context("spawn")
    return _CleanSpawnContext()


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` (>= 1) clean spawned processes; use it as a context manager."""
    return ProcessPoolExecutor(max(1, int(workers)), mp_context=clean_spawn_context())
