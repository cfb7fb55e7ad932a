"""DICOM slices as a viewer shows them: Hounsfield units, a window to 8-bit, and back again for export.

The display pipeline of PS3.3 C.11 (and PS3.4 N.2), applied to the frame that is shown:

1. **Modality LUT**: Rescale Slope/Intercept or a Modality LUT Sequence turn stored values
   into modality units (Hounsfield units for CT), through ``pydicom.pixels.apply_modality_lut``.
   Enhanced (multi-frame) objects keep these per frame in the functional groups (Pixel Value
   Transformation Sequence, PS3.3 C.7.6.16.2.9); :func:`frame_view` lifts the frame's
   functional groups (per-frame over shared over top level) into one flat data set, so the same
   pydicom helpers apply to classic and enhanced objects alike.
2. **VOI**: the window. The lung (1500/-600) and mediastinal (350/40) presets are in Hounsfield
   units and apply to CT. ``"file"``, and any modality other than CT, use the file's own VOI:
   a VOI LUT Sequence, or Window Center/Width with its VOI LUT Function (LINEAR, LINEAR_EXACT or
   SIGMOID; Frame VOI LUT Sequence in enhanced objects), through ``pydicom.pixels.apply_voi_lut``.
   A file without one shows its full value range, with a note.
3. **Presentation**: MONOCHROME1, or Presentation LUT Shape INVERSE, shows low values white.
4. **Pixel aspect**: non-square pixels (Pixel Spacing, Pixel Aspect Ratio) are resampled to
   square ones, as viewers draw them.

Colour DICOMs (palette, RGB, YBR) become grey with no window. A CT without any rescale whose
stored values run 0..4095 gets a note: its -1024 offset was most likely lost in an export.

Files: DICOM Part 10 (128-byte preamble, ``DICM``) and bare data sets written without that header
(read as pydicom's ``force=True`` does, with a note). A DICOMDIR is named as what it is.

Multi-frame files: the middle frame is taken and a note says so (a multi-frame CT is a volume,
and its middle slice is the most likely to cut through both lungs); only that frame is decoded.
Compressed transfer syntaxes decode through pydicom's plugins, which the requirements install
(pylibjpeg with -libjpeg, -openjpeg and -rle): JPEG Baseline, Extended (12-bit), Lossless (process
14, any predictor), JPEG-LS (lossless and near-lossless), JPEG 2000 and HTJ2K (YBR_RCT/YBR_ICT
included), RLE and Deflated. A syntax with no installed decoder is refused naming the syntax and the
missing plugin; data the decoders reject is refused naming the syntax and what each decoder said.

Before any pixel is decoded the Image Pixel description (PS3.3 C.7.6.3) is checked, so that an
incomplete object is refused for what it lacks: an image object without Pixel Data, Pixel Data
without Rows/Columns, a missing or impossible Bits Allocated, Bits Stored, Samples per Pixel or
Photometric Interpretation, and uncompressed Pixel Data shorter than its declared size (truncated).

Privacy: only image-describing attributes (modality, geometry, rescale, window, photometric
interpretation) are read as values. The identifiers that group slices by patient are read as
raw bytes and replaced at once by keyed digests (``pipeline.data.studies``). Nothing here
returns, logs or puts into an error message a patient-identifying tag, and the exported attacked
image is a new object that copies no attribute of the original except its modality.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from typing import Final, Optional, Union

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
    UID,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from pipeline.constants import LUNG_WINDOW, MEDIASTINAL_WINDOW
from pipeline.data.pixels import check_dimensions, to_grey, to_uint8
from pipeline.data.studies import SliceIdentity, slice_identity
from pipeline.errors import ScanError, UserInputError, failure_reason

#: A window: a name, or ``(width, level)`` in the file's units (Hounsfield units for CT).
Window = Union[str, tuple[float, float]]

NAMED_WINDOWS: Final[dict[str, tuple[float, float]]] = {"lung": LUNG_WINDOW, "mediastinal": MEDIASTINAL_WINDOW}
#: "file" means the VOI stored in the DICOM itself (VOI LUT, or Window Center/Width and function).
WINDOW_NAMES: Final[tuple[str, ...]] = (*NAMED_WINDOWS, "file")
#: Maps 0..255 onto itself: for values that are already display grey levels (colour, VOI LUT, sigmoid).
IDENTITY_WINDOW: Final[tuple[float, float]] = (255.0, 127.5)
PIXEL_DATA_TAGS: Final[tuple[str, ...]] = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
ATTACKED_DESCRIPTION: Final[str] = "ADVERSARIALLY PERTURBED - research artefact, not for diagnosis"
PIXEL_DATA_TAG: Final[int] = 0x7FE00010
#: Photometric interpretations DICOM defines (PS3.3 C.7.6.3.1.2), and the retired ones no reader supports.
PHOTOMETRICS: Final[frozenset[str]] = frozenset({
    "MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_422",
    "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "XYB",
})
RETIRED_PHOTOMETRICS: Final[frozenset[str]] = frozenset({"HSV", "ARGB", "CMYK"})
#: The decoders the requirements install (pydicom's pixel plugins for the compressed syntaxes).
INSTALL_DECODERS: Final[str] = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle"
#: Transfer syntaxes newer than pydicom's list (PS3.5 A.4.11, 2024): named in refusals.
NEWER_SYNTAXES: Final[dict[str, str]] = {
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless", "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
}
#: Functional groups (PS3.3 C.7.6.16) that hold per frame what classic objects hold at the top level.
FRAME_GROUPS: Final[tuple[str, ...]] = (
    "PixelValueTransformationSequence", "FrameVOILUTSequence", "PixelMeasuresSequence", "PlanePositionSequence",
    "PlaneOrientationSequence",
)
#: Top-level attributes a frame's display needs (and that the functional groups may override).
DISPLAY_KEYWORDS: Final[tuple[str, ...]] = (
    "Modality", "PhotometricInterpretation", "BitsStored", "PixelRepresentation", "RescaleSlope",
    "RescaleIntercept", "RescaleType", "ModalityLUTSequence", "WindowCenter", "WindowWidth", "VOILUTFunction",
    "VOILUTSequence", "PresentationLUTShape", "PixelSpacing", "PixelAspectRatio", "ImagePositionPatient",
    "ImageOrientationPatient", "SliceLocation", "InstanceNumber",
)
# Files are untrusted and their values are never shown. pydicom's reading validation quotes the
# offending value in its warnings and log records (a malformed Patient's Age or UID would land in
# the log verbatim), so it is turned off; every value used here is checked where it is used.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

#: A CT stored as unsigned 12-bit with no rescale most likely lost its -1024 offset in an export.
CT_TWELVE_BIT_MAX: Final[int] = 4095
#: Pixel aspect ratios closer to 1 than this are drawn as square (no resampling).
ASPECT_TOLERANCE: Final[float] = 0.01


def is_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file: 128-byte preamble, then the magic ``DICM``."""
    return data[128:132] == b"DICM"


