"""DICOM slices: pixel data to Hounsfield units, a CT window to 8-bit, and back again for export.

Privacy: only image-describing attributes (modality, geometry, rescale, window, photometric
interpretation) are ever read from a file. Nothing here returns, logs or puts into an error
message a patient-identifying tag, and the exported attacked image is a new object that copies
no attribute of the original except its modality.

Windows: the lung (1500/-600) and mediastinal (350/40) presets are in Hounsfield units and
apply to CT; other modalities fall back to the file's own window, and a file without one shows
its full value range, each with a note. Colour DICOMs become grey with no window.

Multi-frame files: the middle frame is taken and a note says so (a multi-frame CT is a volume,
and its middle slice is the most likely to cut through both lungs); only that frame is decoded.
Compressed transfer syntaxes with no installed decoder are refused with what to install.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Final, Union

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from pipeline.constants import LUNG_WINDOW, MEDIASTINAL_WINDOW
from pipeline.data.pixels import check_dimensions, failure_reason, to_grey, to_uint8
from pipeline.errors import ScanError, UserInputError

#: A window: a name, or ``(width, level)`` in the file's units (Hounsfield units for CT).
Window = Union[str, tuple[float, float]]

NAMED_WINDOWS: Final[dict[str, tuple[float, float]]] = {"lung": LUNG_WINDOW, "mediastinal": MEDIASTINAL_WINDOW}
#: "file" means the window stored in the DICOM itself (WindowWidth / WindowCenter).
WINDOW_NAMES: Final[tuple[str, ...]] = (*NAMED_WINDOWS, "file")
#: Maps 0..255 onto itself: used for colour DICOMs, whose grey levels are not Hounsfield units.
IDENTITY_WINDOW: Final[tuple[float, float]] = (255.0, 127.5)
PIXEL_DATA_TAGS: Final[tuple[str, ...]] = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
ATTACKED_DESCRIPTION: Final[str] = "ADVERSARIALLY PERTURBED - research artefact, not for diagnosis"


def is_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file: 128-byte preamble, then the magic ``DICM``."""
    return data[128:132] == b"DICM"


def check_window(window: Window) -> Window:
    """Validate a window choice; raise a message listing the choices otherwise."""
    if isinstance(window, str):
        if window not in WINDOW_NAMES:
            raise UserInputError(
                f"unknown window {window!r}; choose one of {', '.join(WINDOW_NAMES)} or give (width, level)"
            )
        return window
    try:
        width, level = (float(value) for value in window)
    except (TypeError, ValueError):
        raise UserInputError(f"a window is a name or (width, level), got {window!r}") from None
    if not (math.isfinite(width) and math.isfinite(level) and width > 0):
        raise UserInputError(f"a window needs a positive finite width and a finite level, got {window!r}")
    return (width, level)


def apply_window(values: np.ndarray, width: float, level: float) -> np.ndarray:
    """Linear window as viewers show it: ``level - width/2`` -> 0, ``level + width/2`` -> 255."""
    scaled = (np.asarray(values, dtype=np.float64) - (level - width / 2.0)) * (255.0 / width)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class _Slice:
    """One decoded frame in modality units, with the window that turns it into 8-bit."""

    values: np.ndarray
    width: float
    level: float
    invert: bool
    modality: str
    notes: tuple[str, ...]

    def to_uint8(self) -> np.ndarray:
        image = apply_window(self.values, self.width, self.level)
        return 255 - image if self.invert else image


def read_dicom(data: bytes, window: Window = "lung") -> tuple[np.ndarray, list[str]]:
    """Decode one DICOM Part 10 slice to uint8 ``[H, W]`` through ``window``; returns it and notes."""
    decoded = _decode(_parse(data), check_window(window))
    return decoded.to_uint8(), list(decoded.notes)


def attacked_dicom(original: bytes, image_uint8: np.ndarray, window: Window = "lung") -> bytes:
    """A new, de-identified DICOM holding ``image_uint8`` mapped back through ``window``.

    The pixels are stored as 0..255 with ``RescaleSlope = width/255`` and ``RescaleIntercept =
    level - width/2``: exactly the inverse of the window (and the source's MONOCHROME1/2 sense),
    so a viewer shows Hounsfield units and reading the file with the same window gives back
    ``image_uint8`` unchanged. The object
    is a Secondary Capture with fresh UIDs, empty patient attributes and a SeriesDescription
    that says it is adversarially perturbed; nothing but the modality is copied.
    """
    if not isinstance(image_uint8, np.ndarray) or image_uint8.ndim != 2 or image_uint8.dtype != np.uint8:
        raise UserInputError("attacked_dicom needs the attacked image as a 2-D uint8 array")
    source = _decode(_parse(original), check_window(window))
    width, level = source.width, source.level
    stored = (255 - image_uint8) if source.invert else image_uint8

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = FileDataset(None, Dataset(), file_meta=meta, preamble=b"\0" * 128)
    out.SOPClassUID = SecondaryCaptureImageStorage
    out.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    out.StudyInstanceUID = generate_uid()
    out.SeriesInstanceUID = generate_uid()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        setattr(out, keyword, "")
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = "New object; no attribute copied from the source except Modality"
    out.Modality = source.modality or "OT"
    out.ConversionType = "WSD"
    out.ImageType = ["DERIVED", "SECONDARY"]
    out.SeriesDescription = ATTACKED_DESCRIPTION
    out.ImageComments = (
        f"Adversarially perturbed 8-bit image mapped back through window width {width:g}, level {level:g}"
    )
    out.SeriesNumber = 1
    out.InstanceNumber = 1
    out.SamplesPerPixel = 1
    out.PhotometricInterpretation = "MONOCHROME1" if source.invert else "MONOCHROME2"
    out.Rows, out.Columns = image_uint8.shape
    out.BitsAllocated, out.BitsStored, out.HighBit, out.PixelRepresentation = 16, 16, 15, 0
    out.RescaleSlope = f"{width / 255.0:.10g}"
    out.RescaleIntercept = f"{level - width / 2.0:.10g}"
    out.RescaleType = "HU" if source.modality == "CT" else "US"
    out.WindowWidth = f"{width:.10g}"
    out.WindowCenter = f"{level:.10g}"
    out.BurnedInAnnotation = "NO"
    out.PixelData = stored.astype("<u2").tobytes()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, out, enforce_file_format=True)
    return buffer.getvalue()


