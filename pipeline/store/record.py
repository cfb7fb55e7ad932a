"""The run record (``config.json``), finding runs, and naming new ones.

The record is written once, when training has its data and split: the training settings as the
trainer gives them, plus what the store itself vouches for and checks on every read: the
architecture, the classes, the data (a :class:`DataSpec`), the dataset's fingerprint and the
split. The training settings have their schema in the training layer, above the store; that
layer registers its check with :func:`check_settings_with` (dependency inversion: the store
imports nothing of training), and every read of a record runs it, so a run with an absurd
setting is refused, and listed as unreadable, wherever it is opened.

Records written before the ``DataSpec`` existed name the data settings flat and split with the
training seed; :func:`upgrade_record` reads them in the current layout, so they still load.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Final, Mapping, Optional, Sequence

import torch

from pipeline.constants import CLASSES
from pipeline.data import DataSpec, ScanDataset, Split, fold_data_settings
from pipeline.errors import CheckpointError, UserInputError
from pipeline.models import ARCHITECTURES, MIN_INPUT_SIZE
from pipeline.store.files import atomic_write_json, read_json
from pipeline.store.layout import CONFIG, LAST, LAST_META, MARKERS, MODEL, REQUEST, STATUS, TRAINING_KIND
from pipeline.store.metrics import read_metrics
from pipeline.store.status import read_status

RUN_FORMAT: Final[str] = "lunglab-run"
#: Checks of the settings a record holds, registered by the layers that write them.
_SETTINGS_CHECKS: list[Callable[[Mapping[str, Any]], object]] = []


def check_settings_with(check: Callable[[Mapping[str, Any]], object]) -> None:
    """Make every read of a record also run ``check`` on it; it raises UserInputError for bad settings.

    The training layer registers its configuration's validation here when it is imported, which
    every entry point (command line, dashboard, jobs) does before it opens a run.
    """
    if check not in _SETTINGS_CHECKS:
        _SETTINGS_CHECKS.append(check)


@dataclass
class RunRecord:
    """What the store knows about one run; ``error`` is set when the run cannot be read."""

    run_dir: Path
    name: str
    #: ``config.json`` (or, before it exists, ``request.json``) as validated by :func:`validate_config`.
    config: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    #: ``status.json`` as last written; :func:`pipeline.jobs.job_state` adds process liveness.
    status: dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None

    @property
    def has_model(self) -> bool:
        return (self.run_dir / MODEL).is_file()

    @property
    def best(self) -> Optional[dict[str, Any]]:
        """The metrics line of the epoch whose model was kept, if any."""
        chosen = [line for line in self.metrics if line.get("best")]
        return chosen[-1] if chosen else None

    def training_minutes(self, epochs: Optional[int] = None) -> float:
        """Minutes this run's recipe takes to train ``epochs`` epochs (default: as many as it ran), from
        its own epochs' measured times (``time_s``) on the machine that trained it; 0 when unknown."""
        times = [float(line.get("time_s") or 0.0) for line in self.metrics]
        if not times:
            return 0.0
        return sum(times) / len(times) * (epochs or len(times)) / 60

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names in the model's output order."""
        return tuple(self.config.get("classes", CLASSES))

    @property
    def data(self) -> DataSpec:
        """The scans and split the run was trained on; KeyError for a record without data settings."""
        return DataSpec.from_dict(self.config["data"])

    @property
    def is_synthetic(self) -> bool:
        """Whether the run was trained on the synthetic phantom (never a medical result)."""
        dataset = self.config.get("dataset") or {}
        data = self.config.get("data")
        named = isinstance(data, Mapping) and data.get("source") == "synthetic"
        return bool(dataset.get("is_synthetic", named))


