"""Every reader path of read_scan on real files, the DICOM windows and export, and bad input."""

from __future__ import annotations

import io
import logging
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image
from pydicom.data import get_testdata_file

from pipeline.constants import LUNG_WINDOW, MEDIASTINAL_WINDOW
from pipeline.data import attacked_dicom, open_scan, preprocess_image, read_scan
from pipeline.data.dicom import apply_window
from pipeline.errors import ScanError, UserInputError

CT_SMALL = get_testdata_file("CT_small.dcm")
CT_PATIENT = "CompressedSamples"  # CT_small's PatientName: must never leak


def gradient(height: int = 48, width: int = 64) -> np.ndarray:
    return (np.add.outer(np.arange(height) * 2, np.arange(width) * 3) % 256).astype(np.uint8)


def ct_hu() -> np.ndarray:
    ds = pydicom.dcmread(CT_SMALL)
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height over a tiny payload: a decompression bomb shape."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


# --- raster formats -----------------------------------------------------------------------------


def test_png_8bit_round_trips_from_path_and_bytes(tmp_path: Path) -> None:
    image = gradient()
    path = tmp_path / "slice.png"
    cv2.imwrite(str(path), image)
    assert np.array_equal(read_scan(path), image)
    assert np.array_equal(read_scan(str(path)), image)
    assert np.array_equal(read_scan(path.read_bytes()), image)
    assert open_scan(path).format == "PNG"


def test_grey_and_three_channel_jpeg_read_as_the_same_grey(tmp_path: Path) -> None:
    image = gradient()
    grey, colour = tmp_path / "grey.jpg", tmp_path / "colour.jpg"
    cv2.imwrite(str(grey), image, [cv2.IMWRITE_JPEG_QUALITY, 100])
    cv2.imwrite(str(colour), cv2.merge([image] * 3), [cv2.IMWRITE_JPEG_QUALITY, 100])
    from_grey, from_colour = read_scan(grey), read_scan(colour)
    assert from_grey.shape == from_colour.shape == image.shape and from_colour.dtype == np.uint8
    assert np.abs(from_grey.astype(int) - image).mean() < 2
    assert np.abs(from_colour.astype(int) - from_grey).max() <= 3


def test_rgb_png_uses_luma_weights(tmp_path: Path) -> None:
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    path = tmp_path / "rgb.png"
    Image.fromarray(rgb, "RGB").save(path)
    assert np.all(read_scan(path) == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50))


def test_rgba_composites_onto_black_and_palette_becomes_grey(tmp_path: Path) -> None:
    rgba = np.full((32, 32, 4), 200, dtype=np.uint8)
    rgba[:, :16, 3], rgba[:, 16:24, 3], rgba[:, 24:, 3] = 0, 255, 51
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    image = read_scan(tmp_path / "rgba.png")
    assert np.all(image[:, :16] == 0) and np.all(image[:, 16:24] == 200) and np.all(image[:, 24:] == 40)

    palette = Image.fromarray(gradient(), "L").convert("P")
    palette.save(tmp_path / "palette.png")
    assert Image.open(tmp_path / "palette.png").mode == "P"
    assert np.abs(read_scan(tmp_path / "palette.png").astype(int) - gradient()).max() <= 2


def test_16bit_png_is_scaled_by_its_own_range(tmp_path: Path) -> None:
    values = np.linspace(1000, 3000, 40 * 40).reshape(40, 40).astype(np.uint16)
    path = tmp_path / "sixteen.png"
    cv2.imwrite(str(path), values)
    scan = open_scan(path)
    assert scan.image.dtype == np.uint8 and scan.image.min() == 0 and scan.image.max() == 255
    assert np.all(np.diff(scan.image.ravel().astype(int)) >= 0)
    assert any("own range" in note for note in scan.notes)


