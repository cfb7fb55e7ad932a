"""A scan's bit depth survives whatever its channel layout (issue 23, point 3a).

The same 12-bit CT slice (synthetic phantom) is written to disk as PNG and TIFF, 8 and 16 bit, in
each layout a viewer or converter produces (grey, grey+alpha, RGB, RGBA), and read back through
the product's reader: the decoded samples equal what was written, and the shown image is the same
for every layout of one depth. PNGs are written by a small PNG encoder here (zlib and the chunk
layout of the PNG specification, RFC 2083), so the files do not come from the decoder under test.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile

from pipeline.data import open_scan
from pipeline.data.raster import decode_raster
from pipeline.errors import ScanError
from tests.dicom_codecs import ct_hounsfield

LAYOUTS = {"grey": 1, "grey+alpha": 2, "RGB": 3, "RGBA": 4}
#: PNG colour type per channel count (PNG specification, IHDR).
PNG_COLOUR = {1: 0, 2: 4, 3: 2, 4: 6}


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def write_png(path: Path, pixels: np.ndarray, *, transparent: int | None = None) -> None:
    """``pixels`` (uint8 or uint16, ``[H, W]`` or ``[H, W, C]``) as a PNG: filter 0 rows, big-endian samples."""
    array = pixels if pixels.ndim == 3 else pixels[..., None]
    height, width, channels = array.shape
    depth = 16 if array.dtype == np.uint16 else 8
    rows = array.astype(">u2" if depth == 16 else "u1").reshape(height, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rows], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", width, height, depth, PNG_COLOUR[channels], 0, 0, 0)
    extra = _chunk(b"tRNS", struct.pack(">H", transparent)) if transparent is not None else b""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + extra
                     + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b""))


def write_tiff(path: Path, pixels: np.ndarray) -> None:
    channels = 1 if pixels.ndim == 2 else pixels.shape[-1]
    tifffile.imwrite(path, pixels, photometric="minisblack" if channels <= 2 else "rgb",
                     extrasamples=[2] if channels in (2, 4) else None)  # 2: unassociated alpha


def layout(grey: np.ndarray, channels: int, alpha: np.ndarray | None = None) -> np.ndarray:
    """``grey`` as ``channels`` channels: grey repeated into R, G, B; alpha opaque unless given."""
    full = np.iinfo(grey.dtype).max
    alpha = np.full_like(grey, full) if alpha is None else alpha
    planes = {1: [grey], 2: [grey, alpha], 3: [grey] * 3, 4: [grey] * 3 + [alpha]}[channels]
    return planes[0] if channels == 1 else np.stack(planes, axis=-1)


@pytest.fixture(scope="module")
def ct12() -> np.ndarray:
    """A 12-bit CT slice as stored values (HU + 1024), uint16 0..4095."""
    return (ct_hounsfield().astype(np.int32) + 1024).clip(0, 4095).astype(np.uint16)


def _expected(grey: np.ndarray) -> np.ndarray:
    """What the reader shows: 8-bit as stored; deeper samples by the image's own range onto 0..255."""
    if grey.dtype == np.uint8:
        return grey
    values = grey.astype(np.float64)
    return np.rint((values - values.min()) * 255.0 / (values.max() - values.min())).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["png", "tiff"])
@pytest.mark.parametrize("depth", [8, 16])
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_depth_is_kept_in_every_layout(fmt: str, depth: int, name: str, ct12: np.ndarray, tmp_path: Path) -> None:
    grey = ct12 if depth == 16 else (ct12 >> 4).astype(np.uint8)
    pixels = layout(grey, LAYOUTS[name])
    path = tmp_path / f"ct-{depth}-{name}.{fmt}"
    (write_png if fmt == "png" else write_tiff)(path, pixels)

    decoded, kind = decode_raster(path.read_bytes(), [])
    assert kind == fmt.upper() and decoded.dtype == grey.dtype, f"{decoded.dtype}: the depth was lost"
    assert decoded.shape == pixels.shape
    assert np.array_equal(decoded, pixels), "the samples differ from those written"
    scan = open_scan(path)
    assert np.array_equal(scan.image, _expected(grey)), f"{fmt} {depth}-bit {name} shows {scan.image.max()} levels"
    assert (depth == 16) == any("scaled to 8-bit by the image's own range" in note for note in scan.notes)


@pytest.mark.parametrize("fmt", ["png", "tiff"])
@pytest.mark.parametrize("channels", [2, 4])
def test_sixteen_bit_alpha_composites_onto_black_at_full_depth(fmt: str, channels: int, ct12: np.ndarray,
                                                               tmp_path: Path) -> None:
    alpha = np.full_like(ct12, 65535)
    alpha[:, : ct12.shape[1] // 4] = 0  # the left quarter is transparent: air
    path = tmp_path / f"alpha.{fmt}"
    (write_png if fmt == "png" else write_tiff)(path, layout(ct12, channels, alpha))
    image = open_scan(path).image
    composited = np.where(alpha > 0, ct12, 0).astype(np.uint16)
    assert np.array_equal(image, _expected(composited))


def test_sixteen_bit_grey_png_with_a_transparent_value(ct12: np.ndarray, tmp_path: Path) -> None:
    """A tRNS chunk marks one 16-bit grey value transparent: it becomes black, the rest keeps its depth."""
    key = int(ct12.max())
    write_png(tmp_path / "trns.png", ct12, transparent=key)
    image = open_scan(tmp_path / "trns.png").image
    assert np.array_equal(image, _expected(np.where(ct12 == key, 0, ct12).astype(np.uint16)))


def test_truncated_sixteen_bit_colour_png_is_refused(ct12: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "cut.png"
    write_png(path, layout(ct12, 3))
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ScanError, match="damaged or truncated"):
        open_scan(path)