def upgrade_record(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` in the current layout: flat data settings of an older record nested under ``data``.

    Before the ``DataSpec``, one ``seed`` chose both the training randomness and the split, so
    an older record's split seed is its ``seed``.
    """
    if isinstance(config.get("data"), Mapping):
        return dict(config)
    flat = dict(config)
    if "seed" in flat:
        flat.setdefault("split_seed", flat["seed"])
    return fold_data_settings(flat)


def validate_config(config: Any, *, source: str = CONFIG) -> dict[str, Any]:
    """Check a run's record; return it upgraded to the current layout.

    Raises :class:`CheckpointError` naming ``source`` and the field: an unknown architecture,
    a class list that does not fit ``num_classes``, missing or out-of-range data settings (an
    image size below the models' ``MIN_INPUT_SIZE`` pixels included), or a training setting the
    registered checks refuse.
    """
    if not isinstance(config, dict):
        raise CheckpointError(f"{source} must hold a JSON object")
    config = upgrade_record(config)
    arch = config.get("arch")
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"{source}: unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}"
        )
    classes = config.get("classes", list(CLASSES))
    num_classes = config.get("num_classes", len(classes) if isinstance(classes, list) else None)
    if not (isinstance(num_classes, int) and 2 <= num_classes <= 1000):
        raise CheckpointError(f"{source}: num_classes must be an integer in [2, 1000], got {num_classes!r}")
    if not (
        isinstance(classes, list)
        and len(classes) == num_classes
        and all(isinstance(name, str) and 0 < len(name) <= 64 for name in classes)
    ):
        raise CheckpointError(f"{source}: classes must list {num_classes} short names, got {classes!r}")
    if "image_size" not in config["data"]:
        raise CheckpointError(f"{source}: the data settings give no image_size; it is not a run of this lab")
    try:
        data = DataSpec.from_dict(config["data"])
    except UserInputError as error:
        raise CheckpointError(f"{source}: {error}") from None
    if data.image_size < MIN_INPUT_SIZE:
        raise CheckpointError(
            f"{source}: image_size must be at least {MIN_INPUT_SIZE} pixels, got {data.image_size}"
        )
    for check in _SETTINGS_CHECKS:
        try:
            check(config)
        except UserInputError as error:
            raise CheckpointError(f"{source}: {error}") from None
    return config


def write_config(
    run_dir: Path,
    settings: Mapping[str, Any],
    *,
    classes: Sequence[str],
    dataset: Optional[ScanDataset] = None,
    split: Optional[Split] = None,
    created_at: Optional[float] = None,
    note: Optional[str] = None,
) -> dict[str, Any]:
    """Write the run record: ``settings`` (JSON-ready) plus classes, dataset identity and split.

    ``dataset`` and ``split`` are absent for weights trained elsewhere (``note`` then says so);
    without a split, no scan is known to be unseen by the model. Returns the record written.
    """
    record: dict[str, Any] = {
        **settings,
        "format": RUN_FORMAT,
        "num_classes": len(classes),
        "classes": list(classes),
        "created_at": time.time() if created_at is None else created_at,
        "versions": {"torch": torch.__version__},
    }
    if dataset is not None:
        record["dataset"] = dataset.record()
    if split is not None:
        record["split"] = split.to_dict()
    if note is not None:
        record["imported"] = note
    atomic_write_json(Path(run_dir) / CONFIG, validate_config(record))
    return record


def read_config(run_dir: Path) -> dict[str, Any]:
    """The validated run record; a run without one raises :class:`CheckpointError`."""
    run_dir = Path(run_dir)
    config = read_json(run_dir / CONFIG)
    if config is None:
        raise CheckpointError(f"{run_dir} has no {CONFIG}; it is not a finished or running training run")
    return validate_config(config)


def write_request(run_dir: Path, settings: Mapping[str, Any]) -> None:
    """Record the settings a run (or an evaluation job) is started with, before any work is done.

    A run is thus listed, and resumable, from the first instant; a job's process reads its settings
    from this file rather than from command-line strings.
    """
    atomic_write_json(Path(run_dir) / REQUEST, dict(settings))


def read_settings(run_dir: Path) -> dict[str, Any]:
    """The settings a run trains with: its record once written, else the request it was started with."""
    run_dir = Path(run_dir)
    if (run_dir / CONFIG).is_file():
        return read_config(run_dir)
    request = read_json(run_dir / REQUEST)
    if request is None:
        raise CheckpointError(f"{run_dir} has neither {CONFIG} nor {REQUEST}; it is not a run of this lab")
    return upgrade_record(request)


def has_config(run_dir: Path) -> bool:
    """Whether the run's record is written (its data and split are fixed)."""
    return (Path(run_dir) / CONFIG).is_file()


def read_record(run_dir: Path) -> RunRecord:
    """Read one run; a damaged run yields a record with ``error`` set instead of raising."""
    run_dir = Path(run_dir)
    record = RunRecord(run_dir=run_dir, name=run_dir.name)
    try:
        record.status = read_status(run_dir)
        record.metrics = read_metrics(run_dir)
        if (run_dir / CONFIG).is_file():
            record.config = read_config(run_dir)
        else:
            record.config = upgrade_record(read_json(run_dir / REQUEST, default={}) or {})
    except (UserInputError, OSError) as error:
        record.error = f"run {run_dir.name} cannot be read: {error}"
    return record


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a run directory: a visible folder holding a record, a request, or the status
    of a training job. Other jobs keep a status too (the demo's preparation, an evaluation): they are
    not runs and are never listed as runs."""
    path = Path(path)
    if not path.is_dir() or path.name.startswith("."):
        return False
    if any((path / name).is_file() for name in MARKERS if name != STATUS):
        return True
    if not (path / STATUS).is_file():
        return False
    try:
        kind = (read_json(path / STATUS, default={}) or {}).get("kind")
    except CheckpointError:
        return True  # a damaged status: listed, with its error, so that it can be seen and deleted
    return kind in (None, TRAINING_KIND)


def list_runs(runs_dir: Path | str) -> list[RunRecord]:
    """Every run under ``runs_dir``, newest first; queued and running ones included."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    runs = [read_record(path) for path in runs_dir.iterdir() if is_run_dir(path)]
    return sorted(runs, key=created_at, reverse=True)


def created_at(record: RunRecord) -> float:
    """When the run was created, in seconds since the epoch (its folder's time where its record has none)."""
    for value in (record.config.get("created_at"), record.status.get("created_at")):
        if isinstance(value, (int, float)):
            return float(value)
    return record.run_dir.stat().st_mtime


def resolve_run(runs_dir: Path | str, run: Path | str) -> Path:
    """A run given as a path or as a name under ``runs_dir``; CheckpointError when there is none."""
    for candidate in (Path(run), Path(runs_dir) / str(run)):
        if has_config(candidate) or (candidate / REQUEST).is_file():
            return candidate
    raise CheckpointError(
        f"no run {str(run)!r} found (looked for a run directory and for it under {runs_dir})"
    )


def new_run_dir(runs_dir: Path | str, label: str) -> Path:
    """Create a fresh, uniquely named run directory like ``20250101-120000-resnet50-pgd``."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("%Y%m%d-%H%M%S") + "-" + safe_name(label)
    for attempt in range(1000):
        path = runs_dir / (stem if attempt == 0 else f"{stem}-{attempt}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise CheckpointError(f"could not find a free run name under {runs_dir}")


def safe_name(text: str) -> str:
    """``text`` reduced to a file name of letters, digits, ``.``, ``_`` and ``-`` (at most 80)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip(".-")[:80]
    return name or "run"


def remove_weights(run_dir: Path | str) -> None:
    """Delete a run's weights (the kept model and the resumable state), keeping its record, curves and
    status: for models trained only to be measured once (a threat's surrogates and shadow models).
    Refuses a folder that is not a run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not any((run_dir / name).exists() for name in MARKERS):
        raise CheckpointError(f"{run_dir} is not a run directory; nothing was deleted")
    for name in (MODEL, LAST, LAST_META):
        (run_dir / name).unlink(missing_ok=True)


def remove_run(run_dir: Path | str) -> None:
    """Delete a run directory and everything in it; refuses a folder that is not a run.

    It does not look at the run's process: :func:`pipeline.jobs.delete_run` refuses running jobs
    first and is what callers use.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not any((run_dir / name).exists() for name in MARKERS):
        raise CheckpointError(f"{run_dir} is not a run directory; nothing was deleted")
    shutil.rmtree(run_dir)