def test_tiff_float_16bit_and_stack(tmp_path: Path) -> None:
    unit = gradient().astype(np.float32) / 255.0
    tifffile.imwrite(tmp_path / "unit.tif", unit)
    assert np.array_equal(read_scan(tmp_path / "unit.tif"), gradient())

    hounsfield = np.linspace(-1000, 400, 48 * 64).reshape(48, 64).astype(np.float32)
    tifffile.imwrite(tmp_path / "hu.tiff", hounsfield)
    image = read_scan(tmp_path / "hu.tiff")
    assert image[0, 0] == 0 and image[-1, -1] == 255

    tifffile.imwrite(tmp_path / "sixteen.tif", (gradient().astype(np.uint16) * 16))
    assert read_scan(tmp_path / "sixteen.tif").max() == 255

    stack = np.stack([np.full((32, 32), value, dtype=np.uint8) for value in (10, 20, 30)])
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    scan = open_scan(tmp_path / "stack.tif")
    assert np.all(scan.image == 20) and any("page 2" in note for note in scan.notes)

    planar = np.stack([np.full((32, 32), value, dtype=np.uint8) for value in (200, 100, 50)])
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    assert np.all(read_scan(tmp_path / "planar.tif") == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50))

    broken = hounsfield.copy()
    broken[3, 3] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", broken)
    with pytest.raises(ScanError, match="NaN"):
        read_scan(tmp_path / "nan.tif")


def test_bmp(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "slice.bmp"), gradient())
    assert np.array_equal(read_scan(tmp_path / "slice.bmp"), gradient())


# --- DICOM --------------------------------------------------------------------------------------


def test_dicom_ct_uses_hounsfield_units_and_the_chosen_window() -> None:
    hu = ct_hu()
    assert np.array_equal(read_scan(CT_SMALL), apply_window(hu, *LUNG_WINDOW))
    assert np.array_equal(read_scan(CT_SMALL, window="mediastinal"), apply_window(hu, *MEDIASTINAL_WINDOW))
    assert np.array_equal(read_scan(CT_SMALL, window=(400, 50)), apply_window(hu, 400, 50))
    assert not np.array_equal(read_scan(CT_SMALL), read_scan(CT_SMALL, window="mediastinal"))
    with open(CT_SMALL, "rb") as handle:
        assert np.array_equal(read_scan(handle.read()), read_scan(CT_SMALL))


def test_dicom_file_window_and_its_fallback(tmp_path: Path) -> None:
    scan = open_scan(CT_SMALL, window="file")  # CT_small stores no window: full range, with a note
    hu = ct_hu()
    assert scan.image.min() == 0 and scan.image.max() == 255
    assert any("no usable window" in note for note in scan.notes)
    ds = pydicom.dcmread(CT_SMALL)
    ds.WindowWidth, ds.WindowCenter = 350, 40
    ds.save_as(tmp_path / "windowed.dcm")
    # the file's window is DICOM's LINEAR function (PS3.3 C.11.2.1.2.1): centre - 0.5, width - 1
    linear = np.clip(np.rint(((hu - (40 - 0.5)) / (350 - 1) + 0.5) * 255), 0, 255).astype(np.uint8)
    assert np.array_equal(read_scan(tmp_path / "windowed.dcm", window="file"), linear)


def test_non_ct_dicom_falls_back_to_its_own_window_and_rle_decodes() -> None:
    scan = open_scan(get_testdata_file("MR_small_RLE.dcm"))
    assert scan.image.shape == (64, 64) and any("not CT" in note for note in scan.notes)
    assert np.array_equal(scan.image, read_scan(get_testdata_file("MR_small.dcm")))


def test_multi_frame_dicom_takes_the_middle_frame_and_says_so(tmp_path: Path) -> None:
    ds = pydicom.dcmread(CT_SMALL)
    base = ds.pixel_array
    ds.NumberOfFrames = 3
    ds.PixelData = np.stack([base, base + 200, base + 400]).astype(np.int16).tobytes()
    ds.save_as(tmp_path / "multi.dcm")
    scan = open_scan(tmp_path / "multi.dcm")
    assert np.array_equal(scan.image, apply_window(ct_hu() + 200, *LUNG_WINDOW))
    assert any("frame 2" in note and "3 frames" in note for note in scan.notes)