def is_bare_dicom(data: bytes) -> bool:
    """Bytes that start like a DICOM data set written without the Part 10 header.

    Such files begin with a File Meta (0002,xxxx) or Identifying (0008,xxxx) element, little or
    big endian; no JPEG, PNG, BMP or TIFF starts that way.
    """
    if len(data) < 8:
        return False
    little = int.from_bytes(data[0:2], "little"), int.from_bytes(data[2:4], "little")
    big = int.from_bytes(data[0:2], "big"), int.from_bytes(data[2:4], "big")
    return any(group in (0x0002, 0x0008) and element < 0x0100 for group, element in (little, big))


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
    """Linear window as viewers show it: ``level - width/2`` -> 0, ``level + width/2`` -> 255.

    This is DICOM's LINEAR_EXACT VOI function (PS3.3 C.11.2.1.3.2) onto 8 bits, rounded:
    float ``values`` of any shape in the file's units -> uint8 of the same shape.
    """
    scaled = (np.asarray(values, dtype=np.float64) - (level - width / 2.0)) * (255.0 / width)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class DicomImage:
    """One decoded DICOM frame: uint8 ``[H, W]`` as shown, notes, and whose slice it is (hashed).

    ``modality`` is the file's Modality (``CT``, ``MR``, ...; empty when absent);
    ``hu_per_grey_level`` the Hounsfield units one grey level of ``image`` spans (the window's width
    / 255) when the pixels are a linear window over Hounsfield units, else None.
    """

    image: np.ndarray
    notes: tuple[str, ...]
    identity: SliceIdentity
    modality: str = ""
    hu_per_grey_level: Optional[float] = None


