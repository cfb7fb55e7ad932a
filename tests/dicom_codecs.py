"""A 12-bit CT slice written in every transfer syntax a PACS archive holds, by real encoders.

``ct_slice()`` is a synthetic (phantom, not patient) 12-bit CT slice as scanners store it:
unsigned 12-bit values with Rescale Slope 1 and Intercept -1024, so stored 0 is -1024 HU.
``encode(ds, syntax)`` returns the Part 10 bytes of that slice in ``syntax``:

- pydicom's own encoders (``Dataset.compress``): RLE Lossless (pydicom's native encoder),
  JPEG 2000 lossless and lossy (pylibjpeg-openjpeg, a runtime requirement), and the
  uncompressed and deflated syntaxes through ``dcmwrite``;
- imagecodecs (a test requirement) where pydicom has no encoder: JPEG Baseline (8-bit),
  JPEG Extended (12-bit, process 4), JPEG Lossless process 14 (any predictor; SV1 is predictor
  1) through libjpeg-turbo 3, and JPEG-LS lossless and near-lossless through CharLS. Their
  codestreams are encapsulated as PS3.5 A.4 says, with the attributes the syntax requires
  (Lossy Image Compression for the lossy ones).

``LOSSLESS`` and ``LOSSY`` list what each syntax must give back: the stored values exactly, or
within a bound in Hounsfield units.
"""

from __future__ import annotations

import io
from typing import Final

import imagecodecs
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    UID,
    generate_uid,
)

#: Stored value 0 is this many Hounsfield units (the usual CT offset).
INTERCEPT: Final[int] = -1024
#: Syntaxes whose decoded values must equal the stored ones exactly.
LOSSLESS: Final[tuple[UID, ...]] = (
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian,
    RLELossless, JPEGLosslessSV1, JPEGLossless, JPEGLSLossless, JPEG2000Lossless,
)
#: Lossy syntaxes and the largest error allowed, in Hounsfield units (JPEG-LS near-lossless: NEAR = 3).
LOSSY: Final[dict[UID, float]] = {JPEGExtended12Bit: 60.0, JPEGLSNearLossless: 3.0, JPEG2000: 60.0}
#: Compression ratio of the lossy JPEG 2000 (a diagnostic archive's setting is about 5..10 for CT).
J2K_RATIO: Final[int] = 4
#: The near-lossless JPEG-LS bound (NEAR, PS3.5 A.4.3): no stored value moves further than this.
NEAR: Final[int] = 3


