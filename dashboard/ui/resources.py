"""Cached models and datasets, shared safely between sessions.

A model is loaded once per run directory and checkpoint version (the checkpoint's mtime is part
of the key, so a retrained or replaced run is reloaded, never served stale). Every use of a
shared model goes through :func:`pipeline.guard.exclusive_eval` inside the pipeline, so two
people attacking different scans at once cannot see each other's mode or gradients.
Datasets are resources too: large tensors that nobody mutates, not worth pickling per session.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import streamlit as st
from torch import nn

from dashboard.ui.progress_view import background
from pipeline.data import DataSpec, ScanDataset, Split, leakage_report, load_dataset, split_for
from pipeline.device import select_device
from pipeline.evaluation.data import run_data as stored_run_data
from pipeline.evaluation.ensemble import Ensemble, load_ensemble
from pipeline.evaluation.profile import ValidationProfile, validation_profile
from pipeline.explain import default_layer, feature_grids
from pipeline.progress import ProgressCallback
from pipeline.store import MODEL, RunRecord, load_model

MODEL_CACHE_ENTRIES = 4
#: Ensembles hold copies of their members: a few at a time.
ENSEMBLE_CACHE_ENTRIES = 2
#: What identifies a run's data and split in its record (the cache key of its test scans).
RUN_DATA_FIELDS = ("data", "split", "dataset")
DATASET_CACHE_ENTRIES = 4


def model_version(run_dir: str | Path) -> float:
    """The checkpoint's modification time: a new checkpoint means a new cache entry."""
    path = Path(run_dir) / MODEL
    return path.stat().st_mtime if path.exists() else 0.0


@st.cache_resource(max_entries=MODEL_CACHE_ENTRIES, show_spinner="Loading the model…")
def _load_model(run_dir: str, version: float) -> tuple[nn.Module, RunRecord]:
    return load_model(run_dir, device=select_device())


def cached_model(run_dir: str | Path) -> tuple[nn.Module, RunRecord]:
    """The model of ``run_dir`` on the chosen device, loaded once per checkpoint version."""
    return _load_model(str(Path(run_dir).resolve()), model_version(run_dir))


@st.cache_resource(max_entries=ENSEMBLE_CACHE_ENTRIES, show_spinner="Loading the ensemble…")
def _load_ensemble(
    run_dirs: tuple[str, ...], versions: tuple[float, ...], combine: str
) -> tuple[Ensemble, list[RunRecord]]:
    return load_ensemble(run_dirs, combine, device=select_device())


def cached_ensemble(run_dirs: Sequence[str | Path], combine: str) -> tuple[Ensemble, list[RunRecord]]:
    """The runs as one ensemble combined by ``combine``, loaded once per checkpoint versions and
    rule. Its members are its own copies, never the single models :func:`cached_model` shares, so
    locking the ensemble (:func:`pipeline.guard.exclusive_eval`) covers every member. Raises
    :class:`UserInputError` for runs that cannot be combined
    (:func:`pipeline.evaluation.ensemble.member_records`)."""
    resolved = tuple(str(Path(path).resolve()) for path in run_dirs)
    return _load_ensemble(resolved, tuple(model_version(path) for path in resolved), combine)


@st.cache_resource(max_entries=ENSEMBLE_CACHE_ENTRIES, show_spinner=False)
def _ensemble_cam_grids(
    run_dirs: tuple[str, ...], versions: tuple[float, ...], combine: str, size: int
) -> tuple[dict[str, tuple[int, int]], str]:
    ensemble = _load_ensemble(run_dirs, versions, combine)[0]
    return feature_grids(ensemble, size), default_layer(ensemble, size)


def ensemble_cam_grids(
    run_dirs: Sequence[str | Path], combine: str, size: int
) -> tuple[dict[str, tuple[int, int]], str]:
    """As :func:`cam_grids`, for an ensemble: every member's layers, named ``"<member>: <layer>"``."""
    resolved = tuple(str(Path(path).resolve()) for path in run_dirs)
    return _ensemble_cam_grids(resolved, tuple(model_version(path) for path in resolved), combine, size)


@st.cache_resource(max_entries=DATASET_CACHE_ENTRIES, show_spinner=False)
def _cached_scans(
    scans: tuple[Any, ...], _spec: DataSpec, _progress: Optional[ProgressCallback]
) -> ScanDataset:
    return load_dataset(_spec, progress=_progress)


def cached_dataset(spec: DataSpec, progress: Optional[ProgressCallback] = None) -> ScanDataset:
    """The scans of ``spec``, held once per process whatever its split; ``progress`` reports a first load."""
    return _cached_scans(spec.scans, spec, progress)


def loaded_dataset(spec: DataSpec) -> Optional[ScanDataset]:
    """The dataset, loaded in the background with live progress on a first load; None until ready."""
    return background(
        "dataset.load",
        "Loading scans",
        lambda progress: cached_dataset(spec, progress),
        inputs={"dataset": spec.scans},
    )


@st.cache_resource(max_entries=DATASET_CACHE_ENTRIES, show_spinner=False)
def _run_data(
    key: str, _record: RunRecord, _progress: Optional[ProgressCallback] = None
) -> tuple[ScanDataset, Split]:
    return stored_run_data(_record, progress=_progress, load=cached_dataset)


def run_data(record: RunRecord) -> Optional[tuple[ScanDataset, Split]]:
    """The dataset a run was trained on and the split it stored, so "test scans" means unseen ones.

    Loaded in the background (live progress on a first load); None until ready.
    """
    key = json.dumps({name: record.config.get(name) for name in RUN_DATA_FIELDS}, sort_keys=True)
    return background(
        "run.data",
        "Loading the model's test scans",
        lambda progress: _run_data(key, record, _progress=progress),
        inputs={"run": key},
    )


@st.cache_resource(max_entries=DATASET_CACHE_ENTRIES, show_spinner="Splitting and checking for leaks…")
def cached_split(spec: DataSpec) -> tuple[Split, dict[str, Any]]:
    """The split ``spec`` names (the one training will use) and its leakage report."""
    dataset = cached_dataset(spec)
    split = split_for(dataset, spec)
    return split, leakage_report(dataset, split)


def run_profile(
    run_dir: str | Path, model: nn.Module, config: dict[str, Any], progress: Optional[ProgressCallback] = None
) -> tuple[Optional[ValidationProfile], Optional[str]]:
    """The run's validation profile (computed on first use, then read from beside the run), or None and
    why there is none: weights imported from elsewhere come without held-out scans."""
    if "split" not in config:
        return None, "this model came without its training data, so there is nothing to compare the scan with"
    return validation_profile(run_dir, model, progress=progress, load=cached_dataset), None


@st.cache_resource(max_entries=MODEL_CACHE_ENTRIES, show_spinner=False)
def _cam_grids(run_dir: str, version: float, size: int) -> tuple[dict[str, tuple[int, int]], str]:
    model = _load_model(run_dir, version)[0]
    return feature_grids(model, size), default_layer(model, size)


def cam_grids(run_dir: str | Path, size: int) -> tuple[dict[str, tuple[int, int]], str]:
    """The layers Grad-CAM can explain on this run's model with their grids at ``size`` px, and the
    default one (the deepest with a grid fine enough to localise)."""
    return _cam_grids(str(Path(run_dir).resolve()), model_version(run_dir), size)
