"""Atomic, size-limited file I/O: a kill at any instant leaves the old file or the new one.

Every file is written to a temporary file in the same directory, flushed to disk and renamed
over the old one. Reading assumes nothing: sizes are capped per kind and JSON is parsed by
:func:`pipeline.json_object.parse_json_object`, so damage is a :class:`CheckpointError`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Final, Optional

from pipeline.errors import CheckpointError
from pipeline.json_object import parse_json_object

#: Per-file size limits for reading and importing; a ResNet101 with Adam state stays far below.
MAX_BYTES: Final[dict[str, int]] = {".json": 4 << 20, ".jsonl": 64 << 20, ".safetensors": 2 << 30}


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Have ``write`` fill a temporary file beside ``path``, flush it to disk and rename it over ``path``,
    so that a crash leaves the old file or the new one, never a mix.

    ``write`` gets the temporary file's path (it may reopen or replace it). A failure (disk full, no
    permission) raises :class:`CheckpointError` and keeps the old file.
    """
    path = Path(path)
    temporary = None
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(handle)
        write(Path(temporary))
        descriptor = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
        temporary = None
        _fsync_directory(path.parent)
    except OSError as error:
        raise CheckpointError(save_failure(path, error)) from error
    finally:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with :func:`atomic_write`."""
    atomic_write(path, lambda temporary: temporary.write_bytes(data))


def atomic_write_json(path: Path, value: Any) -> None:
    """Write a JSON value atomically; NaN and infinities are refused (they are not JSON)."""
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


def save_failure(path: Path, error: OSError) -> str:
    """The message for a failed write: what failed, that the old file is kept, and what to do."""
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


def read_limited(path: Path) -> bytes:
    """The bytes of ``path``, refused (CheckpointError) above the size limit of its kind."""
    limit = MAX_BYTES.get(path.suffix, MAX_BYTES[".json"])
    size = path.stat().st_size
    if size > limit:
        raise CheckpointError(f"{path.name} is {size} bytes, more than the {limit} a run file may have")
    return path.read_bytes()


def read_json(path: Path, *, default: Optional[dict[str, Any]] = None) -> Optional[dict[str, Any]]:
    """Read a JSON object written by this store; missing gives ``default``, damage a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        return default
    return parse_json_object(read_limited(path), f"{path.name} in {path.parent}")


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file's bytes as 64 hex digits, read in 1 MiB blocks. Raises OSError."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
