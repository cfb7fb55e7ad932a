"""Shared pieces of the training tests: tiny settings, subprocess launching, run-directory checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from pipeline.constants import CLASSES
from pipeline.store import LAST, METRICS, MODEL, load_model, load_tensors, read_config, read_status

REPO = Path(__file__).resolve().parent.parent

#: A few seconds per epoch on one CPU thread: 32 px phantoms, ResNet18, a handful of batches.
TINY: dict[str, Any] = dict(
    data="synthetic",
    count=60,
    image_size=32,
    arch="resnet18",
    batch_size=16,
    optimizer="sgd",
    lr=0.05,
    val_steps=1,
    eval_size=8,
    steps=1,
    device="cpu",
    val_fraction=0.2,
    test_fraction=0.1,
    augment=False,
)


def cli_args(settings: dict[str, Any]) -> list[str]:
    """``--flag value`` pairs for ``python -m pipeline train``."""
    args: list[str] = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            args += [flag, str(value)]
    return args


def child_env() -> dict[str, str]:
    """One thread per child process: the test machine has two cores for everything."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def start_cli(*args: str, runner: tuple[str, ...] = (sys.executable, "-m", "pipeline")) -> subprocess.Popen:
    return subprocess.Popen(
        [*runner, *args],
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(condition: Callable[[], bool], timeout: float = 120.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def metric_epochs(run_dir: Path) -> list[int]:
    """Epochs of the raw metrics lines, duplicates and all (the store's reader would hide them)."""
    path = run_dir / METRICS
    if not path.is_file():
        return []
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line.strip()]


def checkpoint_epoch(run_dir: Path) -> int:
    """The epoch of the resumable checkpoint, from the index stored inside it (0 when none)."""
    if not (run_dir / LAST).is_file():
        return 0
    _, metadata = load_tensors(run_dir / LAST)
    return int(json.loads(metadata["index"])["epoch"])


def assert_consistent(run_dir: Path) -> None:
    """What must hold after a kill at any instant: every file present is readable and they agree."""
    if (run_dir / "config.json").is_file():
        read_config(run_dir)
    read_status(run_dir)
    if (run_dir / MODEL).is_file():
        load_model(run_dir)
    if (run_dir / LAST).is_file():
        load_model(run_dir, which="last")
    epochs = metric_epochs(run_dir)
    assert epochs == list(range(1, len(epochs) + 1)), f"metrics epochs {epochs}"
    # at most the epoch in flight is ahead of the checkpoint (its line lands first)
    assert checkpoint_epoch(run_dir) <= len(epochs) <= checkpoint_epoch(run_dir) + 1, (
        f"metrics {epochs} vs checkpoint {checkpoint_epoch(run_dir)}"
    )


def make_blob_folder(root: Path, per_class: int = 50, size: int = 32, seed: int = 0) -> Path:
    """An easy three-class folder dataset where robust features exist: one disc per scan whose
    brightness (90, 150 or 210 on a background of 60) gives the class. Bridging the 60 grey levels
    between classes takes 30 from each side, more than an L-inf budget of 16/255, so adversarial
    training can learn a robust rule from a few dozen scans, while standard training leans on
    fragile ones."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    for label, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(1, per_class + 1):
            image = rng.normal(60, 15, (size, size))
            centre_row, centre_col = rng.integers(8, size - 8, 2)
            disc = (rows - centre_row) ** 2 + (cols - centre_col) ** 2 < 36
            image[disc] = (90, 150, 210)[label] + rng.normal(0, 10)
            cv2.imwrite(str(folder / f"{name} ({number}).png"), image.clip(0, 255).astype(np.uint8))
    return root