def test_dicom_failures_are_clear_and_never_show_patient_tags(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    messages = []
    with pytest.raises(ScanError, match="JPEG Extended.*could not be decoded by the installed decoders") as compressed:
        read_scan(get_testdata_file("JPEG-lossy.dcm"))
    with pytest.raises(ScanError, match="holds no image") as no_pixels:
        read_scan(get_testdata_file("rtplan.dcm"))
    with pytest.raises(ScanError, match="truncated: its Pixel Data holds 8130 bytes") as truncated:
        read_scan(get_testdata_file("MR_truncated.dcm"))
    ds = pydicom.dcmread(CT_SMALL)
    del ds.PixelData
    ds.save_as(tmp_path / "headers_only.dcm")
    with pytest.raises(ScanError, match="CT Image Storage object without Pixel Data") as headers_only:
        read_scan(tmp_path / "headers_only.dcm")
    assert "truncated" not in str(headers_only.value)
    with open(CT_SMALL, "rb") as handle:
        cut = handle.read()[:200]
    with pytest.raises(ScanError) as cut_short:
        read_scan(cut)
    messages += [str(error.value) for error in (compressed, no_pixels, truncated, headers_only, cut_short)]
    messages += list(open_scan(CT_SMALL, window="file").notes)
    messages += [record.getMessage() for record in caplog.records]
    assert messages and not any(CT_PATIENT in message for message in messages)


def _ct_without(*keywords: str, **values: object) -> bytes:
    """CT_small with ``keywords`` deleted and ``values`` set, as Part 10 bytes."""
    ds = pydicom.dcmread(CT_SMALL)
    for keyword in keywords:
        delattr(ds, keyword)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("keywords, values, says", [
    (("PixelData",), {}, "CT Image Storage object without Pixel Data: it describes an image but does not hold"),
    (("PixelData",), {"DataSetTrailingPadding": b"\0" * 8}, "the file is complete"),
    (("Rows",), {}, "does not state the image size (Rows missing or 0)"),
    (("Rows", "Columns"), {}, "(Rows and Columns missing or 0)"),
    ((), {"Columns": 0}, "(Columns missing or 0)"),
    (("BitsAllocated",), {}, "lacks Bits Allocated"),
    (("PhotometricInterpretation",), {}, "lacks Photometric Interpretation"),
    (("SamplesPerPixel", "PixelRepresentation"), {}, "lacks Samples per Pixel, Pixel Representation"),
    (("BitsStored",), {}, "lacks Bits Stored"),
    ((), {"SamplesPerPixel": 2}, "Samples per Pixel is 2"),
    ((), {"BitsAllocated": 12}, "Bits Allocated is 12"),
    ((), {"BitsStored": 20}, "Bits Stored is 20, outside 1..Bits Allocated (16)"),
    ((), {"PhotometricInterpretation": "GREYISH"}, "Photometric Interpretation 'GREYISH' is not one DICOM defines"),
    ((), {"PhotometricInterpretation": "RGB"}, "Photometric Interpretation RGB does not fit 1 sample(s)"),
    ((), {"PhotometricInterpretation": "CMYK"}, "colour model DICOM retired"),
    ((), {"Rows": 256}, "truncated: its Pixel Data holds 32768 bytes, where 1 frame(s) of 128x256"),
], ids=lambda value: str(value)[:40])
def test_each_incomplete_dicom_is_refused_for_what_it_lacks(keywords: tuple, values: dict, says: str) -> None:
    """Neighbours of 'complete image without Pixel Data' and 'Pixel Data without Rows': each its own message."""
    with pytest.raises(ScanError) as refused:
        read_scan(_ct_without(*keywords, **values))
    message = str(refused.value)
    assert says in message, message
    wrong = {"truncated": "truncated" not in says, "icon or thumbnail": True, "0x0": True}
    assert not [text for text, absent in wrong.items() if absent and text in message], message
    assert CT_PATIENT not in message


def test_attacked_dicom_is_new_deidentified_and_maps_back_exactly() -> None:
    with open(CT_SMALL, "rb") as handle:
        original = handle.read()
    source = pydicom.dcmread(io.BytesIO(original))
    attacked = 255 - read_scan(original)
    exported = attacked_dicom(original, attacked, "lung")

    assert np.array_equal(read_scan(exported), attacked)
    assert np.array_equal(read_scan(exported, window="file"), attacked)
    out = pydicom.dcmread(io.BytesIO(exported))
    assert "ADVERSARIAL" in out.SeriesDescription.upper()
    assert out.PatientName == "" and out.PatientID == "" and out.PatientIdentityRemoved == "YES"
    assert CT_PATIENT.encode() not in exported and str(source.PatientID).encode() not in exported
    for uid in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        assert getattr(out, uid) != getattr(source, uid)
    hu = out.pixel_array * float(out.RescaleSlope) + float(out.RescaleIntercept)
    width, level = LUNG_WINDOW
    assert hu.min() >= level - width / 2 - 1e-6 and hu.max() <= level + width / 2 + 1e-6
    assert out.Modality == "CT" and out.RescaleType == "HU"
    with pytest.raises(UserInputError):
        attacked_dicom(original, attacked.astype(np.float32), "lung")


def test_unknown_window_is_refused() -> None:
    with pytest.raises(UserInputError, match="lung, mediastinal, file"):
        read_scan(CT_SMALL, window="bone")
    with pytest.raises(UserInputError, match="positive"):
        read_scan(CT_SMALL, window=(0, 40))


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jpg", b"", "empty"),
        ("notes.jpg", b"patient notes, not an image\n" * 4, "Accepted formats: JPEG, PNG"),
        ("bomb.png", png_header_only(10_000, 10_000), "megapixels"),
        ("huge.png", png_header_only(60_000, 60_000), "enormous|megapixels"),
    ],
)
def test_bad_bytes_give_clear_errors(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ScanError, match=message) as error:
        read_scan(path)
    assert name in str(error.value)


