"""Pixels as the file means them: every way a supported format records how it is to be shown.

Each expected value is what a viewer shows for the file, worked out by hand from the format's
definition (EXIF orientation, TIFF photometric interpretation, DICOM modality rescale, VOI and
presentation), never read back from our own reader. The files are made here with Pillow,
tifffile and pydicom.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image, ImageOps
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid

from pipeline.constants import LUNG_WINDOW
from pipeline.data import attacked_dicom, open_scan, read_scan
from pipeline.data.dicom import apply_window
from pipeline.errors import ScanError

#: Hounsfield units of air, and what the lung window (1500/-600) shows for it: 59.5 rounds to 60.
AIR_HU, AIR_IN_LUNG_WINDOW = -1000, 60


def marked(height: int = 48, width: int = 64) -> np.ndarray:
    """A dark picture with one bright block in its stored top-left corner (so every turn shows)."""
    image = np.full((height, width), 20, dtype=np.uint8)
    image[2:12, 3:23] = 230
    return image


def exif_with(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


# --- orientation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("format", ["JPEG", "PNG"])
def test_exif_orientation_6_is_turned_upright(tmp_path: Path, format: str) -> None:
    """Orientation 6: the viewer turns the stored picture 90 degrees clockwise."""
    path = tmp_path / f"turned.{format.lower()}"
    Image.fromarray(marked()).save(path, format=format, exif=exif_with(6), quality=100)
    scan = open_scan(path)
    assert scan.image.shape == (64, 48)  # stored 64 wide x 48 high, shown 48 wide x 64 high
    # stored rows 2..11 (the top) become the right-hand columns 36..45; stored columns 3..22 rows 3..22
    assert scan.image[10, 40] > 200 and scan.image[10, 5] < 50 and scan.image[40, 40] < 50
    assert any("orientation 6" in note for note in scan.notes)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_tiff_orientation_matches_what_viewers_show(tmp_path: Path, orientation: int) -> None:
    """All eight TIFF orientations, against Pillow's exif_transpose of the same picture (the viewers' rule)."""
    stored = marked()
    tifffile.imwrite(tmp_path / "o.tif", stored, extratags=[(274, 3, 1, orientation, True)])
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="PNG", exif=exif_with(orientation))
    shown = np.asarray(ImageOps.exif_transpose(Image.open(buffer)))
    assert np.array_equal(read_scan(tmp_path / "o.tif"), shown)


# --- TIFF photometric interpretation ---------------------------------------------------------------


def disc(value_inside: float, value_outside: float, dtype: type, size: int = 48) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2
    return np.where(inside, value_inside, value_outside).astype(dtype)


def test_miniswhite_8_bit_tiff_shows_a_bright_disc_bright(tmp_path: Path) -> None:
    """MinIsWhite: stored 20 is nearly white (235 as shown), stored 230 nearly black (25)."""
    tifffile.imwrite(tmp_path / "w8.tif", disc(20, 230, np.uint8), photometric="miniswhite")
    scan = open_scan(tmp_path / "w8.tif")
    assert scan.image[24, 24] == 235 and scan.image[0, 0] == 25
    assert any("MinIsWhite" in note for note in scan.notes)


def test_miniswhite_16_bit_tiff_shows_a_bright_disc_bright(tmp_path: Path) -> None:
    """16-bit MinIsWhite: stored 1000 shows as 64535, stored 60000 as 5535; the 8-bit scaling keeps that order."""
    tifffile.imwrite(tmp_path / "w16.tif", disc(1000, 60000, np.uint16), photometric="miniswhite")
    image = read_scan(tmp_path / "w16.tif")
    assert image[24, 24] == 255 and image[0, 0] == 0


def test_miniswhite_1_bit_tiff_is_black_ink_on_white(tmp_path: Path) -> None:
    """A bilevel (fax-style) MinIsWhite TIFF: 1 is black ink, 0 white paper."""
    tifffile.imwrite(tmp_path / "w1.tif", disc(1, 0, bool), photometric="miniswhite")
    image = read_scan(tmp_path / "w1.tif")
    assert image[24, 24] == 0 and image[0, 0] == 255


def test_palette_tiff_is_looked_up_in_its_colour_map(tmp_path: Path) -> None:
    """A palette whose entries run white to black: index i shows grey 255 - i."""
    indices = np.add.outer(np.arange(48), np.arange(64)).astype(np.uint8)
    colormap = np.stack([(255 - np.arange(256)) * 257] * 3).astype(np.uint16)  # 16-bit entries, as TIFF stores
    tifffile.imwrite(tmp_path / "p.tif", indices, photometric="palette", colormap=colormap)
    assert np.array_equal(read_scan(tmp_path / "p.tif"), 255 - indices)


def test_ycbcr_tiff_shows_its_luma(tmp_path: Path) -> None:
    samples = np.dstack([np.full((32, 32), 90), np.full((32, 32), 200), np.full((32, 32), 60)]).astype(np.uint8)
    tifffile.imwrite(tmp_path / "y.tif", samples, photometric="ycbcr", subsampling=(1, 1))
    assert np.all(read_scan(tmp_path / "y.tif") == 90)


def test_cmyk_tiff_shows_its_ink(tmp_path: Path) -> None:
    """No colour ink and 100 of black ink: grey 155."""
    inks = np.zeros((32, 32, 4), dtype=np.uint8)
    inks[..., 3] = 100
    tifffile.imwrite(tmp_path / "cmyk.tif", inks, photometric="separated")
    assert np.all(read_scan(tmp_path / "cmyk.tif") == 155)


def test_tiff_alpha_associated_is_not_applied_twice(tmp_path: Path) -> None:
    """Grey 64 at alpha 128: premultiplied (associated) shows 64; unassociated shows 64 x 128/255 = 32."""
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., :3], rgba[..., 3] = 64, 128
    tifffile.imwrite(tmp_path / "assoc.tif", rgba, photometric="rgb", extrasamples=[1])
    tifffile.imwrite(tmp_path / "unassoc.tif", rgba, photometric="rgb", extrasamples=[2])
    assert np.all(read_scan(tmp_path / "assoc.tif") == 64)
    assert np.all(read_scan(tmp_path / "unassoc.tif") == 32)


def test_tiff_without_a_grey_meaning_is_refused_by_name(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "lab.tif", np.zeros((32, 32, 3), dtype=np.uint8), photometric="cielab")
    with pytest.raises(ScanError, match="L\\*a\\*b\\*"):
        read_scan(tmp_path / "lab.tif")


# --- PNG transparency --------------------------------------------------------------------------------


def test_grey_png_with_a_transparent_value_shows_it_as_background(tmp_path: Path) -> None:
    """tRNS marks grey 230 transparent: composited onto black like any alpha; other pixels stay."""
    Image.fromarray(marked()).save(tmp_path / "t.png", transparency=230)
    image = read_scan(tmp_path / "t.png")
    assert image[5, 5] == 0 and image[30, 30] == 20


def test_palette_bmp_with_an_inverted_grey_palette(tmp_path: Path) -> None:
    """An 8-bit palette BMP whose entry i is grey 255 - i: the viewer shows the palette, not the index."""
    indices = np.add.outer(np.arange(48), np.arange(64)).astype(np.uint8)
    picture = Image.fromarray(indices, "P")
    picture.putpalette([level for index in range(256) for level in (255 - index,) * 3])
    picture.save(tmp_path / "p.bmp")
    assert Image.open(tmp_path / "p.bmp").mode == "P"
    assert np.array_equal(read_scan(tmp_path / "p.bmp"), 255 - indices)


# --- DICOM ----------------------------------------------------------------------------------------


def ct_dataset(stored: np.ndarray, *, rescale: bool = True, sop_class: str = CTImageStorage) -> FileDataset:
    """A CT data set holding ``stored`` ([H, W] or [F, H, W]) as unsigned 16-bit."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SamplesPerPixel, ds.PhotometricInterpretation = "CT", 1, "MONOCHROME2"
    frames = stored if stored.ndim == 3 else stored[None]
    if len(frames) > 1 or sop_class == EnhancedCTImageStorage:
        ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "1", "-1024", "HU"
    ds.PixelData = frames.astype("<u2").tobytes()
    return ds


