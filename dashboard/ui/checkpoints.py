"""Adopting weights trained elsewhere: a bare ``.safetensors`` file becomes a run of this lab.

Composition only, from :mod:`pipeline.store`: the file is read as safetensors (never unpickled),
its tensors are checked by name, shape, dtype and finiteness against a freshly built model, and
only then is a run directory written (model, record, status). A run made this way stores no
split, so the Attack page offers uploads for it, not "test scans" it may have been trained on.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from pipeline.constants import CLASSES
from pipeline.data import DataSpec
from pipeline.models import build_model
from pipeline.store import (
    MODEL,
    load_state,
    load_tensors,
    new_run_dir,
    save_model,
    update_status,
    write_config,
)
from pipeline.training import TrainConfig

#: What the run's config says about its data: unknown, and not the synthetic phantom.
FOREIGN_DATA = "(trained elsewhere)"


def import_checkpoint(path: Path, runs_dir: Path, *, arch: str, image_size: int) -> Path:
    """Check the weights at ``path`` against ``arch`` and store them as a new run; returns its directory."""
    config = TrainConfig(arch=arch, data=DataSpec(source=FOREIGN_DATA, image_size=image_size))  # validated
    tensors, _ = load_tensors(path)
    model = build_model(arch)
    load_state(tensors, model, path.name)
    run_dir = new_run_dir(runs_dir, f"{arch}-imported")
    try:
        save_model(run_dir / MODEL, model)
        write_config(
            run_dir,
            config.to_dict(),
            classes=CLASSES,
            note="weights uploaded as safetensors; training unknown",
        )
        update_status(
            run_dir,
            {
                "phase": "imported",
                "created_at": time.time(),
                "message": "weights trained elsewhere, imported as safetensors",
            },
        )
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run_dir