def ct_hounsfield(rows: int = 72, columns: int = 64, seed: int = 0) -> np.ndarray:
    """A synthetic chest slice in Hounsfield units, int16 ``[rows, columns]``: air, body, lungs, bone, vessels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:rows, :columns]
    y, x = yy / rows - 0.5, xx / columns - 0.5
    hu = np.full((rows, columns), -1000.0)
    hu[(x / 0.46) ** 2 + (y / 0.38) ** 2 <= 1] = 40.0  # soft tissue
    for side in (-0.2, 0.2):
        hu[((x - side) / 0.15) ** 2 + (y / 0.26) ** 2 <= 1] = -850.0  # lungs
    hu[(x / 0.05) ** 2 + ((y + 0.28) / 0.05) ** 2 <= 1] = 1200.0  # vertebra
    hu[(x / 0.04) ** 2 + ((y - 0.05) / 0.04) ** 2 <= 1] = 300.0  # contrast in the aorta
    hu += rng.normal(0.0, 12.0, hu.shape)  # scanner noise, so that nothing compresses trivially
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def ct_slice(hounsfield: np.ndarray | None = None) -> FileDataset:
    """A CT Image Storage object holding ``hounsfield`` as unsigned 12-bit stored values (HU + 1024)."""
    hu = ct_hounsfield() if hounsfield is None else hounsfield
    ds = _dataset(CTImageStorage)
    ds.Modality, ds.SamplesPerPixel, ds.PhotometricInterpretation = "CT", 1, "MONOCHROME2"
    ds.Rows, ds.Columns = hu.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "1", str(INTERCEPT), "HU"
    ds.WindowCenter, ds.WindowWidth = "-600", "1500"
    ds.PixelSpacing = [0.7, 0.7]
    ds.PixelData = (hu.astype(np.int32) - INTERCEPT).astype("<u2").tobytes()
    return ds


def lung_window(hounsfield: np.ndarray) -> np.ndarray:
    """``hounsfield`` through the lung window (1500/-600, LINEAR_EXACT) as uint8, as the reader shows CT."""
    return np.clip(np.rint((hounsfield + 1350.0) * 255.0 / 1500.0), 0, 255).astype(np.uint8)


def display_slice(hounsfield: np.ndarray | None = None, *, samples: int = 1) -> FileDataset:
    """The slice in the lung window as an 8-bit Secondary Capture: MONOCHROME2, or RGB (grey in R, G, B)."""
    hu = ct_hounsfield() if hounsfield is None else hounsfield
    grey = lung_window(hu)
    ds = _dataset(SecondaryCaptureImageStorage)
    ds.Modality, ds.SamplesPerPixel = "OT", samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = hu.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = (np.repeat(grey[..., None], 3, axis=2) if samples == 3 else grey).tobytes()
    return ds


def encode(ds: FileDataset, syntax: UID, **options: object) -> bytes:
    """``ds`` (uncompressed, little endian) as Part 10 bytes in ``syntax``; see the module docstring."""
    ds = _copy(ds)
    pixels = ds.pixel_array
    if syntax in (RLELossless, JPEG2000Lossless, JPEG2000):
        if syntax == JPEG2000:
            options.setdefault("j2k_cr", [J2K_RATIO])
        if syntax != RLELossless and ds.SamplesPerPixel == 3:
            # RGB pixels declared YBR_RCT/ICT: the encoder applies JPEG 2000's colour transform (PS3.5 8.2.4)
            ds.PhotometricInterpretation = "YBR_RCT" if syntax == JPEG2000Lossless else "YBR_ICT"
        ds.compress(syntax, **options)
        if syntax == JPEG2000:
            _mark_lossy(ds, "ISO_15444_1", float(J2K_RATIO))
    elif syntax in (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1):
        bits = int(ds.BitsStored)
        kwargs: dict = {"bitspersample": bits}
        if syntax in (JPEGLossless, JPEGLosslessSV1):
            kwargs.update(lossless=True, predictor=1 if syntax == JPEGLosslessSV1 else int(options.get("predictor", 6)))
        else:
            kwargs.update(level=int(options.get("level", 90)))
            if ds.SamplesPerPixel == 3:
                kwargs.update(colorspace="RGB", outcolorspace="YCbCr", subsampling="444")
        frame = imagecodecs.jpeg8_encode(pixels, **kwargs)
        _encapsulate(ds, frame, syntax)
        if syntax in (JPEGBaseline8Bit, JPEGExtended12Bit):
            _mark_lossy(ds, "ISO_10918_1", 10.0)
            if ds.SamplesPerPixel == 3:
                ds.PhotometricInterpretation = "YBR_FULL"
    elif syntax in (JPEGLSLossless, JPEGLSNearLossless):
        near = NEAR if syntax == JPEGLSNearLossless else 0
        _encapsulate(ds, imagecodecs.jpegls_encode(pixels, level=near), syntax)
        if near:
            _mark_lossy(ds, "ISO_14495_1", 2.0)
    elif syntax == ExplicitVRBigEndian:  # dcmwrite swaps the attributes' bytes, not Pixel Data's
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()
        ds.file_meta.TransferSyntaxUID = syntax
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, implicit_vr=False, little_endian=False, enforce_file_format=True)
        return buffer.getvalue()
    else:  # the uncompressed and deflated syntaxes: dcmwrite encodes them
        ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _dataset(sop_class: UID) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID = "SYNTHETIC-PHANTOM"
    ds.ImageComments = "Synthetic phantom slice written by the tests; not patient data"
    return ds


def _copy(ds: FileDataset) -> FileDataset:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def _encapsulate(ds: Dataset, frame: bytes, syntax: UID) -> None:
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = syntax


def _mark_lossy(ds: Dataset, method: str, ratio: float) -> None:
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = method
    ds.LossyImageCompressionRatio = f"{ratio:g}"
