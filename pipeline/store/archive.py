"""Export a run as a zip and import one, screening every entry for path tricks and bombs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Final

from pipeline.errors import CheckpointError, failure_reason
from pipeline.store.files import MAX_BYTES, atomic_write_json, save_failure
from pipeline.store.layout import CONFIG, LAST, LAST_META, MODEL, RUN_FILES, STATUS
from pipeline.store.model import load_model
from pipeline.store.record import read_record, safe_name
from pipeline.store.status import LOCK, TERMINAL_PHASES, read_status

MAX_IMPORT_BYTES: Final[int] = 5 << 30
#: Safetensors files of trained weights hardly compress; a much higher ratio means a bomb.
MAX_COMPRESSION_RATIO: Final[int] = 50
_CHUNK: Final[int] = 1 << 20


def export_run(run_dir: Path | str, dest: Path | str | None = None, *, include_last: bool = True) -> Path:
    """Zip a run's files (no logs, no job details) under a folder named after the run; return the zip."""
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
                archive.write(run_dir / name, f"{record.name}/{name}", compress_type=_compression(name))
            archive.writestr(f"{record.name}/{STATUS}", json.dumps(status, indent=1))
        os.replace(temporary, dest)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise CheckpointError(save_failure(dest, error)) from error
    return dest


def _compression(name: str) -> int:
    """How an exported file is packed: weights stored as they are (trained float weights deflate by a
    few percent at seconds of work per file), JSON deflated."""
    return zipfile.ZIP_STORED if name.endswith(".safetensors") else zipfile.ZIP_DEFLATED


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
                target = _free_name(runs_dir, safe_name(folder or zip_path.stem))
                os.rename(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as error:
        raise CheckpointError(
            f"{zip_path.name} is a damaged or unsupported zip file ({failure_reason(error)})"
        ) from None
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
        (staging / LOCK).unlink()


def _free_name(runs_dir: Path, stem: str) -> Path:
    for attempt in range(1000):
        path = runs_dir / (stem if attempt == 0 else f"{stem}-imported-{attempt}")
        if not path.exists():
            return path
    raise CheckpointError(f"could not find a free name for the imported run under {runs_dir}")