def dicom_bytes(ds: Dataset, **options: object) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, **options)
    return buffer.getvalue()


def hu_slice() -> np.ndarray:
    """Air around a soft-tissue body (40 HU) with two lungs (-800 HU)."""
    image = np.full((48, 48), AIR_HU, dtype=np.int32)
    image[8:40, 6:42] = 40
    image[12:36, 10:22] = image[12:36, 26:38] = -800
    return image


def item(**values: object) -> Dataset:
    element = Dataset()
    for keyword, value in values.items():
        setattr(element, keyword, value)
    return element


def test_enhanced_ct_rescale_from_the_functional_groups() -> None:
    """Enhanced CT whose rescale (-1024, HU) sits only in the shared Pixel Value Transformation Sequence."""
    ds = ct_dataset(np.stack([hu_slice()] * 3) + 1024, rescale=False, sop_class=EnhancedCTImageStorage)
    transform = item(RescaleIntercept="-1024", RescaleSlope="1", RescaleType="HU")
    ds.SharedFunctionalGroupsSequence = Sequence([item(PixelValueTransformationSequence=Sequence([transform]))])
    image = read_scan(dicom_bytes(ds))
    assert image[0, 0] == AIR_IN_LUNG_WINDOW  # stored 24 would show as 234 without the rescale
    assert image[24, 8] == round((40 + 1350) * 255 / 1500)  # soft tissue: 236.3 -> 236


