"""Every transfer syntax a PACS archive holds reads as a viewer shows it (issue 23, point 2).

A synthetic 12-bit CT slice (stored HU + 1024, Rescale Intercept -1024) is written by real
encoders in each syntax (``tests/dicom_codecs.py``) and read back through the product's reader:
lossless syntaxes give back the Hounsfield units exactly and the lung-window image bit for bit,
lossy ones stay within their bound. pydicom's own test files, written by other tools (DCMTK,
GDCM, CharLS, OpenJPEG), must decode equal to their uncompressed twins. What still cannot be
decoded is refused naming the transfer syntax and the decoders, never blamed on truncation.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.pixels import get_decoder
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    UID,
)

from pipeline.data import open_scan
from pipeline.data.dicom import modality_values, read_dicom
from pipeline.errors import ScanError
from tests.dicom_codecs import LOSSLESS, LOSSY, NEAR, ct_hounsfield, ct_slice, display_slice, encode, lung_window


@pytest.fixture(scope="module")
def hounsfield() -> np.ndarray:
    return ct_hounsfield()


def _syntax(data: bytes) -> UID:
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID


def test_every_syntax_is_really_encoded_and_compressed_ones_need_a_decoder(hounsfield: np.ndarray) -> None:
    """The fixture is what it claims: each file carries its syntax, and the compressed ones are smaller."""
    plain = encode(ct_slice(hounsfield), ExplicitVRLittleEndian)
    for syntax in (*LOSSLESS, *LOSSY):
        data = encode(ct_slice(hounsfield), syntax)
        assert _syntax(data) == syntax
        if syntax.is_compressed or syntax.is_deflated:
            assert len(data) < 0.8 * len(plain), f"{syntax.name} is not compressed"
        if syntax.is_compressed:
            assert get_decoder(syntax).is_available, f"no decoder for {syntax.name}: requirements.txt installs them"


@pytest.mark.parametrize("syntax", LOSSLESS, ids=lambda syntax: syntax.name)
def test_lossless_syntaxes_give_back_the_hounsfield_units_exactly(syntax: UID, hounsfield: np.ndarray) -> None:
    data = encode(ct_slice(hounsfield), syntax)
    values, is_hounsfield = modality_values(data)
    assert is_hounsfield
    assert np.array_equal(values, hounsfield.astype(np.float64)), f"{syntax.name} changed the Hounsfield units"
    assert values.min() == hounsfield.min() and values.min() < -1000  # air, through the -1024 intercept
    shown = read_dicom(data, "lung")
    assert np.array_equal(shown.image, lung_window(hounsfield))
    assert not any("could not" in note or "lost" in note for note in shown.notes)


@pytest.mark.parametrize("syntax", list(LOSSY), ids=lambda syntax: syntax.name)
def test_lossy_syntaxes_stay_close_to_the_hounsfield_units(syntax: UID, hounsfield: np.ndarray) -> None:
    data = encode(ct_slice(hounsfield), syntax)
    values, is_hounsfield = modality_values(data)
    error = np.abs(values - hounsfield)
    assert is_hounsfield and values.shape == hounsfield.shape
    assert error.max() <= LOSSY[syntax], f"{syntax.name}: {error.max()} HU off"
    assert error.mean() <= 12.0  # a few HU on average: the lung window shows it as the original
    assert 0 < error.max(), f"{syntax.name} was meant to be lossy"
    if syntax.name.startswith("JPEG-LS"):
        assert error.max() <= NEAR  # near-lossless keeps its promise exactly
    shown = read_dicom(data, "lung").image.astype(int)
    assert np.abs(shown - lung_window(hounsfield)).mean() <= 2.0


def test_twelve_bit_jpeg_extended_keeps_twelve_bits(hounsfield: np.ndarray) -> None:
    """A 12-bit JPEG Extended CT: values above 255 and below 0 after rescale survive (not 8-bit)."""
    data = encode(ct_slice(hounsfield), JPEGExtended12Bit)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.BitsStored == 12 and ds.pixel_array.max() > 2000
    values, _ = modality_values(data)
    bone = hounsfield > 1000
    assert values[bone].mean() > 1000 and values[hounsfield < -900].mean() < -900


@pytest.mark.parametrize("syntax, exact", [
    (JPEG2000Lossless, True), (JPEG2000, False), (RLELossless, True), (JPEGLSLossless, True),
    (JPEGBaseline8Bit, False), (JPEGLosslessSV1, True),
], ids=lambda value: value.name if isinstance(value, UID) else str(value))
@pytest.mark.parametrize("samples", [1, 3], ids=["grey", "colour"])
def test_eight_bit_grey_and_colour_including_ybr_rct_and_ict(syntax: UID, exact: bool, samples: int,
                                                             hounsfield: np.ndarray) -> None:
    """Secondary captures as exported from a viewer; colour JPEG 2000 is YBR_RCT (lossless) or YBR_ICT."""
    reference = read_dicom(encode(display_slice(hounsfield, samples=samples), ExplicitVRLittleEndian)).image
    data = encode(display_slice(hounsfield, samples=samples), syntax)
    photometric = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).PhotometricInterpretation
    if samples == 3 and syntax in (JPEG2000Lossless, JPEG2000):
        assert photometric == ("YBR_RCT" if syntax == JPEG2000Lossless else "YBR_ICT")
    shown = read_dicom(data).image.astype(int)
    difference = np.abs(shown - reference)
    if exact:
        assert not difference.any(), f"{syntax.name} {photometric} differs from the uncompressed image"
    else:
        assert difference.mean() <= 10.0 and np.corrcoef(shown.ravel(), reference.ravel())[0, 1] > 0.98


def test_jpeg_baseline_ybr_full_422_reads_as_grey(hounsfield: np.ndarray) -> None:
    reference = read_dicom(encode(display_slice(hounsfield, samples=3), ExplicitVRLittleEndian)).image.astype(int)
    ds = display_slice(hounsfield, samples=3)
    import imagecodecs

    frame = imagecodecs.jpeg8_encode(ds.pixel_array, level=92, colorspace="RGB", outcolorspace="YCbCr",
                                     subsampling="422")
    from tests.dicom_codecs import _encapsulate

    _encapsulate(ds, frame, JPEGBaseline8Bit)
    ds.PhotometricInterpretation = "YBR_FULL_422"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    shown = read_dicom(buffer.getvalue()).image.astype(int)
    assert np.abs(shown - reference).mean() <= 4.0


# --------------------------------------------------------------------- files written by other tools
#: pydicom's test files that hold one image in several syntaxes: each must decode like the first.
TWINS = {
    "MR_small.dcm": ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                     "MR_small_bigendian.dcm", "MR_small_expb.dcm", "MR_small_implicit.dcm", "MR_small_padded.dcm"],
    "SC_rgb_rle.dcm": ["SC_rgb_jpeg_gdcm.dcm", "SC_rgb_gdcm_KY.dcm", "SC_rgb_rle_16bit.dcm", "SC_rgb_rle_32bit.dcm"],
}
#: Lossy encodings of SC_rgb_rle.dcm's image by DCMTK, GDCM and CharLS, with the largest grey-level error.
LOSSY_TWINS = {
    "SC_rgb_jls_lossy_line.dcm": 3, "SC_rgb_jls_lossy_sample.dcm": 3, "SC_rgb_dcmtk_+eb+cr.dcm": 3,
    "SC_rgb_dcmtk_+eb+cy+n1.dcm": 10, "SC_rgb_dcmtk_+eb+cy+np.dcm": 10, "SC_rgb_dcmtk_+eb+cy+s2.dcm": 3,
    "SC_rgb_jpeg_dcmtk.dcm": 3, "SC_rgb_jpeg_lossy_gdcm.dcm": 10, "SC_ybr_full_422_uncompressed.dcm": 3,
}


def _file(name: str) -> bytes:
    with open(get_testdata_file(name, download=False), "rb") as handle:
        return handle.read()


@pytest.mark.parametrize("original, twin", [(original, twin) for original, twins in TWINS.items() for twin in twins])
def test_pydicom_files_in_other_syntaxes_decode_like_their_twin(original: str, twin: str) -> None:
    assert np.array_equal(modality_values(_file(twin))[0], modality_values(_file(original))[0])


@pytest.mark.parametrize("twin, bound", list(LOSSY_TWINS.items()))
def test_pydicom_lossy_colour_files_stay_close_to_their_twin(twin: str, bound: int) -> None:
    shown = read_dicom(_file(twin)).image.astype(int)
    assert np.abs(shown - read_dicom(_file("SC_rgb_rle.dcm")).image.astype(int)).max() <= bound


@pytest.mark.parametrize("name", ["JPGExtended.dcm", "GDCMJ2K_TextGBR.dcm", "examples_jpeg2k.dcm", "JPEG2000.dcm",
                                  "693_J2KI.dcm", "image_dfl.dcm", "examples_ybr_color.dcm"])
def test_files_once_refused_or_blamed_on_truncation_now_read(name: str) -> None:
    """12-bit JPEG Extended, JPEG 2000 YBR_RCT and friends: decoded, with the image's own contrast."""
    scan = open_scan(_file(name))
    assert scan.image.std() > 5, f"{name} decoded to a flat image"


