"""The run store: one directory per training, written atomically, read back without trust.

A run directory holds ``config.json`` (everything needed to reproduce the run), ``metrics.jsonl``
(one line per finished epoch), ``model.safetensors`` (the selected model), ``last.safetensors`` +
``last.json`` (the state to resume from) and ``status.json`` (phase, progress, error, job info).

Every file is written to a temporary file in the same directory, flushed to disk and renamed
over the old one, so a kill at any instant leaves either the old or the new file, never half of
one. Reading assumes nothing: checkpoints are safetensors (never pickle), checked tensor by
tensor against a freshly built model, and imported zips are screened for path tricks and bombs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from pipeline.constants import CLASSES
from pipeline.errors import CheckpointError, UserInputError
from pipeline.json_object import parse_json_object
from pipeline.models import ARCHITECTURES, MIN_INPUT_SIZE, ScanClassifier, build_model

CONFIG = "config.json"
METRICS = "metrics.jsonl"
MODEL = "model.safetensors"
LAST = "last.safetensors"
LAST_META = "last.json"
STATUS = "status.json"
#: The training request a background job was started with, before ``config.json`` exists.
REQUEST = "request.json"
#: Files that make up a run and travel in an export; nothing else is exported or imported.
RUN_FILES = (CONFIG, METRICS, MODEL, LAST, LAST_META, STATUS)

MODEL_FORMAT = "lunglab-model"
#: Phases after which nothing more will happen to a run.
TERMINAL_PHASES = frozenset({"done", "failed", "cancelled", "imported"})

MAX_IMAGE_SIZE = 1024
#: Per-file size limits for reading and importing; a ResNet101 with Adam state stays far below.
MAX_BYTES = {".json": 4 << 20, ".jsonl": 64 << 20, ".safetensors": 2 << 30}
MAX_IMPORT_BYTES = 5 << 30
#: Safetensors files of trained weights hardly compress; a much higher ratio means a bomb.
MAX_COMPRESSION_RATIO = 50
_CHUNK = 1 << 20


@dataclass
class RunRecord:
    """What the store knows about one run; ``error`` is set when the run cannot be read."""

    run_dir: Path
    name: str
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


# --------------------------------------------------------------------------- atomic writes
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never a mix.

    A failure (disk full, no permission) raises :class:`CheckpointError` and keeps the old file.
    """
    path = Path(path)
    handle, temporary = None, None
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(handle, "wb") as stream:
            handle = None
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
        temporary = None
        _fsync_directory(path.parent)
    except OSError as error:
        raise CheckpointError(_save_failure(path, error)) from error
    finally:
        if handle is not None:
            os.close(handle)
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=1, allow_nan=False) + "\n").encode())


def remove_partial_writes(directory: Path) -> None:
    """Delete temporary files left by a process killed in the middle of an atomic write."""
    for leftover in Path(directory).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            leftover.unlink()


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable; some filesystems cannot open directories, which is fine."""
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _save_failure(path: Path, error: OSError) -> str:
    reason = os.strerror(error.errno) if error.errno else str(error)
    advice = {
        errno.ENOSPC: "free some disk space",
        errno.EDQUOT: "free some disk space",
        errno.EACCES: "make the directory writable",
        errno.EPERM: "make the directory writable",
        errno.EROFS: "use a writable runs directory",
    }.get(error.errno or 0, "check the disk and the directory's permissions")
    return (
        f"could not save {path.name} in {path.parent}: {reason}. The previous version of the file is "
        f"kept; {advice} and resume the run."
    )


# ------------------------------------------------------------------------------ json files
def read_json(path: Path, *, default: Optional[dict[str, Any]] = None) -> Optional[dict[str, Any]]:
    """Read a JSON object written by this store; missing gives ``default``, damage a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        return default
    return parse_json_object(_read_limited(path), f"{path.name} in {path.parent}")


