"""Read one scan from a path or raw bytes into a 2-D uint8 grey image.

Accepted: JPEG, PNG (8- and 16-bit), TIFF (integer or float), BMP and DICOM. Every failure is a
``ScanError`` saying what is wrong and what to do. The size limits are checked from the header
before any pixel is decoded, so a decompression bomb costs nothing. Decoding goes through
Pillow (strict about truncation, where OpenCV silently returns a half-grey image) and tifffile
for TIFF; both release the GIL, so a thread pool decodes a folder in parallel.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.data.dicom import Window, is_dicom, read_dicom
from pipeline.data.pixels import check_dimensions, failure_reason, to_grey, to_uint8
from pipeline.errors import ScanError

ScanSource = Union[str, os.PathLike, bytes, bytearray, memoryview]

ACCEPTED_FORMATS: Final[str] = "JPEG, PNG (8- or 16-bit), TIFF, BMP or DICOM"
#: Pillow format names we decode; MPO is a JPEG with extra pictures (some cameras write it).
PIL_FORMATS: Final[frozenset[str]] = frozenset({"JPEG", "MPO", "PNG", "BMP", "TIFF"})
#: Largest file read at all (a 50-megapixel 16-bit TIFF is 100 MB; multi-frame DICOMs get big).
MAX_FILE_BYTES: Final[int] = 512 * 1024 * 1024


@dataclass(frozen=True)
class Scan:
    """A decoded scan: the grey image, the format it came in, and notes on what was done to it."""

    image: np.ndarray
    format: str
    notes: tuple[str, ...] = ()


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
    if is_dicom(data):
        image, notes = read_dicom(data, window)
        return Scan(image, "DICOM", tuple(notes))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ScanError(
            "the image header declares an enormous size (a decompression bomb?); it was not decoded"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ScanError(
            f"not a readable image. Accepted formats: {ACCEPTED_FORMATS} (DICOM as a standard Part 10 file "
            "with its 'DICM' header). If it is one of these, the file is damaged or truncated; export it again"
        ) from None
    if picture.format not in PIL_FORMATS:
        raise ScanError(f"{picture.format} images are not accepted; save the scan as {ACCEPTED_FORMATS}")
    check_dimensions(*picture.size)
    notes: list[str] = []
    pixels = _tiff_pixels(data, notes) if picture.format == "TIFF" else _pil_pixels(picture)
    image = to_uint8(to_grey(pixels), notes)
    return Scan(np.ascontiguousarray(image), "JPEG" if picture.format == "MPO" else picture.format, tuple(notes))


def _pil_pixels(picture: Image.Image) -> np.ndarray:
    """Decode with Pillow; palette, 1-bit and CMYK/YCbCr become RGB(A) or L first."""
    try:
        picture.load()
        if picture.mode == "P":
            picture = picture.convert("RGBA" if "transparency" in picture.info else "RGB")
        elif picture.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
            picture = picture.convert("L" if picture.mode == "1" else "RGB")
        elif picture.mode in ("PA", "La", "RGBa"):
            picture = picture.convert("RGBA")
        return np.asarray(picture)
    except Exception as exc:  # Pillow decoders raise OSError, SyntaxError, ValueError... on bad data
        raise ScanError(
            f"the {picture.format} file is damaged or truncated ({failure_reason(exc)}); export it again"
        ) from None


def _tiff_pixels(data: bytes, notes: list[str]) -> np.ndarray:
    """Decode TIFF with tifffile (float and 16-bit samples Pillow cannot); a stack gives its middle page."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            pages = tiff.series[0].pages
            page = pages[(len(pages) - 1) // 2]
            check_dimensions(int(page.imagewidth), int(page.imagelength))
            if len(pages) > 1:
                notes.append(f"TIFF stack of {len(pages)} pages: page {(len(pages) - 1) // 2 + 1} (the middle one) is shown")
            pixels = page.asarray()
    except ScanError:
        raise
    except Exception as exc:  # tifffile raises many kinds on malformed files
        raise ScanError(f"the TIFF file is damaged or uses an unsupported layout ({failure_reason(exc)})") from None
    if pixels.ndim == 3 and pixels.shape[0] in (3, 4) and pixels.shape[-1] not in (1, 2, 3, 4):
        pixels = np.moveaxis(pixels, 0, -1)  # planar RGB(A)
    return pixels
