"""JPEG, PNG, BMP and TIFF pixels as a viewer shows them, not as they happen to be stored.

A raster file can record how its stored samples are to be displayed, and every such record is
applied here before the image is handed on:

- **Orientation** (EXIF tag 274, in JPEG APP1, PNG eXIf and TIFF IFDs): the stored picture is
  turned or mirrored. JPEG/PNG go through Pillow's ``ImageOps.exif_transpose``; TIFF, decoded
  by tifffile, gets the same eight transforms from :data:`ORIENTATIONS` (tifffile's own
  ``reorient`` swaps orientations 7 and 8 relative to the EXIF/TIFF 6.0 definition that
  Pillow and viewers follow, so it is not used).
- **Photometric interpretation** (TIFF tag 262): MinIsWhite samples are inverted over their
  bit depth (``2**bits - 1 - v``), so a bright structure stays bright; palette TIFFs are looked
  up in their colour map; YCbCr keeps its luma (Y) channel; CMYK becomes RGB through Pillow.
  Interpretations with no grey meaning (masks, CIE L*a*b*, LogLuv, raw sensor data) are refused.
- **Palettes and transparency**: palette and 1-bit images become RGB(A) or grey through Pillow;
  a transparent colour (PNG tRNS) and alpha composite onto black (air); associated
  (premultiplied) TIFF alpha is already composited and is dropped.
- **Bit depth below 8** (1-, 2-, 4-bit TIFF samples) is stretched to 0..255.
- **16-bit samples** keep their depth in every channel layout (grey, grey+alpha, RGB, RGBA), PNG
  and TIFF alike: Pillow reduces 16-bit colour and alpha PNGs to 8 bits, so those samples come
  from libpng through OpenCV, and TIFF layouts Pillow does not open go to tifffile.

Sources: TIFF 6.0 specification (Adobe, 1992), sections 3, 5 and 18,
https://www.itu.int/itudoc/itu-t/com16/tiff-fx/docs/tiff6.pdf ; EXIF 2.32 (CIPA DC-008-2019)
tag 274, https://www.cipa.jp/std/documents/e/DC-008-Translation-2019-E.pdf .
"""

from __future__ import annotations

import io
import warnings
from typing import Callable, Final

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.data.pixels import check_dimensions
from pipeline.errors import ScanError, failure_reason

ACCEPTED_FORMATS: Final[str] = "JPEG, PNG (8- or 16-bit), TIFF, BMP or DICOM"
#: Pillow format names we decode; MPO is a JPEG with extra pictures (some cameras write it).
PIL_FORMATS: Final[frozenset[str]] = frozenset({"JPEG", "MPO", "PNG", "BMP", "TIFF"})
#: EXIF/TIFF orientation -> the transform that shows the stored ``[H, W, ...]`` array upright.
ORIENTATIONS: Final[dict[int, Callable[[np.ndarray], np.ndarray]]] = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # turned 180 degrees
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: np.swapaxes(a, 0, 1),  # transposed
    6: lambda a: np.swapaxes(a, 0, 1)[:, ::-1],  # turn 90 degrees clockwise to view
    7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],  # transverse
    8: lambda a: np.swapaxes(a, 0, 1)[::-1],  # turn 90 degrees counter-clockwise to view
}
ORIENTATION_TAG: Final[int] = 274
#: TIFF photometric interpretations that hold no grey image, by tag value.
NOT_GREY: Final[dict[int, str]] = {
    4: "a transparency mask", 8: "CIE L*a*b* colour", 9: "ICC L*a*b* colour", 10: "ITU L*a*b* colour",
    32803: "raw colour-filter-array sensor data", 32844: "LogL", 32845: "LogLuv colour",
    34892: "linear raw sensor data", 51177: "a depth map", 52527: "a semantic mask",
}


#: The first four bytes of a TIFF (little or big endian) and of a BigTIFF.
TIFF_MAGIC: Final[tuple[bytes, ...]] = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
#: PNG colour types (IHDR): grey, RGB, grey+alpha.
PNG_GREY, PNG_RGB, PNG_GREY_ALPHA = 0, 2, 4


class NotRaster(Exception):
    """Pillow does not recognise the bytes as any image format (they may still be DICOM)."""