def _read_limited(path: Path) -> bytes:
    limit = MAX_BYTES.get(path.suffix, MAX_BYTES[".json"])
    size = path.stat().st_size
    if size > limit:
        raise CheckpointError(f"{path.name} is {size} bytes, more than the {limit} a run file may have")
    return path.read_bytes()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Per-epoch metrics, one per epoch; a damaged line (never written by us) is skipped."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    lines: dict[int, dict[str, Any]] = {}
    for text in _read_limited(path).decode("utf-8", errors="replace").splitlines():
        with contextlib.suppress(CheckpointError):
            line = parse_json_object(text, METRICS)
            if isinstance(line.get("epoch"), int):
                lines[line["epoch"]] = line
    return [lines[epoch] for epoch in sorted(lines)]


def write_metrics(run_dir: Path, lines: list[dict[str, Any]]) -> None:
    """Replace ``metrics.jsonl`` as a whole (it is small): no half line, no duplicate epoch."""
    by_epoch = {int(line["epoch"]): line for line in lines}
    text = "".join(json.dumps(by_epoch[epoch], allow_nan=False) + "\n" for epoch in sorted(by_epoch))
    atomic_write_bytes(Path(run_dir) / METRICS, text.encode())


def append_metrics(run_dir: Path, line: dict[str, Any]) -> None:
    """Add one epoch's line, replacing a line of the same epoch left by an interrupted attempt."""
    kept = [old for old in read_metrics(run_dir) if old["epoch"] < line["epoch"]]
    write_metrics(run_dir, [*kept, line])


# ---------------------------------------------------------------------------------- status
@contextlib.contextmanager
def _status_lock(run_dir: Path) -> Iterator[None]:
    """Serialise read-modify-write of ``status.json`` between the job and its watchers."""
    path = Path(run_dir) / ".status.lock"
    try:
        lock = open(path, "a+b")
    except OSError as error:
        raise CheckpointError(_save_failure(path.with_name(STATUS), error)) from error
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_status(run_dir: Path) -> dict[str, Any]:
    """``status.json``, or {} when it is damaged or not an object.

    It only records progress and job details: damage there must not make a run's model
    unusable, and the next update rewrites the file whole.
    """
    try:
        return read_json(Path(run_dir) / STATUS, default={})
    except CheckpointError:
        return {}


def update_status(
    run_dir: Path, change: Mapping[str, Any] | Callable[[dict[str, Any]], Optional[dict]]
) -> dict:
    """Merge ``change`` into ``status.json`` (or let it compute the new status) under a lock.

    A callable receives the current status and returns the new one, or None to leave it alone;
    this lets a watcher mark a dead job failed without overwriting a final status written a
    moment earlier by the job itself.
    """
    with _status_lock(run_dir):
        current = read_status(run_dir)
        if callable(change):
            new = change(dict(current))
            if new is None:
                return current
        else:
            new = {**current, **change}
        new["updated_at"] = time.time()
        atomic_write_json(Path(run_dir) / STATUS, new)
        return new


# --------------------------------------------------------------------------------- config
def validate_config(config: Any, *, source: str = CONFIG) -> dict[str, Any]:
    """Check a run's ``config.json``: the model fields exactly, every training field by its range."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{source} must hold a JSON object")
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
    image_size = config.get("image_size")
    if not (isinstance(image_size, int) and MIN_INPUT_SIZE <= image_size <= MAX_IMAGE_SIZE):
        raise CheckpointError(
            f"{source}: image_size must be an integer in [{MIN_INPUT_SIZE}, {MAX_IMAGE_SIZE}], "
            f"got {image_size!r}"
        )
    _check_training_fields(config, source)
    return config


def _check_training_fields(config: dict[str, Any], source: str) -> None:
    # Imported here: pipeline.training builds on this module, so a top-level import would cycle.
    from pipeline.training.config import TrainConfig

    try:
        TrainConfig.from_dict(config)
    except UserInputError as error:
        raise CheckpointError(f"{source}: {error}") from None


def read_config(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    config = read_json(run_dir / CONFIG)
    if config is None:
        raise CheckpointError(f"{run_dir} has no {CONFIG}; it is not a finished or running training run")
    return validate_config(config)


# ------------------------------------------------------------------------------- tensors
def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Write a safetensors file atomically (contiguous CPU copies; shared storage is fine)."""
    plain = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in tensors.items()}
    atomic_write_bytes(path, save_safetensors_bytes(plain, metadata=dict(metadata)))


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file written by this store; anything else raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    data = _read_limited(path)
    try:
        tensors = load_safetensors_bytes(data)
        header_size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_size]).get("__metadata__") or {}
    except (SafetensorError, ValueError, RuntimeError, UnicodeDecodeError) as error:
        raise CheckpointError(
            f"{path.name} is not a readable safetensors file ({error}); it is truncated, damaged or not a "
            "checkpoint of this lab (pickled .pt files are never loaded)"
        ) from None
    return tensors, metadata


