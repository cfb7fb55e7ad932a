"""Where the dashboard keeps things, read from the environment on every use.

``LUNGLAB_RUNS_DIR`` (default ``<repo>/runs``) holds trained runs and ``LUNGLAB_DATA`` names the
default dataset source (``synthetic`` unless set); ``LUNGLAB_DEMO=off`` keeps the shipped demo
models out of an empty run store (a deployment that wants none, and tests of an empty store);
``LUNGLAB_CACHE_DIR`` is read by the pipeline itself. Tests and demos point these at private folders so they never touch a user's runs.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def runs_dir() -> Path:
    """The run store; created on first use so an empty store is not an error."""
    path = Path(os.environ.get("LUNGLAB_RUNS_DIR") or REPO_ROOT / "runs").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_source() -> str:
    """The dataset a fresh session starts with: the synthetic phantom unless configured."""
    return os.environ.get("LUNGLAB_DATA", "").strip() or "synthetic"


def shipped_demo_wanted() -> bool:
    """Whether an empty run store gets the shipped demo models on first start (``LUNGLAB_DEMO``, default on)."""
    return os.environ.get("LUNGLAB_DEMO", "").strip().lower() not in ("off", "0", "no", "false")
