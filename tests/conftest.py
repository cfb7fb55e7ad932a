"""Shared test settings: small, deterministic, and CPU-friendly."""

import os
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.allocator import keep_freed_memory

#: Under pytest-xdist each worker gets its own cache and one CPU thread: the workers already
#: fill the cores, and oversubscribed torch threads make small convolutions many times slower.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
os.environ.setdefault(
    "LUNGLAB_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".cache", "test", _WORKER or "main")
)
#: MLflow tracking is on by default, and opening a SQLite store costs seconds; the suite's many
#: trainings run untracked, and tests/test_tracking.py turns it on against real local stores.
os.environ.setdefault("LUNGLAB_TRACKING", "off")
#: The dashboard puts the shipped demo models into an empty run store on first start; the suite's
#: many empty-store pages start empty, and tests/test_demo.py turns it on where it checks that.
os.environ.setdefault("LUNGLAB_DEMO", "off")
if _WORKER is not None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
# The suite runs the lab's code in its own processes, set up as the lab's own processes are.
keep_freed_memory()


#: Where the corpus table is handed from the process that ran it to the one that prints it.
CORPUS_TABLE = Path(__file__).resolve().parent.parent / "test-artifacts" / "corpus-table.txt"
_SESSION_START = time.time()


#: The files that cost the most (a full run on 2 cores, --durations), heaviest first. pytest-xdist
#: hands whole files to its two workers in collection order; started first, the long ones run beside
#: each other and the many short files fill in at the end, so both workers finish together instead of
#: one running a long file alone for minutes (needs --no-loadscope-reorder, pyproject.toml).
HEAVY_FILES = (
    "test_demo.py", "test_dashboard_browser.py", "test_training.py", "test_resume.py", "test_threats.py",
    "test_dashboard_apptest.py", "test_jobs.py", "test_bench_gpu.py", "test_attack_contract.py",
    "test_corpus.py", "test_poisoning.py", "test_store.py", "test_evaluation_common_scans.py",
    "test_sharded_evaluation.py", "test_evaluation_report.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run :data:`HEAVY_FILES` first, heaviest first; the rest keep their order."""
    rank = {name: index for index, name in enumerate(HEAVY_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(HEAVY_FILES)))


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


def pytest_sessionfinish(session) -> None:
    """Save the hostile-input table (issue 7) where the controlling process can print it.

    Under pytest-xdist the corpus tests run in a worker, whose own output is not shown; the
    controller prints the file in ``pytest_terminal_summary``.
    """
    corpus = sys.modules.get("tests.corpus")
    if corpus is not None and corpus.ROWS:
        CORPUS_TABLE.parent.mkdir(parents=True, exist_ok=True)
        CORPUS_TABLE.write_text(corpus.format_table(corpus.ROWS))


def pytest_terminal_summary(terminalreporter) -> None:
    """Print the hostile-input table when this session's corpus tests wrote it."""
    if CORPUS_TABLE.exists() and CORPUS_TABLE.stat().st_mtime >= _SESSION_START:
        terminalreporter.write_sep("=", "hostile-input corpus: input -> entry point -> outcome")
        terminalreporter.write_line(CORPUS_TABLE.read_text())