def decode_raster(data: bytes, notes: list[str]) -> tuple[np.ndarray, str]:
    """Decoded pixels ``[H, W]`` or ``[H, W, C]`` (any dtype) as displayed, and the format name.

    Raises ``NotRaster`` when Pillow recognises no image format, ``ScanError`` for a format we
    do not accept, an absurd size (checked from the header, before decoding) or damaged data.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ScanError(
            "the image header declares an enormous size (a decompression bomb?); it was not decoded"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        if data[:4] in TIFF_MAGIC:  # layouts Pillow does not open (16-bit grey+alpha, ...): tifffile reads them
            return tiff_pixels(data, notes), "TIFF"
        raise NotRaster from None
    if picture.format not in PIL_FORMATS:
        raise ScanError(f"{picture.format} images are not accepted; save the scan as {ACCEPTED_FORMATS}")
    check_dimensions(*picture.size)
    if picture.format == "TIFF":
        return tiff_pixels(data, notes), "TIFF"
    if picture.format == "PNG" and data[24:25] == b"\x10":  # IHDR bit depth 16
        return png16_pixels(picture, data, notes), "PNG"
    return pil_pixels(picture, notes), "JPEG" if picture.format == "MPO" else picture.format


def png16_pixels(picture: Image.Image, data: bytes, notes: list[str]) -> np.ndarray:
    """A 16-bit PNG's samples at full depth: uint16 ``[H, W]`` grey or ``[H, W, C]`` grey+alpha, RGB, RGBA.

    Pillow decodes 16-bit grey at full depth but 16-bit RGB, RGBA and grey+alpha to 8 bits, so
    the samples come from OpenCV (libpng) after Pillow has checked the file whole (Pillow refuses
    a truncated or corrupt stream where libpng may return a partly grey image). A PNG tRNS colour
    becomes an alpha channel; EXIF orientation is applied as for other PNGs.
    """
    try:
        picture.load()  # strict: a truncated stream or a bad CRC raises here
        pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except Exception as exc:  # Pillow's decoders raise OSError, SyntaxError, ValueError... on bad data
        raise ScanError(f"the PNG file is damaged or truncated ({failure_reason(exc)}); export it again") from None
    if pixels is None or pixels.dtype != np.uint16:
        raise ScanError("the 16-bit PNG could not be decoded at its full depth; export it again as 16-bit grey")
    colour_type = data[25]
    if pixels.ndim == 3:  # OpenCV orders colour as BGR(A); grey+alpha comes back as BGRA with grey thrice
        pixels = pixels[..., [2, 1, 0, 3]] if pixels.shape[-1] == 4 else pixels[..., ::-1]
        if colour_type == PNG_GREY_ALPHA:
            pixels = pixels[..., [0, 3]]
    transparent = picture.info.get("transparency")
    if transparent is not None and colour_type in (PNG_GREY, PNG_RGB) and pixels.shape[-1] not in (2, 4):
        key = np.asarray(transparent, dtype=np.int64).reshape(-1)
        match = pixels == key[0] if pixels.ndim == 2 else (pixels == key[: pixels.shape[-1]]).all(axis=-1)
        alpha = np.where(match, 0, np.iinfo(np.uint16).max).astype(np.uint16)
        pixels = np.concatenate([pixels.reshape(*pixels.shape[:2], -1), alpha[..., None]], axis=-1)
    orientation = _exif_orientation(picture)
    if orientation not in (None, 1):
        pixels = np.ascontiguousarray(ORIENTATIONS[orientation](pixels))
        notes.append(_orientation_note(orientation))
    return np.ascontiguousarray(pixels)


def pil_pixels(picture: Image.Image, notes: list[str]) -> np.ndarray:
    """Decode with Pillow, upright; palette, 1-bit and CMYK/YCbCr become RGB(A) or L first."""
    try:
        picture.load()
        orientation = _exif_orientation(picture)
        if orientation not in (None, 1):
            picture = ImageOps.exif_transpose(picture)
            notes.append(_orientation_note(orientation))
        if picture.mode == "P" or (picture.mode in ("L", "RGB") and "transparency" in picture.info):
            # a palette, or a grey/RGB image with one transparent value (PNG tRNS): alpha onto black
            picture = picture.convert("RGBA" if "transparency" in picture.info else "RGB")
        elif picture.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
            picture = picture.convert("L" if picture.mode == "1" else "RGB")
        elif picture.mode in ("PA", "La", "RGBa"):
            picture = picture.convert("RGBA")
        return np.asarray(picture)
    except ScanError:
        raise
    except Exception as exc:  # Pillow decoders raise OSError, SyntaxError, ValueError... on bad data
        raise ScanError(
            f"the {picture.format} file is damaged or truncated ({failure_reason(exc)}); export it again"
        ) from None


def _exif_orientation(picture: Image.Image) -> int | None:
    """The EXIF orientation Pillow reads (JPEG APP1, PNG eXIf); None when absent or unreadable."""
    try:
        value = picture.getexif().get(ORIENTATION_TAG)
    except Exception:  # a damaged EXIF block: viewers ignore it, and so do we
        return None
    return int(value) if isinstance(value, int) and value in ORIENTATIONS else None


def _orientation_note(orientation: int) -> str:
    return (f"EXIF orientation {orientation}: the stored picture is turned or mirrored for display, "
            "as viewers show it")


def tiff_pixels(data: bytes, notes: list[str]) -> np.ndarray:
    """Decode TIFF with tifffile (float and 16-bit samples Pillow cannot); a stack gives its middle page."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            pages = tiff.series[0].pages
            middle = (len(pages) - 1) // 2
            page = pages[middle]
            keyframe = page.keyframe
            check_dimensions(int(keyframe.imagewidth), int(keyframe.imagelength))
            if len(pages) > 1:
                notes.append(f"TIFF stack of {len(pages)} pages: page {middle + 1} (the middle one) is shown")
            pixels = page.asarray()
            photometric = int(keyframe.photometric)
            bits = int(keyframe.bitspersample)
            compressed = int(keyframe.compression) not in (1,)  # 1: none
            colormap = keyframe.colormap if photometric == 3 else None
            associated = any(int(sample) == 1 for sample in keyframe.extrasamples)
            orientation = keyframe.tags.valueof(ORIENTATION_TAG, 1)
    except ScanError:
        raise
    except Exception as exc:  # tifffile raises many kinds on malformed files
        raise ScanError(f"the TIFF file is damaged or uses an unsupported layout ({failure_reason(exc)})") from None
    if pixels.ndim == 3 and pixels.shape[0] in (3, 4) and pixels.shape[-1] not in (1, 2, 3, 4):
        pixels = np.moveaxis(pixels, 0, -1)  # planar RGB(A)
    pixels = _photometric(pixels, photometric, bits, colormap, compressed, notes)
    if associated and pixels.ndim == 3 and pixels.shape[-1] in (2, 4):
        pixels = pixels[..., :-1]  # premultiplied alpha: already composited onto black
    if orientation in ORIENTATIONS and orientation != 1:
        pixels = np.ascontiguousarray(ORIENTATIONS[orientation](pixels))
        notes.append(_orientation_note(orientation).replace("EXIF", "TIFF"))
    return pixels