def save_model(path: Path, model: nn.Module) -> None:
    """Save the weights of ``model`` (a ScanClassifier, possibly wrapped) with its architecture."""
    inner = unwrap(model)
    metadata = {"format": MODEL_FORMAT, "arch": inner.arch, "num_classes": str(inner.num_classes)}
    save_tensors(path, inner.state_dict(), metadata)


def unwrap(model: nn.Module) -> ScanClassifier:
    """The ScanClassifier inside DistributedDataParallel and ``torch.compile`` wrappers."""
    while not isinstance(model, ScanClassifier):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            raise TypeError(f"expected a ScanClassifier, got {type(model).__name__}")
        model = inner
    return model


def check_state(tensors: Mapping[str, torch.Tensor], model: nn.Module, source: str) -> None:
    """Compare a checkpoint's tensors with ``model``'s by name, shape and dtype; reject NaN/inf."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not match the architecture: "
            f"missing {_few(missing)}, unexpected {_few(unexpected)}"
        )
    for name, reference in expected.items():
        tensor = tensors[name]
        if tensor.shape != reference.shape or tensor.dtype != reference.dtype:
            raise CheckpointError(
                f"{source}: tensor {name} is {tuple(tensor.shape)} {tensor.dtype}, the architecture needs "
                f"{tuple(reference.shape)} {reference.dtype}"
            )
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{source}: tensor {name} contains NaN or infinite values")


def _few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "") if names else "none"


def load_model(
    run_dir: Path | str, *, device: str | torch.device = "cpu", which: str = "best"
) -> tuple[ScanClassifier, RunRecord]:
    """Build the run's model and load its best (or ``which="last"``) weights, in eval mode."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run {run_dir} does not exist")
    if which not in ("best", "last"):
        raise UserInputError(f"which must be 'best' or 'last', got {which!r}")
    record = read_record(run_dir)
    if record.error:
        raise CheckpointError(record.error)
    config = record.config
    path = run_dir / (MODEL if which == "best" else LAST)
    if not path.is_file():
        raise CheckpointError(
            f"run {record.name} has no saved model yet ({path.name} is missing); "
            "wait until its first epoch has finished"
        )
    tensors, metadata = load_tensors(path)
    if which == "last":
        tensors = {
            name[len("model.") :]: tensor for name, tensor in tensors.items() if name.startswith("model.")
        }
    elif metadata.get("format") != MODEL_FORMAT or metadata.get("arch") != config["arch"]:
        raise CheckpointError(
            f"{path.name} of run {record.name} was not written for a {config['arch']} of this lab"
        )
    model = build_model(config["arch"], num_classes=config.get("num_classes", len(CLASSES)))
    check_state(tensors, model, f"{path.name} of run {record.name}")
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval(), record


# ----------------------------------------------------------------------------- listing
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
            record.config = read_json(run_dir / REQUEST, default={})
    except (UserInputError, OSError) as error:
        record.error = f"run {run_dir.name} cannot be read: {error}"
    return record