@dataclass(frozen=True)
class _Display:
    """One decoded frame in ``values``' units, with the LINEAR_EXACT window that turns it into 8-bit.

    ``hounsfield`` says whether ``values`` are Hounsfield units (else display levels or other units).
    """

    values: np.ndarray
    width: float
    level: float
    invert: bool
    modality: str
    hounsfield: bool
    notes: tuple[str, ...]

    def to_uint8(self) -> np.ndarray:
        image = apply_window(self.values, self.width, self.level)
        return 255 - image if self.invert else image


def read_dicom(data: bytes, window: Window = "lung") -> DicomImage:
    """Decode one DICOM slice (Part 10 or a bare data set) to uint8 ``[H, W]`` through ``window``.

    Raises ``ScanError`` (what the file is and what to do) for anything that is not a readable
    image object, and ``UserInputError`` for an unknown window.
    """
    ds, notes = _parse(data)
    display, view = _decode(ds, check_window(window))
    return DicomImage(display.to_uint8(), (*notes, *display.notes), slice_identity(ds, view), display.modality,
                      display.width / 255.0 if display.hounsfield else None)


def modality_values(data: bytes) -> tuple[np.ndarray, bool]:
    """The shown frame of a DICOM slice in modality units, before any window.

    Returns float64 ``[H, W]`` after the Modality LUT (Rescale Slope/Intercept or Modality LUT
    Sequence) and square-pixel resampling, and whether those units are Hounsfield units (a CT).
    Colour images give their grey display levels 0..255. Raises ``ScanError`` as ``read_dicom``.
    """
    ds, _ = _parse(data)
    display, _ = _decode(ds, IDENTITY_WINDOW)
    return display.values, display.hounsfield


def attacked_dicom(original: bytes, image_uint8: np.ndarray, window: Window = "lung") -> bytes:
    """A new, de-identified DICOM holding ``image_uint8`` mapped back through ``window``.

    The pixels are stored as 0..255 with ``RescaleSlope = width/255`` and ``RescaleIntercept =
    level - width/2``: exactly the inverse of the window (and the source's MONOCHROME1/2 sense),
    so a viewer shows Hounsfield units and reading the file with the same window gives back
    ``image_uint8`` unchanged (the stored window is LINEAR_EXACT). When the source's own display
    is not linear (a VOI LUT or sigmoid) or it is a colour image, the pixels are its display grey
    levels. The object is a Secondary Capture with fresh UIDs, empty patient attributes and a
    SeriesDescription that says it is adversarially perturbed; nothing but the modality is copied.
    """
    if not isinstance(image_uint8, np.ndarray) or image_uint8.ndim != 2 or image_uint8.dtype != np.uint8:
        raise UserInputError("attacked_dicom needs the attacked image as a 2-D uint8 array")
    source, _ = _decode(_parse(original)[0], check_window(window))
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
    out.RescaleType = "HU" if source.hounsfield else "US"
    out.WindowWidth = f"{width:.10g}"
    out.WindowCenter = f"{level:.10g}"
    out.VOILUTFunction = "LINEAR_EXACT"
    out.BurnedInAnnotation = "NO"
    out.PixelData = stored.astype("<u2").tobytes()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, out, enforce_file_format=True)
    return buffer.getvalue()