def _photometric(pixels: np.ndarray, photometric: int, bits: int, colormap: np.ndarray | None,
                 compressed: bool, notes: list[str]) -> np.ndarray:
    """Stored TIFF samples -> grey or RGB(A) as displayed, following the PhotometricInterpretation tag."""
    if photometric in NOT_GREY:
        raise ScanError(
            f"the TIFF holds {NOT_GREY[photometric]} (photometric interpretation {photometric}), not a grey "
            "or colour picture; export the scan as grey or RGB"
        )
    if photometric == 0:  # MinIsWhite: 0 is white
        pixels = _invert(pixels, bits)
        notes.append("TIFF stored as MinIsWhite (0 = white): inverted so that it shows as a viewer shows it")
    elif photometric == 3 and colormap is not None:
        if not np.issubdtype(pixels.dtype, np.integer) or pixels.max(initial=0) >= colormap.shape[1]:
            raise ScanError("the palette TIFF has indices beyond its colour map; export it again")
        scale = 257.0 if colormap.max(initial=0) > 255 else 1.0  # 16-bit colour maps, as the standard says
        table = np.rint(np.asarray(colormap, dtype=np.float64) / scale).clip(0, 255).astype(np.uint8)
        pixels = np.moveaxis(np.take(table, pixels, axis=1), 0, -1)
    elif photometric == 5 and pixels.ndim == 3 and pixels.shape[-1] >= 4:  # SEPARATED: CMYK inks
        if pixels.dtype != np.uint8:
            raise ScanError("only 8-bit CMYK TIFF is read; export the scan as grey or RGB")
        pixels = np.asarray(Image.fromarray(np.ascontiguousarray(pixels[..., :4]), "CMYK").convert("RGB"))
    elif photometric == 6 and not compressed and pixels.ndim == 3:  # YCbCr: Y is the luma, i.e. the grey
        pixels = pixels[..., 0]
    if np.issubdtype(pixels.dtype, np.integer) and bits < 8 and pixels.dtype != np.bool_:
        pixels = (pixels.astype(np.uint16) * 255 // (2**bits - 1)).astype(np.uint8)
    return pixels


def _invert(pixels: np.ndarray, bits: int) -> np.ndarray:
    """MinIsWhite samples as MinIsBlack: reflected over the bit depth (floats in [0, 1] over 1)."""
    if pixels.dtype == np.bool_:
        return ~pixels
    if np.issubdtype(pixels.dtype, np.unsignedinteger):
        full = min(2**bits - 1, int(np.iinfo(pixels.dtype).max))
        return (full - pixels.astype(np.int64)).clip(0, np.iinfo(pixels.dtype).max).astype(pixels.dtype)
    values = pixels.astype(np.float64)
    if np.issubdtype(pixels.dtype, np.floating) and values.min(initial=0) >= 0 and values.max(initial=0) <= 1:
        return 1.0 - values
    return -values  # signed or float ranges: a reflection, which the 8-bit scaling then maps to 0..255