def test_jpeg_extended_twelve_bit_file_matches_its_jpeg_2000_twin() -> None:
    """pydicom's JPGExtended.dcm and JPEG2000.dcm hold one 12-bit image: same values up to lossy noise."""
    extended, j2k = modality_values(_file("JPGExtended.dcm"))[0], modality_values(_file("JPEG2000.dcm"))[0]
    assert extended.max() > 255 and np.abs(extended - j2k).mean() < 6


# --------------------------------------------------------------------- what still fails says why
def test_a_file_the_decoders_reject_names_its_syntax_and_the_decoders() -> None:
    """JPEG-lossy.dcm has scan parameters libjpeg refuses (GDCM too): a decoder's refusal, not truncation."""
    with pytest.raises(ScanError) as refused:
        open_scan(_file("JPEG-lossy.dcm"))
    message = str(refused.value)
    assert "JPEG Extended" in message and "12-bit" in message and "pylibjpeg" in message
    assert "truncated" not in message


def _with_syntax(data: bytes, uid: str) -> bytes:
    """``data`` relabelled with transfer syntax ``uid`` (pydicom refuses to write one it does not know)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    meta_length = int.from_bytes(data[140:144], "little")  # the value of (0002,0000) File Meta Group Length
    ds.file_meta.TransferSyntaxUID = uid
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    return data[:132] + meta.getvalue() + data[144 + meta_length:]


@pytest.mark.parametrize("uid, named", [("1.2.840.10008.1.2.4.112", "JPEG XL"),
                                        ("1.2.840.10008.1.2.4.201", "High-Throughput JPEG 2000"),
                                        ("1.2.826.0.1.3680043.99.99", "unknown transfer syntax")])
def test_a_syntax_without_decoder_is_named(uid: str, named: str) -> None:
    data = _with_syntax(encode(ct_slice(), JPEG2000Lossless), uid)
    try:
        scan = open_scan(data)
    except ScanError as refused:
        assert named in str(refused) and "truncated" not in str(refused)
    else:  # HTJ2K: pylibjpeg-openjpeg reads it, and a classic J2K codestream is valid HTJ2K input
        assert named == "High-Throughput JPEG 2000" and scan.image.std() > 5
