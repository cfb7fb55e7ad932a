"""The scans a saved run must be evaluated on: its own data, its own stored split.

Evaluating on scans the model trained on (or on a fresh split that overlaps its training set)
would inflate every figure, so the run's record decides: its ``DataSpec`` (same source,
image size, phantom seed, window), the split stored at training time, and a fingerprint check
that the data did not change since.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from pipeline.data import ScanDataset, Split, load_dataset, same_data
from pipeline.data.splits import SIDES
from pipeline.errors import CheckpointError, UserInputError
from pipeline.progress import ProgressCallback
from pipeline.store import RunRecord

SPLIT_SIDES = ("test", "val", "train", "all")


def run_data(
    record: RunRecord,
    *,
    progress: Optional[ProgressCallback] = None,
    load: Callable[..., ScanDataset] = load_dataset,
) -> tuple[ScanDataset, Split]:
    """Load the dataset a run was trained on and the split it stored.

    ``load(spec, progress=...)`` loads a ``DataSpec`` as :func:`load_dataset` does; the dashboard
    passes its process-wide cache so a run's data and the Data page's are one object in memory, not
    two. Raises
    :class:`CheckpointError` for a run without a stored split or whose data changed since.
    """
    config = record.config
    if "split" not in config or not config.get("data"):
        raise CheckpointError(
            "this run stored no data source or split (imported from elsewhere, or still starting); evaluate "
            "a finished run of this lab"
        )
    spec = record.data
    dataset = load(spec, progress=progress)
    stored = config.get("dataset")
    if stored and not same_data(stored, dataset.record()):
        raise CheckpointError(
            f"the data at {spec.source} changed since this run was trained, so its stored split no longer "
            "points at the same scans; evaluate on the original data or train a new run"
        )
    split = Split.from_dict(config["split"])
    _check_split(split, len(dataset), record.name)
    return dataset, split


def _check_split(split: Split, size: int, run: str) -> None:
    """A stored split pointing outside the dataset was edited or belongs to other data: refuse it
    up front, before any model work, rather than fail deep inside a batch loop."""
    owner = f"run {run}" if run else "this run"
    for side in SIDES:
        indices = getattr(split, side)
        if indices.size and (indices.min() < 0 or indices.max() >= size):
            raise CheckpointError(
                f"the stored split of {owner} is damaged or does not match its dataset: its {side} side "
                f"points at scans outside 0..{size - 1} of the {size} scans; re-train the run (which makes "
                "a fresh split) on the original data"
            )


def split_indices(split: Split, side: str, labels: np.ndarray, *, limit: Optional[int] = None) -> np.ndarray:
    """The indices of one side of the split (``all`` for every scan), optionally only ``limit`` of them."""
    if side not in SPLIT_SIDES:
        raise UserInputError(f"unknown split {side!r}; choose one of {', '.join(SPLIT_SIDES)}")
    if side == "all":
        chosen = np.sort(np.concatenate([split.train, split.val, split.test]))
    else:
        chosen = np.asarray(getattr(split, side))
    if chosen.size == 0:
        raise UserInputError(f"the run's {side} split is empty; choose another with --split (e.g. val)")
    if limit is not None:
        if limit < 1:
            raise UserInputError(f"--limit must be at least 1, got {limit}")
        chosen = balanced_subset(chosen, np.asarray(labels)[chosen], limit)
    return chosen


def balanced_subset(indices: np.ndarray, labels: np.ndarray, limit: int) -> np.ndarray:
    """``limit`` of ``indices`` (with their ``labels``) taken from the classes in turn (lowest index
    first), so a short run still sees every class; deterministic, hence the same scans for every
    model compared. Sorted, like ``indices``."""
    order = np.argsort(indices, kind="stable")
    indices, labels = indices[order], labels[order]
    rank = np.zeros(indices.size, dtype=np.int64)  # position of each scan within its class
    for label in np.unique(labels):
        members = labels == label
        rank[members] = np.arange(members.sum())
    picked = np.lexsort((labels, rank))[:limit]
    return np.sort(indices[picked])