def test_enhanced_ct_per_frame_groups_override_shared_ones() -> None:
    """The shown (middle) frame has its own rescale and window; the shared ones are for the other frames."""
    ds = ct_dataset(np.stack([hu_slice() + 1024, hu_slice() + 2024, hu_slice() + 1024]), rescale=False,
                    sop_class=EnhancedCTImageStorage)
    shared = item(PixelValueTransformationSequence=Sequence([item(RescaleIntercept="-1024", RescaleSlope="1")]),
                  FrameVOILUTSequence=Sequence([item(WindowCenter="40", WindowWidth="400")]))
    own = item(PixelValueTransformationSequence=Sequence([item(RescaleIntercept="-2024", RescaleSlope="1")]),
               FrameVOILUTSequence=Sequence([item(WindowCenter="-600", WindowWidth="1500",
                                                  VOILUTFunction="LINEAR_EXACT")]))
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence([item(), own, item()])
    scan = open_scan(dicom_bytes(ds), window="file")
    assert scan.image[0, 0] == AIR_IN_LUNG_WINDOW and any("frame 2" in note for note in scan.notes)


def test_modality_lut_sequence_is_applied() -> None:
    """A Modality LUT that doubles stored values (first mapped 0), then the file's LINEAR_EXACT window 0..2000."""
    ds = ct_dataset(np.tile(np.arange(0, 960, 20, dtype=np.int32), (48, 1)), rescale=False)
    ds.Modality = "OT"
    ds.ModalityLUTSequence = Sequence([item(LUTDescriptor=[4096, 0, 16], LUTData=list(range(0, 8192, 2)),
                                            ModalityLUTType="US")])
    ds.ModalityLUTSequence[0]["LUTData"].VR = "US"
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = "1000", "2000", "LINEAR_EXACT"
    image = read_scan(dicom_bytes(ds), window="file")
    assert image[0, 25] == round(2 * 500 * 255 / 2000)  # stored 500 -> 1000 -> the window's middle, 127.5 -> 128


def test_monochrome1_shows_low_values_white() -> None:
    ds = ct_dataset(hu_slice() + 1024)
    ds.PhotometricInterpretation = "MONOCHROME1"
    assert read_scan(dicom_bytes(ds))[0, 0] == 255 - AIR_IN_LUNG_WINDOW


def test_presentation_lut_shape_inverse_shows_low_values_white() -> None:
    ds = ct_dataset(hu_slice() + 1024)
    ds.PresentationLUTShape = "INVERSE"
    scan = open_scan(dicom_bytes(ds))
    assert scan.image[0, 0] == 255 - AIR_IN_LUNG_WINDOW and any("INVERSE" in note for note in scan.notes)


def test_file_voi_lut_sequence_is_applied() -> None:
    """A 12-bit VOI LUT declared as 16 bits (as many scanners write it): entry v maps HU -1024 + v to 4095 - v."""
    ds = ct_dataset(hu_slice() + 1024)
    lut = item(LUTDescriptor=[4096, -1024, 16], LUTData=list(range(4095, -1, -1)))
    lut["LUTDescriptor"].VR = "SS"  # its first mapped value is signed (Hounsfield units)
    lut["LUTData"].VR = "US"
    ds.VOILUTSequence = Sequence([lut])
    image = read_scan(dicom_bytes(ds), window="file")
    # air (-1000 HU) is entry 24: 4071 of 4095 -> 253.5 -> 254 (round half to even)
    assert image[0, 0] == round(4071 * 255 / 4095)


