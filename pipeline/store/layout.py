"""The files of a run directory, by name; every other module of the store reads and writes them.

A run directory holds:

- ``config.json``: the run record (training settings, classes, the dataset's identity, the split);
- ``request.json``: the settings a run was started with, before ``config.json`` exists;
- ``metrics.jsonl``: one line per finished epoch;
- ``model.safetensors``: the kept (best) model;
- ``last.safetensors`` + ``last.json``: the state to resume from (model, optimizer, RNG, loop state);
- ``status.json``: phase, progress, error and job details.
"""

from __future__ import annotations

from typing import Final

CONFIG: Final[str] = "config.json"
REQUEST: Final[str] = "request.json"
METRICS: Final[str] = "metrics.jsonl"
MODEL: Final[str] = "model.safetensors"
LAST: Final[str] = "last.safetensors"
LAST_META: Final[str] = "last.json"
STATUS: Final[str] = "status.json"
#: Files that make up a run and travel in an export; nothing else is exported or imported.
RUN_FILES: Final[tuple[str, ...]] = (CONFIG, METRICS, MODEL, LAST, LAST_META, STATUS)
#: Any of these makes a directory a run (queued, running or finished).
MARKERS: Final[tuple[str, ...]] = (CONFIG, STATUS, REQUEST)
#: The ``kind`` a training job writes in its status; other jobs' directories (kind ``demo``,
#: ``evaluation``) are not runs.
TRAINING_KIND: Final[str] = "training"
