"""Rules every reader applies to decoded pixels: size limits, colour to grey, any depth to 8-bit.

Kept apart from the readers so that JPEG/PNG/TIFF and DICOM obey exactly the same limits and
conversions (one place to audit for decompression bombs and odd bit depths).
"""

from __future__ import annotations

from typing import Final

import numpy as np

from pipeline.errors import ScanError

#: Largest image accepted, checked from the header before any pixel is decoded (a 50 MP
#: decompression bomb would take 50 MB as 8-bit and several times that while converting).
MAX_PIXELS: Final[int] = 50_000_000
#: Smallest side: below this nothing of a CT slice survives, and the model needs 32 px anyway.
MIN_SIDE: Final[int] = 16
#: Longest side over shortest: 20 allows any scan or strip; 20000x20 is not a slice.
MAX_ASPECT: Final[float] = 20.0
#: ITU-R BT.601 luma weights, as Pillow's "L" conversion uses.
LUMA: Final[np.ndarray] = np.array([0.299, 0.587, 0.114])


def check_dimensions(width: int, height: int) -> None:
    """Refuse absurd or too-large images from their header size, before decoding."""
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ScanError(
            f"the image is {width}x{height} pixels; a scan needs at least {MIN_SIDE} pixels on each side. "
            "Check that this is the scan and not an icon or thumbnail"
        )
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise ScanError(
            f"the image is {width}x{height} pixels, more than {MAX_ASPECT:g} times longer than wide; "
            "that is not a CT slice. Export a single axial slice"
        )
    if width * height > MAX_PIXELS:
        raise ScanError(
            f"the image is {width}x{height} = {width * height / 1e6:.0f} megapixels, over the limit of "
            f"{MAX_PIXELS / 1e6:.0f} megapixels (a protection against decompression bombs). "
            "Downscale it or export the slice at its native CT resolution (usually 512x512)"
        )


def to_grey(pixels: np.ndarray) -> np.ndarray:
    """Collapse ``[H, W, C]`` (grey+alpha, RGB, RGBA) to ``[H, W]`` in the input's value scale.

    Transparent pixels hold no scan, so alpha composites onto black (air), not onto white.
    A uint8 input stays uint8 (rounded); other depths come back as float64.
    """
    if pixels.ndim == 2:
        return pixels
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 2, 3, 4):
        raise ScanError(
            f"cannot turn pixel data shaped {pixels.shape} into one grey image; "
            "save the scan as a grey or RGB image"
        )
    channels = pixels.shape[-1]
    if channels == 1:
        return pixels[..., 0]
    values = pixels.astype(np.float64)
    grey = values[..., :3] @ LUMA if channels >= 3 else values[..., 0]
    if channels in (2, 4):
        full = float(np.iinfo(pixels.dtype).max) if np.issubdtype(pixels.dtype, np.integer) else 1.0
        grey = grey * np.clip(values[..., -1] / full, 0.0, 1.0)
    if pixels.dtype == np.uint8:
        return np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return grey


def to_uint8(pixels: np.ndarray, notes: list[str]) -> np.ndarray:
    """Map a 2-D array of any depth to uint8; appends a note whenever values were rescaled.

    - uint8 stays as is; booleans become 0/255.
    - Other integers (16-bit PNG or TIFF) are scaled by the image's own range, min -> 0 and
      max -> 255: exports use arbitrary ranges (HU + 1024, 12-bit, full 16-bit), so no fixed
      mapping is right for all of them and min-max keeps all the contrast there is.
    - Floats already inside ``[0, 1]`` are intensities (times 255, so an image saved from
      this pipeline reads back unchanged); other float ranges are min-max scaled like 16-bit.
      NaN or infinity is refused: there is no honest grey level for it.
    """
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.bool_:
        return pixels.astype(np.uint8) * 255
    if not (np.issubdtype(pixels.dtype, np.integer) or np.issubdtype(pixels.dtype, np.floating)):
        raise ScanError(f"pixel values of type {pixels.dtype} are not grey levels; save the scan as 8- or 16-bit")
    values = pixels.astype(np.float64)
    if not np.isfinite(values).all():
        raise ScanError("the image contains NaN or infinite values; export it again as 8- or 16-bit grey")
    low, high = float(values.min()), float(values.max())
    if np.issubdtype(pixels.dtype, np.floating) and low >= 0.0 and high <= 1.0:
        return np.rint(values * 255.0).astype(np.uint8)
    if high == low:
        notes.append(f"the image has one value only ({low:g}); it is shown black")
        return np.zeros(values.shape, dtype=np.uint8)
    notes.append(f"{pixels.dtype} values scaled to 8-bit by the image's own range ({low:g} -> 0, {high:g} -> 255)")
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)