def test_sigmoid_window_is_applied() -> None:
    """SIGMOID (PS3.3 C.11.2.1.3.1): 255 / (1 + exp(-4 (x - c) / w)); at the centre 127.5 -> 128."""
    ds = ct_dataset(hu_slice() + 1024)
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = "40", "400", "SIGMOID"
    image = read_scan(dicom_bytes(ds), window="file")
    assert image[24, 8] == 128
    assert image[0, 0] == round(255 / (1 + np.exp(-4 * (AIR_HU - 40) / 400)))  # 0


def test_the_first_of_several_stored_windows_is_used_and_named() -> None:
    ds = ct_dataset(hu_slice() + 1024)
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = ["-600", "40"], ["1500", "400"], "LINEAR_EXACT"
    scan = open_scan(dicom_bytes(ds), window="file")
    assert scan.image[0, 0] == AIR_IN_LUNG_WINDOW and any("2 windows" in note for note in scan.notes)


def test_non_square_pixels_are_drawn_square() -> None:
    ds = ct_dataset(hu_slice() + 1024)
    ds.PixelSpacing = [1.5, 0.75]  # rows 1.5 mm apart, columns 0.75 mm: each pixel twice as tall as wide
    scan = open_scan(dicom_bytes(ds))
    assert scan.image.shape == (96, 48) and any("square pixels" in note for note in scan.notes)


def test_ct_without_rescale_in_twelve_bits_gets_an_offset_note() -> None:
    scan = open_scan(dicom_bytes(ct_dataset(hu_slice() + 1024, rescale=False)))
    assert any("-1024" in note for note in scan.notes)
    assert scan.image[0, 0] == 234  # stored 24 read as 24 HU: washed out, as the note warns
    assert not any("-1024" in note for note in open_scan(dicom_bytes(ct_dataset(hu_slice() + 1024))).notes)


def test_headerless_dicom_is_read_with_a_note() -> None:
    """A data set written without the 128-byte preamble, 'DICM' and file meta reads like the full file."""
    ds = ct_dataset(hu_slice() + 1024)
    full = dicom_bytes(ds, enforce_file_format=True)
    del ds.file_meta
    ds.preamble = None
    bare = dicom_bytes(ds, implicit_vr=True, little_endian=True)
    assert bare[128:132] != b"DICM" and bare[:2] == b"\x08\x00"
    scan = open_scan(bare)
    assert np.array_equal(scan.image, read_scan(full)) and scan.format == "DICOM"
    assert any("no DICOM file header" in note for note in scan.notes)
    assert np.array_equal(read_scan(attacked_dicom(bare, 255 - scan.image)), 255 - scan.image)


def test_dicomdir_and_headerless_non_images_are_named() -> None:
    with pytest.raises(ScanError, match="DICOMDIR"):
        read_scan(get_testdata_file("DICOMDIR"))
    with pytest.raises(ScanError, match="holds no image.*RT Ion Plan"):
        read_scan(get_testdata_file("ExplVR_LitEndNoMeta.dcm"))


def test_attacked_dicom_of_a_sigmoid_file_reads_back() -> None:
    """A non-linear display has no exact inverse: the export stores display levels and still reads back."""
    ds = ct_dataset(hu_slice() + 1024)
    ds.Modality, ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = "MR", "40", "400", "SIGMOID"
    original = dicom_bytes(ds)
    attacked = 255 - read_scan(original)
    exported = attacked_dicom(original, attacked)
    assert np.array_equal(read_scan(exported), attacked)
    assert pydicom.dcmread(io.BytesIO(exported)).RescaleType == "US"


def test_presets_still_use_the_exact_linear_window() -> None:
    """Lung preset on the hand-made slice equals LINEAR_EXACT of its Hounsfield units."""
    expected = apply_window(hu_slice(), *LUNG_WINDOW)
    assert np.array_equal(read_scan(dicom_bytes(ct_dataset(hu_slice() + 1024))), expected)