def _parse(data: bytes) -> Dataset:
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # a hostile header can make the parser fail in many ways
        raise ScanError(
            f"the DICOM file could not be parsed ({type(exc).__name__}); it is damaged or truncated. "
            "Export the slice again from the viewer or PACS"
        ) from None


def _decode(ds: Dataset, window: Window) -> _Slice:
    if not any(tag in ds for tag in PIXEL_DATA_TAGS):
        kind = str(getattr(ds.get("SOPClassUID"), "name", "") or "not stated")
        if "Image Storage" in kind:
            raise ScanError(
                f"the DICOM file is truncated: a {kind} object must hold pixel data and this one ends "
                "before it. Copy or export the file again"
            )
        raise ScanError(
            f"the DICOM file holds no image (no Pixel Data; object type: {kind}). "
            "Choose an image slice (for example CT Image Storage) from the series instead"
        )
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    check_dimensions(columns, rows)
    notes: list[str] = []
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        index = (frames - 1) // 2
        ds.pixel_array_options(index=index)
        notes.append(
            f"multi-frame DICOM with {frames} frames: frame {index + 1} (the middle one) is shown; "
            "export single slices to choose another"
        )
    pixels = _pixel_array(ds)
    modality = str(ds.get("Modality") or "")
    photometric = str(ds.get("PhotometricInterpretation") or "MONOCHROME2")
    if not photometric.startswith("MONOCHROME"):
        colour = apply_color_lut(pixels, ds) if photometric == "PALETTE COLOR" else pixels
        notes.append(f"{photometric} DICOM converted to grey; CT windows do not apply to colour images")
        grey = to_uint8(to_grey(colour), notes)
        return _Slice(grey, *IDENTITY_WINDOW, invert=False, modality=modality, notes=tuple(notes))
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    if not np.isfinite(values).all():
        raise ScanError("the DICOM pixel data contains NaN or infinite values; export the slice again")
    width, level = _resolve_window(ds, values, window, modality, notes)
    return _Slice(values, width, level, photometric == "MONOCHROME1", modality, tuple(notes))


def _pixel_array(ds: Dataset) -> np.ndarray:
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is not None and syntax.is_compressed:
        try:
            available = get_decoder(syntax).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise ScanError(
                f"the DICOM pixel data is compressed as {syntax.name}, and no decoder for it is installed. "
                "Install one (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg) or convert the "
                "file to uncompressed DICOM (e.g. gdcmconv --raw, dcmdjpeg) and load it again"
            )
    try:
        return ds.pixel_array
    except Exception as exc:  # decoders raise anything from ValueError to RuntimeError on bad data
        raise ScanError(
            f"the DICOM pixel data could not be decoded ({failure_reason(exc)}). The file may be truncated or use an "
            "encoding no installed decoder handles; export the slice again as uncompressed DICOM"
        ) from None


def _resolve_window(
    ds: Dataset, values: np.ndarray, window: Window, modality: str, notes: list[str]
) -> tuple[float, float]:
    """(width, level) for ``window``; Hounsfield presets apply to CT only, else the file's own."""
    if isinstance(window, tuple):
        return window
    if window in NAMED_WINDOWS:
        if modality == "CT":
            return NAMED_WINDOWS[window]
        notes.append(
            f"modality is {modality or 'not stated'}, not CT: the {window} window is in Hounsfield units "
            "and does not apply; the file's own window is used"
        )
    stored = _file_window(ds)
    if stored is not None:
        return stored
    low, high = float(values.min()), float(values.max())
    notes.append(f"the file stores no usable window; its full value range {low:g}..{high:g} is shown")
    return (max(high - low, 1e-6), (high + low) / 2.0)


def _file_window(ds: Dataset) -> tuple[float, float] | None:
    """The first WindowWidth/WindowCenter pair stored in the file, if it is usable."""
    width, centre = ds.get("WindowWidth"), ds.get("WindowCenter")
    if width is None or centre is None:
        return None
    first = [value[0] if isinstance(value, pydicom.multival.MultiValue) else value for value in (width, centre)]
    try:
        width_value, centre_value = float(first[0]), float(first[1])
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(width_value) and math.isfinite(centre_value) and width_value > 0):
        return None
    return (width_value, centre_value)