def test_truncated_images_are_refused_in_our_words_not_the_decoders(tmp_path: Path) -> None:
    for suffix in (".jpg", ".png", ".bmp"):
        good = tmp_path / f"good{suffix}"
        cv2.imwrite(str(good), np.random.default_rng(0).integers(0, 255, (128, 128), dtype=np.uint8))
        data = good.read_bytes()
        with pytest.raises(ScanError, match="damaged or truncated") as error:
            read_scan(data[: len(data) // 2])
        assert "ends early" in str(error.value)
        assert "bytes not processed" not in str(error.value) and "image file is" not in str(error.value)


@pytest.mark.parametrize(
    ("width", "height", "message"), [(1, 1, "at least 16"), (20_000, 20, "longer than wide")]
)
def test_absurd_sizes_are_refused(tmp_path: Path, width: int, height: int, message: str) -> None:
    path = tmp_path / "odd.png"
    cv2.imwrite(str(path), np.zeros((height, width), dtype=np.uint8))
    with pytest.raises(ScanError, match=message):
        read_scan(path)


def test_other_formats_missing_files_and_folders(tmp_path: Path) -> None:
    Image.fromarray(gradient()).save(tmp_path / "anim.gif")
    with pytest.raises(ScanError, match="GIF images are not accepted"):
        read_scan(tmp_path / "anim.gif")
    with pytest.raises(ScanError, match="no such file"):
        read_scan(tmp_path / "missing.png")
    with pytest.raises(ScanError, match="folder"):
        read_scan(tmp_path)


# --- preprocessing ------------------------------------------------------------------------------


def test_preprocess_pads_wide_slices_without_distorting_them() -> None:
    wide = np.zeros((512, 801), dtype=np.uint8)
    cv2.circle(wide, (400, 256), 120, 255, -1)
    out = preprocess_image(wide, 64)
    assert out.shape == (64, 64) and out.dtype == np.uint8
    rows, cols = np.nonzero(out > 127)
    assert abs((rows.max() - rows.min()) - (cols.max() - cols.min())) <= 1  # still a circle
    assert out[0].max() == 0 and out[-1].max() == 0  # padding is background


def test_preprocess_pads_with_the_background_and_enlarges_small_scans() -> None:
    air = np.full((40, 60), 60, dtype=np.uint8)
    air[10:30, 20:40] = 200
    out = preprocess_image(air, 120)
    assert out.shape == (120, 120) and out[0, 0] == 60 and out[60, 60] == 200
    with pytest.raises(UserInputError):
        preprocess_image(air.astype(np.float32), 64)
    with pytest.raises(UserInputError, match="image_size"):
        preprocess_image(air, 4)