def frame_view(ds: Dataset, frame: int = 0) -> Dataset:
    """The attributes that say how ``frame`` is shown, as one flat data set.

    Top-level attributes first, then the shared functional groups, then the frame's own
    (PS3.3 C.7.6.16: per-frame values override shared ones). The result carries the source's
    file meta, so LUTs stored as OW keep their byte order; pydicom's pixel helpers take it as a
    classic single-frame data set.
    """
    view = Dataset()
    for keyword in DISPLAY_KEYWORDS:
        if keyword in ds:
            view.add(ds[keyword])
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    for groups in (shared[0] if shared else None, per_frame[frame] if frame < len(per_frame) else None):
        for sequence in FRAME_GROUPS:
            items = groups.get(sequence) if groups is not None else None
            if items:
                for element in items[0]:
                    view.add(element)
    view.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    return view


def _parse(data: bytes) -> tuple[Dataset, list[str]]:
    """The data set, and a note when it had no Part 10 header (then its transfer syntax is inferred)."""
    if is_dicom(data):
        try:
            return pydicom.dcmread(io.BytesIO(data)), []
        except Exception as exc:  # a hostile header can make the parser fail in many ways
            raise ScanError(
                f"the DICOM file could not be parsed ({type(exc).__name__}); it is damaged or truncated. "
                "Export the slice again from the viewer or PACS"
            ) from None
    try:
        with warnings.catch_warnings():  # pydicom warns about the missing header, quoting nothing useful
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if len(ds) == 0:
            raise ValueError("no data elements")
    except Exception as exc:
        raise ScanError(
            f"the file starts like a DICOM data set without the Part 10 header, but could not be parsed "
            f"({type(exc).__name__}); it is damaged or not DICOM. Export the slice again as a DICOM file"
        ) from None
    if not any(tag in ds for tag in (*PIXEL_DATA_TAGS, "SOPClassUID")):
        raise ScanError(
            "the file starts like a DICOM data set without the Part 10 header, but holds neither an image nor "
            "an object type; it is damaged or not DICOM. Export the slice again as a DICOM file"
        )
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    return ds, [
        "no DICOM file header (128-byte preamble and 'DICM'): read as a bare data set, transfer syntax "
        f"taken as {ds.file_meta.TransferSyntaxUID.name}"
    ]


def _object_kind(ds: Dataset) -> str:
    """What the object is, from its SOP class (or its file meta's), for messages."""
    uid = ds.get("SOPClassUID") or getattr(ds, "file_meta", Dataset()).get("MediaStorageSOPClassUID")
    return str(getattr(uid, "name", "") or "not stated")


def _check_image_object(ds: Dataset) -> None:
    """Refuse, saying what it is, an object that holds no image."""
    if any(tag in ds for tag in PIXEL_DATA_TAGS):
        return
    media = getattr(ds, "file_meta", Dataset()).get("MediaStorageSOPClassUID")
    if media == MediaStorageDirectoryStorage or "DirectoryRecordSequence" in ds:
        raise ScanError(
            "this is a DICOMDIR: the index of a DICOM disc or folder, which lists images but holds none. "
            "Open one of the image files it indexes, or load the folder that holds them as a dataset"
        )
    kind = _object_kind(ds)
    if "Image Storage" in kind:
        # Attributes stored after Pixel Data's place (padding, signatures) prove the file complete; without
        # them a file that stops at an element boundary cannot be told from one written without pixels.
        after = any(element.tag > PIXEL_DATA_TAG for element in ds)
        how = ("the file is complete (attributes follow where Pixel Data belongs), so the pixels were left out "
               "when it was written" if after else
               "the pixels were left out when it was written (a header-only export, or a query result) "
               "or the copy stopped before them")
        raise ScanError(
            f"the DICOM file is {_article(kind)} {kind} object without Pixel Data: it describes an image but does not hold "
            f"one; {how}. Export or retrieve the slice again with its pixels"
        )
    raise ScanError(
        f"the DICOM file holds no image (no Pixel Data; object type: {kind}). "
        "Choose an image slice (for example CT Image Storage) from the series instead"
    )


