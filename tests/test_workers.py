"""Worker processes start clean: a pool child never runs the parent's ``__main__`` (issue 22, point 10).

Streamlit's script runner installs the app script as ``sys.modules["__main__"]`` and leaves it there,
so a spawned child used to run ``dashboard/app.py`` before its work and crash the pool
("BrokenProcessPool"), in the dashboard's server and in a pytest process that had run an AppTest.
"""

from __future__ import annotations

import os
import re
import sys
import types
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.phantom import synthesize
from pipeline.workers import process_pool

ROOT = Path(__file__).resolve().parent.parent

#: A "main" that leaves a mark when a child re-runs it (multiprocessing names it __mp_main__ there).
MAIN_SCRIPT = """
import os, pathlib
if __name__ == "__mp_main__":
    pathlib.Path({marker!r}, str(os.getpid())).write_text("a pool child ran the parent's __main__")
"""


@pytest.fixture()
def foreign_main(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Install a ``__main__`` the way Streamlit's ScriptRunner does: a fresh module with only a
    ``__file__`` (no ``__spec__``); returns the folder where children that run it leave marks."""
    marks = tmp_path / "marks"
    marks.mkdir()
    script = tmp_path / "app.py"
    script.write_text(MAIN_SCRIPT.format(marker=str(marks)))
    module = types.ModuleType("__main__")
    module.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", module)
    return marks


def test_a_plain_spawn_pool_runs_the_foreign_main(foreign_main: Path) -> None:
    """The failure this module guards against, shown: the fixture reproduces it."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        pool.submit(os.getpid).result()
    assert list(foreign_main.iterdir()), "a plain spawn child did not re-run __main__: the fixture is not faithful"


def test_rendering_in_worker_processes_never_runs_the_parents_main(foreign_main: Path) -> None:
    """Byte for byte the serial rendering (each scan depends only on its seed and index), and no
    child ran the parent's main."""
    serial, labels = synthesize(400, seed=5, size=32, workers=1)
    parallel, parallel_labels = synthesize(400, seed=5, size=32, workers=2)
    assert np.array_equal(serial, parallel) and np.array_equal(labels, parallel_labels)
    assert not list(foreign_main.iterdir()), "a phantom worker ran the parent's __main__"


def test_a_pool_after_a_streamlit_script_run_starts_clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real sequence: Streamlit runs a script in this process, then a pool starts."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])  # put back afterwards
    marks = tmp_path / "marks"
    marks.mkdir()
    app = AppTest.from_string(MAIN_SCRIPT.format(marker=str(marks)) + "\nimport streamlit as st\nst.write('hi')\n")
    app.run()
    assert not app.exception
    assert getattr(sys.modules["__main__"], "__spec__", None) is None  # Streamlit's fake main is installed
    with process_pool(2) as pool:
        pids = {pool.submit(os.getpid).result() for _ in range(4)}
    assert os.getpid() not in pids
    assert not list(marks.iterdir()), "a pool child ran the Streamlit script"


def test_every_process_pool_is_a_clean_one() -> None:
    """Only pipeline/workers.py creates process pools or multiprocessing contexts."""
    pattern = re.compile(r"ProcessPoolExecutor\(|get_context\(|multiprocessing\.Pool\(|\bPool\(|set_start_method\(")
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in ("pipeline", "dashboard", "bench", "scripts")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != ROOT / "pipeline" / "workers.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == [], f"use pipeline.workers.process_pool instead: {offenders}"