def list_runs(runs_dir: Path | str) -> list[RunRecord]:
    """Every run under ``runs_dir``, newest first; queued and running ones included."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    runs = [
        read_record(path)
        for path in runs_dir.iterdir()
        if path.is_dir()
        and not path.name.startswith(".")
        and any((path / name).is_file() for name in (CONFIG, STATUS, REQUEST))
    ]
    return sorted(runs, key=_created, reverse=True)


def _created(record: RunRecord) -> float:
    for value in (record.config.get("created_at"), record.status.get("created_at")):
        if isinstance(value, (int, float)):
            return float(value)
    return record.run_dir.stat().st_mtime


def new_run_dir(runs_dir: Path | str, label: str) -> Path:
    """Create a fresh, uniquely named run directory like ``20250101-120000-resnet50-pgd``."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("%Y%m%d-%H%M%S") + "-" + _safe_name(label)
    for attempt in range(1000):
        path = runs_dir / (stem if attempt == 0 else f"{stem}-{attempt}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise CheckpointError(f"could not find a free run name under {runs_dir}")


def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip(".-")[:80]
    return name or "run"


def delete_run(run_dir: Path | str) -> None:
    """Remove a run; refused while its job is still running (cancel it first)."""
    # Imported here: pipeline.jobs builds on this module's files and locks.
    from pipeline.jobs import job_state

    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not any((run_dir / name).exists() for name in (CONFIG, STATUS, REQUEST)):
        raise CheckpointError(f"{run_dir} is not a run directory; nothing was deleted")
    if job_state(run_dir).running:
        raise UserInputError(f"run {run_dir.name} is still running; cancel it and wait for it to stop first")
    shutil.rmtree(run_dir)


# ---------------------------------------------------------------------- export / import
def export_run(run_dir: Path | str, dest: Path | str | None = None, *, include_last: bool = True) -> Path:
    """Zip a run's files (no logs, no job details) under a folder named after the run."""
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    if record.error:
        raise CheckpointError(record.error)
    if not (run_dir / MODEL).is_file():
        raise CheckpointError(f"run {record.name} has no saved model to export yet")
    dest = Path(dest) if dest is not None else run_dir.parent / ".exports" / f"{record.name}.zip"
    dest.parent.mkdir(parents=True, exist_ok=True)
    names = [
        name
        for name in RUN_FILES
        if (run_dir / name).is_file() and name != STATUS and (include_last or name not in (LAST, LAST_META))
    ]
    status = {key: value for key, value in record.status.items() if key != "job"}
    handle, temporary = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(handle)
    try:
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in names:
                archive.write(run_dir / name, f"{record.name}/{name}")
            archive.writestr(f"{record.name}/{STATUS}", json.dumps(status, indent=1))
        os.replace(temporary, dest)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise CheckpointError(_save_failure(dest, error)) from error
    return dest


def import_run(zip_path: Path | str, runs_dir: Path | str) -> Path:
    """Unpack an exported run into ``runs_dir`` after checking every entry; return its directory.

    Only the known run files are accepted, each with a size limit checked against both the
    declared and the actually decompressed size; names with folders, ``..``, absolute paths or
    links are refused. The run is unpacked into a hidden staging folder, its config and model
    are verified, and only then is it renamed into place.
    """
    zip_path, runs_dir = Path(zip_path), Path(runs_dir)
    if not zip_path.is_file() or not zipfile.is_zipfile(zip_path):
        raise CheckpointError(
            f"{zip_path.name} is not a zip file; export a run from this lab and import that zip"
        )
    runs_dir.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            folder, entries = _screen_entries(archive.infolist())
            staging = Path(tempfile.mkdtemp(prefix=".import-", dir=runs_dir))
            try:
                for entry, name in entries:
                    _extract_limited(archive, entry, staging / name)
                try:
                    _verify_import(staging)
                except CheckpointError as error:  # the user knows the zip, not the hidden staging folder
                    message = str(error).replace(str(staging), zip_path.name)
                    raise CheckpointError(message.replace(staging.name, zip_path.name)) from None
                target = _free_name(runs_dir, _safe_name(folder or zip_path.stem))
                os.rename(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as error:
        raise CheckpointError(f"{zip_path.name} is a damaged or unsupported zip file ({error})") from None
    return target


def _screen_entries(infos: list[zipfile.ZipInfo]) -> tuple[str, list[tuple[zipfile.ZipInfo, str]]]:
    """Check names, kinds and declared sizes of all entries before anything is written."""
    if len(infos) > 2 * len(RUN_FILES):
        raise CheckpointError(
            f"the zip holds {len(infos)} entries; a run export holds at most {len(RUN_FILES)} files"
        )
    folders, entries, total = set(), [], 0
    for info in infos:
        name = info.filename
        if info.is_dir():
            continue
        parts = name.split("/")
        if (
            "\\" in name
            or name.startswith("/")
            or ":" in name
            or ".." in parts
            or len(parts) > 2
            or parts[-1] not in RUN_FILES
        ):
            raise CheckpointError(
                f"the zip contains {name!r}, which is not a run file; only "
                f"{', '.join(RUN_FILES)} (optionally in one folder) may be imported"
            )
        if stat.S_ISLNK(info.external_attr >> 16) or info.flag_bits & 0x1:
            raise CheckpointError(f"the zip entry {name!r} is a link or encrypted; it cannot be imported")
        limit = MAX_BYTES[Path(name).suffix]
        if info.file_size > limit:
            raise CheckpointError(f"{name!r} declares {info.file_size} bytes, more than the {limit} allowed")
        if info.file_size > 1 << 20 and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
            raise CheckpointError(
                f"{name!r} expands {info.file_size // max(info.compress_size, 1)}-fold; "
                "this looks like a zip bomb and was not unpacked"
            )
        total += info.file_size
        folders.add(parts[0] if len(parts) == 2 else "")
        entries.append((info, parts[-1]))
    if total > MAX_IMPORT_BYTES:
        raise CheckpointError(
            f"the zip would unpack to {total} bytes, more than the {MAX_IMPORT_BYTES} allowed"
        )
    if len(folders) > 1 or len({name for _, name in entries}) != len(entries):
        raise CheckpointError(
            "the zip holds more than one run or repeats a file; import one exported run at a time"
        )
    if not {CONFIG, MODEL} <= {name for _, name in entries}:
        raise CheckpointError(f"the zip lacks {CONFIG} or {MODEL}; it is not an exported run")
    return (folders.pop() if folders else ""), entries


def _extract_limited(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    """Decompress one entry, stopping as soon as it grows past its declared size or limit."""
    limit = min(info.file_size, MAX_BYTES[target.suffix])
    written = 0
    with archive.open(info) as source, open(target, "xb") as sink:
        while chunk := source.read(_CHUNK):
            written += len(chunk)
            if written > limit:
                raise CheckpointError(
                    f"{info.filename!r} decompresses to more than its declared {limit} bytes; "
                    "the zip was tampered with and was not imported"
                )
            sink.write(chunk)


def _verify_import(staging: Path) -> None:
    """Load the staged run as a user would; strip job details that belong to another machine."""
    load_model(staging)
    if (staging / LAST).is_file():
        load_model(staging, which="last")
    status = read_status(staging)
    status.pop("job", None)
    if status.get("phase") not in TERMINAL_PHASES:
        status["phase"] = "imported"
    atomic_write_json(staging / STATUS, status)
    with contextlib.suppress(OSError):
        (staging / ".status.lock").unlink()


def _free_name(runs_dir: Path, stem: str) -> Path:
    for attempt in range(1000):
        path = runs_dir / (stem if attempt == 0 else f"{stem}-imported-{attempt}")
        if not path.exists():
            return path
    raise CheckpointError(f"could not find a free name for the imported run under {runs_dir}")