def _check_pixel_description(ds: Dataset) -> None:
    """Refuse, naming what is missing or wrong, Pixel Data whose layout the file does not state.

    The Image Pixel module (PS3.3 C.7.6.3) gives the layout as Type 1 attributes: Rows, Columns,
    Samples per Pixel, Photometric Interpretation, Bits Allocated, Bits Stored and Pixel
    Representation (the last two for integer Pixel Data only); Planar Configuration as well for
    uncompressed colour. Without them the bytes cannot be laid out as an image.
    """
    kind = _object_kind(ds)
    what = f"{_article(kind)} {kind} object" if kind != "not stated" else "an object of unstated type"
    size = [name for keyword, name in (("Rows", "Rows"), ("Columns", "Columns")) if not _integer(ds, keyword)]
    if size:
        raise ScanError(
            f"the DICOM file is {what} holding Pixel Data, but it does not state the image size "
            f"({' and '.join(size)} missing or 0), so the pixels cannot be laid out. The file was written by "
            "a faulty tool or damaged; export the slice again"
        )
    integer = "PixelData" in ds
    required = {"SamplesPerPixel": "Samples per Pixel", "PhotometricInterpretation": "Photometric Interpretation",
                "BitsAllocated": "Bits Allocated"}
    if integer:
        required.update(BitsStored="Bits Stored", PixelRepresentation="Pixel Representation")
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    compressed = syntax is not None and _compressed(syntax)
    if _integer(ds, "SamplesPerPixel") == 3 and not compressed:
        required["PlanarConfiguration"] = "Planar Configuration"
    missing = [name for keyword, name in required.items() if ds.get(keyword) in (None, "")]
    if missing:
        raise ScanError(
            f"the DICOM file is {what} holding Pixel Data, but it lacks {', '.join(missing)} (required attributes "
            "that say how its bytes make pixels), so they cannot be read. The file was written by a faulty tool or "
            "damaged; export the slice again"
        )
    samples, allocated = _integer(ds, "SamplesPerPixel"), _integer(ds, "BitsAllocated")
    stored = _integer(ds, "BitsStored") if integer else allocated
    photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper()
    problems = []
    if samples not in (1, 3) and photometric not in RETIRED_PHOTOMETRICS:
        problems.append(f"Samples per Pixel is {samples}, where images have 1 (grey) or 3 (colour)")
    if allocated not in ((1, 8, 16, 32, 64) if integer else (32, 64)):
        problems.append(f"Bits Allocated is {allocated}, which no DICOM pixel encoding uses")
    elif stored is None or not 1 <= stored <= allocated:
        problems.append(f"Bits Stored is {stored}, outside 1..Bits Allocated ({allocated})")
    if photometric in RETIRED_PHOTOMETRICS:
        problems.append(f"Photometric Interpretation {photometric} is a colour model DICOM retired in 2004, which "
                        "no current reader decodes (export the slice as RGB or grey)")
    elif photometric not in PHOTOMETRICS:
        problems.append(f"Photometric Interpretation {photometric[:16]!r} is not one DICOM defines")
    elif (samples == 1) != (photometric in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR")):
        problems.append(f"Photometric Interpretation {photometric} does not fit {samples} sample(s) per pixel")
    if problems:
        raise ScanError(
            f"the DICOM file is {what} whose pixel description is invalid: {'; '.join(problems)}. "
            "The file was written by a faulty tool or damaged; export the slice again"
        )


def _article(kind: str) -> str:
    """'a' or 'an' as the object type is spoken ("an MR Image", "an RT Dose", "a CT Image")."""
    first = kind.split(" ")[0] if kind else ""
    spoken_vowel = first[:1] in tuple("AEIOU") or first.startswith("X-") or (
        first.isupper() and first[:1] in tuple("FHLMNRSX"))
    return "an" if spoken_vowel else "a"


def _integer(ds: Dataset, keyword: str) -> Optional[int]:
    """A stored whole number, or None when absent, empty, zero-length or not a number."""
    value = ds.get(keyword)
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else None
    try:
        number = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number or None


def _decode(ds: Dataset, window: Window) -> tuple[_Display, Dataset]:
    """The shown frame through the display pipeline, and that frame's flat view."""
    _check_image_object(ds)
    _check_pixel_description(ds)
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    check_dimensions(columns, rows)
    notes: list[str] = []
    frames = int(ds.get("NumberOfFrames") or 1)
    index = (frames - 1) // 2
    if frames > 1:
        ds.pixel_array_options(index=index)
        notes.append(
            f"multi-frame DICOM with {frames} frames: frame {index + 1} (the middle one) is shown; "
            "export single slices to choose another"
        )
    view = frame_view(ds, index)
    pixels = _pixel_array(ds)
    modality = str(view.get("Modality") or "")
    photometric = str(view.get("PhotometricInterpretation") or "MONOCHROME2")
    if not photometric.startswith("MONOCHROME"):
        colour = apply_color_lut(pixels, ds) if photometric == "PALETTE COLOR" else pixels
        notes.append(f"{photometric} DICOM converted to grey; CT windows do not apply to colour images")
        grey = _square_pixels(to_uint8(to_grey(colour), notes).astype(np.float64), view, notes)
        return _Display(grey, *IDENTITY_WINDOW, invert=False, modality=modality, hounsfield=False,
                        notes=tuple(notes)), view
    rescaled = any(keyword in view for keyword in ("RescaleSlope", "RescaleIntercept", "ModalityLUTSequence"))
    values = np.asarray(apply_modality_lut(pixels, view), dtype=np.float64)
    if not np.isfinite(values).all():
        raise ScanError("the DICOM pixel data contains NaN or infinite values; export the slice again")
    if modality == "CT" and not rescaled and 0 <= values.min() and 0 < values.max() <= CT_TWELVE_BIT_MAX:
        notes.append(
            f"CT without Rescale Slope/Intercept whose stored values run {values.min():g}..{values.max():g}: "
            "the usual -1024 offset was probably lost when the file was exported, so air reads near 0 instead "
            "of -1000 HU and CT windows show the slice washed out. The values are used as stored; export the "
            "slice again with its rescale tags"
        )
    values = _square_pixels(values, view, notes)
    values, width, level, hounsfield = _resolve_window(view, values, window, modality, notes)
    shape = str(view.get("PresentationLUTShape") or "").strip().upper()
    invert = photometric == "MONOCHROME1" or shape == "INVERSE"
    if shape == "INVERSE" and photometric != "MONOCHROME1":
        notes.append("Presentation LUT Shape INVERSE: low values are shown white, as viewers show them")
    return _Display(values, width, level, invert, modality, hounsfield, tuple(notes)), view


def _pixel_array(ds: Dataset) -> np.ndarray:
    """The pixels of the chosen frame; a failure says what the data is and which decoder it needs."""
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is not None and _compressed(syntax):
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            name = _syntax_name(syntax)
            raise ScanError(
                f"the DICOM pixel data is encoded as {name}, a transfer syntax no installed decoder reads "
                "(pydicom has no decoder plugin for it). Convert the file to uncompressed DICOM (e.g. gdcmconv --raw, dcmdjpeg) and load it "
                "again"
            ) from None
        if not decoder.is_available:
            raise ScanError(
                f"the DICOM pixel data is compressed as {syntax.name}, and no decoder for it is installed "
                f"(missing: {'; '.join(decoder.missing_dependencies) or 'a decoder plugin'}). "
                f"Install the lab's requirements ({INSTALL_DECODERS}) or convert the file to uncompressed DICOM "
                "(e.g. gdcmconv --raw, dcmdjpeg) and load it again"
            )
    try:
        return ds.pixel_array
    except Exception as exc:  # decoders raise anything from ValueError to RuntimeError on bad data
        raise ScanError(_decode_failure(ds, syntax, exc)) from None


def _compressed(syntax: UID) -> bool:
    """Whether the pixel data is encapsulated; a transfer syntax pydicom does not know counts as compressed."""
    return syntax.is_compressed if syntax.is_transfer_syntax else True


def _syntax_name(syntax: UID) -> str:
    """The transfer syntax's name for messages (newer ones pydicom does not list by name included)."""
    known = str(syntax.name) if syntax.is_transfer_syntax else NEWER_SYNTAXES.get(str(syntax), "")
    return f"{known} ({str(syntax)[:64]})" if known else f"the unknown transfer syntax {str(syntax)[:64]!r}"


def _decode_failure(ds: Dataset, syntax: Optional[UID], exc: BaseException) -> str:
    """Why decoding failed, in the file's terms: a short native Pixel Data, or what the decoders said."""
    layout = (f"{ds.get('BitsStored') or ds.get('BitsAllocated')}-bit "
              f"{str(ds.get('PhotometricInterpretation') or '')[:16]}").strip()
    if syntax is not None and _compressed(syntax):
        decoder = get_decoder(syntax)
        missing = decoder.missing_dependencies
        advice = (f"another decoder may read it (not installed: {'; '.join(missing)}), or " if missing else "")
        return (
            f"the {layout} pixel data, compressed as {syntax.name}, could not be decoded by the installed decoders "
            f"({', '.join(decoder.available_plugins)}): {_decoder_reasons(exc)}. The data is damaged or uses a "
            f"variant these decoders do not handle; {advice}convert the file to uncompressed DICOM "
            "(e.g. gdcmconv --raw, dcmdjpeg) and load it again"
        )
    if "PixelData" in ds:
        have = len(ds.PixelData or b"")
        rows, columns = _integer(ds, "Rows") or 0, _integer(ds, "Columns") or 0
        samples, allocated = _integer(ds, "SamplesPerPixel") or 1, _integer(ds, "BitsAllocated") or 0
        frames = _integer(ds, "NumberOfFrames") or 1
        need = math.ceil(rows * columns * samples * frames * allocated / 8)
        if have < need:
            return (
                f"the DICOM file is truncated: its Pixel Data holds {have} bytes, where {frames} frame(s) of "
                f"{columns}x{rows} {layout} pixels need {need}. Copy or export the file again"
            )
    return (
        f"the DICOM pixel data could not be decoded ({failure_reason(exc)}). "
        "Export the slice again as uncompressed DICOM"
    )


def _decoder_reasons(exc: BaseException) -> str:
    """The decoders' own one-line reasons (pydicom lists one per plugin), shortened; no file value is in them."""
    lines = [" ".join(line.split()) for line in str(exc).splitlines()[1:] if line.strip()]
    text = "; ".join(lines) or " ".join(str(exc).split())
    failure_reason(exc)  # logs the full text for the operator
    return text[:400] + ("..." if len(text) > 400 else "")


def _square_pixels(values: np.ndarray, view: Dataset, notes: list[str]) -> np.ndarray:
    """Resample non-square pixels (Pixel Spacing row/column, or Pixel Aspect Ratio) to square ones."""
    ratio = _aspect(view)
    if ratio is None or abs(ratio - 1.0) <= ASPECT_TOLERANCE:
        return values
    height, width = values.shape
    new_height, new_width = (round(height * ratio), width) if ratio > 1 else (height, round(width / ratio))
    check_dimensions(new_width, new_height)
    notes.append(
        f"pixels are {ratio:.3g} times taller than wide: resampled to square pixels "
        f"({width}x{height} -> {new_width}x{new_height}), as viewers draw them"
    )
    return cv2.resize(values, (new_width, new_height), interpolation=cv2.INTER_LINEAR)


def _aspect(view: Dataset) -> Optional[float]:
    """Pixel height over width from Pixel Spacing (row, column spacing) or Pixel Aspect Ratio."""
    for keyword in ("PixelSpacing", "PixelAspectRatio"):
        value = view.get(keyword)
        try:
            vertical, horizontal = (float(part) for part in value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(vertical) and math.isfinite(horizontal) and vertical > 0 and horizontal > 0:
            return vertical / horizontal
    return None


def _resolve_window(view: Dataset, values: np.ndarray, window: Window, modality: str,
                    notes: list[str]) -> tuple[np.ndarray, float, float, bool]:
    """(values, width, level, hounsfield) for ``window``: the presets apply to CT only, else the file's VOI."""
    hounsfield = modality == "CT"
    if isinstance(window, tuple):
        return values, *window, hounsfield
    if window in NAMED_WINDOWS:
        if modality == "CT":
            return values, *NAMED_WINDOWS[window], hounsfield
        notes.append(
            f"modality is {modality or 'not stated'}, not CT: the {window} window is in Hounsfield units "
            "and does not apply; the file's own window is used"
        )
    stored = _file_voi(view, values, notes)
    if stored is not None:
        shown, width, level, linear = stored
        return shown, width, level, hounsfield and linear
    low, high = float(values.min()), float(values.max())
    notes.append(f"the file stores no usable window; its full value range {low:g}..{high:g} is shown")
    return values, max(high - low, 1e-6), (high + low) / 2.0, hounsfield


def _file_voi(view: Dataset, values: np.ndarray,
              notes: list[str]) -> Optional[tuple[np.ndarray, float, float, bool]]:
    """The file's own VOI as (values, LINEAR_EXACT width, level, linear), or None when it stores none usable.

    Linear windows keep the values in modality units with the equivalent LINEAR_EXACT window
    (LINEAR's ``c - 0.5``, ``w - 1``: PS3.3 C.11.2.1.2.1), so an export can invert them exactly.
    A VOI LUT Sequence or a SIGMOID window is applied with pydicom, giving display levels 0..255.
    """
    lut = view.get("VOILUTSequence")
    if lut and "LUTDescriptor" in lut[0] and "LUTData" in lut[0]:
        try:
            return _voi_lut(view, values), *IDENTITY_WINDOW, False
        except Exception as exc:  # a malformed LUT: viewers fall back to the window, and so do we
            notes.append(f"the file's VOI LUT cannot be used ({failure_reason(exc)}); its window is tried instead")
    centre, width, count = _first_window(view)
    if centre is None or width is None:
        return None
    if count > 1:
        notes.append(f"the file offers {count} windows; the first is used")
    function = str(view.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function == "SIGMOID":
        flat = Dataset()
        flat.PhotometricInterpretation, flat.BitsStored, flat.PixelRepresentation = "MONOCHROME2", 8, 0
        flat.WindowCenter, flat.WindowWidth, flat.VOILUTFunction = centre, width, "SIGMOID"
        return np.asarray(apply_voi_lut(values, flat), dtype=np.float64), *IDENTITY_WINDOW, False
    if function not in ("LINEAR", "LINEAR_EXACT"):
        notes.append(f"VOI LUT Function {function[:16]!r} is not a DICOM function; the window is applied as LINEAR")
        function = "LINEAR"
    if function == "LINEAR":
        if width < 1:
            return None
        return values, max(width - 1.0, 1e-6), centre - 0.5, True
    return values, width, centre, True


def _first_window(view: Dataset) -> tuple[Optional[float], Optional[float], int]:
    """The first Window Center and Width when both are usable numbers, and how many windows there are."""
    width, centre = view.get("WindowWidth"), view.get("WindowCenter")
    if width is None or centre is None:
        return None, None, 0
    count = len(width) if isinstance(width, MultiValue) else 1
    first = [value[0] if isinstance(value, MultiValue) and len(value) else value for value in (centre, width)]
    try:
        centre_value, width_value = float(first[0]), float(first[1])
    except (TypeError, ValueError):
        return None, None, 0
    if not (math.isfinite(width_value) and math.isfinite(centre_value) and width_value > 0):
        return None, None, 0
    return centre_value, width_value, count


def _voi_lut(view: Dataset, values: np.ndarray) -> np.ndarray:
    """The first VOI LUT applied through pydicom, as display levels 0..255.

    The LUT's output range is taken from the bits its entries use, capped by the bit depth its
    descriptor declares (many files declare 16 bits for a 12-bit LUT; viewers show those in full).
    """
    entries, first, _ = (int(value) for value in view.VOILUTSequence[0].LUTDescriptor)
    entries = entries or 2**16
    if first < -(2**16) or first > 2**16:
        raise ValueError(f"first mapped value {first} is out of range")
    table = apply_voi_lut(np.arange(first, first + entries, dtype=np.int64), view)
    depth = int(view.VOILUTSequence[0].LUTDescriptor[2])
    top = 2 ** min(depth, max(int(table.max(initial=0)), 1).bit_length()) - 1
    indices = np.clip(np.rint(values), first, first + entries - 1).astype(np.int64)
    return np.asarray(apply_voi_lut(indices, view), dtype=np.float64) * (255.0 / top)
