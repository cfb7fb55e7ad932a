"""Read one scan from a path or raw bytes into a 2-D uint8 grey image, as a viewer shows it.

Accepted: JPEG, PNG (8- and 16-bit), TIFF (integer or float), BMP and DICOM (Part 10, or a bare
data set without its header). Whatever the file records about how its pixels are to be shown is
applied (EXIF orientation, TIFF photometric interpretation, palettes, DICOM rescale, VOI and
presentation; see ``raster`` and ``dicom``), and every change is listed in the scan's notes.
Every failure is a ``ScanError`` saying what is wrong and what to do. The size limits are checked
from the header before any pixel is decoded, so a decompression bomb costs nothing. Decoding goes
through Pillow (strict about truncation, where OpenCV silently returns a half-grey image),
tifffile and pydicom; they release the GIL, so a thread pool decodes a folder in parallel.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Optional, Union

import numpy as np

from pipeline.data.dicom import Window, is_bare_dicom, is_dicom, read_dicom
from pipeline.data.pixels import to_grey, to_uint8
from pipeline.data.raster import ACCEPTED_FORMATS, NotRaster, decode_raster
from pipeline.data.studies import SliceIdentity
from pipeline.errors import ScanError

ScanSource = Union[str, os.PathLike, bytes, bytearray, memoryview]

#: Largest file read at all (a 50-megapixel 16-bit TIFF is 100 MB; multi-frame DICOMs get big).
MAX_FILE_BYTES: Final[int] = 512 * 1024 * 1024


@dataclass(frozen=True)
class Scan:
    """A decoded scan: the grey image, the format it came in, and notes on what was done to it.

    ``identity`` says, for a DICOM slice, which patient, study and series it belongs to (as keyed
    digests, never the identifiers) and where it lies; None for other formats.
    """

    image: np.ndarray
    format: str
    notes: tuple[str, ...] = ()
    identity: Optional[SliceIdentity] = None
    #: DICOM Modality (``CT``, ``MR``, ...); empty where the file does not say (JPEG, PNG, TIFF, BMP).
    modality: str = ""
    #: Hounsfield units per grey level of ``image`` when it is a linear window over CT numbers, else None.
    hu_per_grey_level: Optional[float] = None


def read_scan(source: ScanSource, *, window: Window = "lung") -> np.ndarray:
    """The scan at ``source`` (path or bytes) as uint8 ``[H, W]``; ``window`` applies to DICOM only."""
    return open_scan(source, window=window).image


def open_scan(source: ScanSource, *, window: Window = "lung") -> Scan:
    """Like ``read_scan`` but also returns the format and notes (multi-frame, rescaled depth, ...)."""
    data, label = _read_bytes(source)
    try:
        return _decode(data, window)
    except ScanError as exc:
        raise ScanError(f"{label}: {exc}") from None


def _read_bytes(source: ScanSource) -> tuple[bytes, str]:
    """The raw bytes and a short name for messages (the file name, never the full path)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, label = bytes(source), "the uploaded file"
    else:
        path = Path(source)
        label = path.name or str(path)
        try:
            info = path.stat()
            size = info.st_size
            if path.is_dir():
                raise ScanError(f"{label} is a folder, not a scan; choose an image file")
            if not stat.S_ISREG(info.st_mode):  # a pipe would block forever, /dev/zero never end
                raise ScanError(f"{label} is not a regular file (a device, pipe or socket); choose an image file")
            if size > MAX_FILE_BYTES:
                raise ScanError(
                    f"{label} is {size / 2**20:.0f} MB, over the {MAX_FILE_BYTES // 2**20} MB limit for one scan; "
                    "export a single slice"
                )
            data = path.read_bytes()
        except FileNotFoundError:
            raise ScanError(f"{label}: no such file; check the path") from None
        except PermissionError:
            raise ScanError(f"{label}: permission denied; make the file readable") from None
        except OSError as exc:
            raise ScanError(f"{label}: cannot be read ({exc.strerror or exc}); check the disk and the path") from None
    if len(data) > MAX_FILE_BYTES:
        raise ScanError(f"{label} is over the {MAX_FILE_BYTES // 2**20} MB limit for one scan; export a single slice")
    if not data:
        raise ScanError(f"{label} is empty (0 bytes); the upload or copy did not finish, try again")
    return data, label


def _decode(data: bytes, window: Window) -> Scan:
    if is_dicom(data) or is_bare_dicom(data):
        dicom = read_dicom(data, window)
        return Scan(dicom.image, "DICOM", dicom.notes, dicom.identity, dicom.modality, dicom.hu_per_grey_level)
    notes: list[str] = []
    try:
        pixels, kind = decode_raster(data, notes)
    except NotRaster:
        raise ScanError(
            f"not a readable image. Accepted formats: {ACCEPTED_FORMATS}. If it is one of these, the file is "
            "damaged or truncated; export it again"
        ) from None
    image = to_uint8(to_grey(pixels), notes)
    return Scan(np.ascontiguousarray(image), kind, tuple(notes))
