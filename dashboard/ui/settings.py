"""Where the dashboard keeps things, read once from the environment.

``LUNGLAB_RUNS_DIR`` (default ``<repo>/runs``) holds trained runs, ``LUNGLAB_CACHE_DIR`` the
on-disk caches, ``LUNGLAB_DATA`` the default dataset source (``synthetic`` unless set). Tests and
demos point these at private folders so they never touch a user's runs.
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


def cache_dir() -> Path:
    return Path(os.environ.get("LUNGLAB_CACHE_DIR") or Path.home() / ".cache" / "lunglab").expanduser()


def default_source() -> str:
    """The dataset a fresh session starts with: the synthetic phantom unless configured."""
    return os.environ.get("LUNGLAB_DATA", "").strip() or "synthetic"
