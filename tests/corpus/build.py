"""Write the hostile-input corpus: broken scans, bombs, tampered checkpoints and zips, absurd settings.

Every input is made here by code, into a folder the test gives, so no binary is committed and
each file says in code what is wrong with it. Each ``CorpusItem`` names the kind of entry point
it targets and the outcome a correct product gives:

- ``REFUSED``: the entry point raises a ``UserInputError`` whose message says what is wrong
  (the CLI exits non-zero with an ``error: ...`` line and no traceback);
- ``SKIPPED``: a dataset load leaves the file out and says why in its report;
- ``ACCEPTED``: odd but legitimate input (16-bit TIFF, palette PNG, multi-frame DICOM) is read.

Two kinds of secret make leaks and code execution visible: ``PATIENT_MARKERS`` fill the patient
attributes of some DICOM files and must never appear in any message, note, log, report or
export; the pickles carry a ``__reduce__`` that would create ``item.forbidden`` files if anything
ever unpickled them. Zips with path tricks list where their entries would land in ``forbidden``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import stat
import struct
import uuid
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Final, Mapping

import cv2
import numpy as np
import pydicom
import tifffile
import torch
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (
    JPEG2000,
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    generate_uid,
)
from safetensors.torch import save as safetensors_bytes

from pipeline.data import load_dataset, split_dataset
from pipeline.models import build_model
from tests.dicom_studies import MARK as STUDY_MARK
from tests.dicom_studies import make_dicom_studies

# kinds of entry point
SCAN: Final[str] = "scan"
#: Real DICOM files nobody here wrote by hand (pydicom's test set) and a CT slice re-encoded in every
#: transfer syntax: read through the scan readers only (the dashboard's upload is the same reader).
REAL: Final[str] = "real-file"
FOLDER: Final[str] = "dataset-folder"
CHECKPOINT: Final[str] = "checkpoint"
RUN_ZIP: Final[str] = "run-zip"
CLI: Final[str] = "cli-args"
CONFIG: Final[str] = "config"
KINDS: Final[tuple[str, ...]] = (SCAN, REAL, FOLDER, CHECKPOINT, RUN_ZIP, CLI, CONFIG)

# outcome classes
REFUSED: Final[str] = "refused with a clear message"
SKIPPED: Final[str] = "handled skip"
ACCEPTED: Final[str] = "accepted"
OUTCOMES: Final[tuple[str, ...]] = (REFUSED, SKIPPED, ACCEPTED)

#: Patient attributes written into the "patient" DICOMs; the values are unique marker strings.
PATIENT_TAGS: Final[dict[str, str]] = {
    "PatientName": "QZXPATNAME^QZXGIVEN",
    "PatientID": "QZXPID4711",
    "PatientBirthDate": "19110311",
    "PatientAddress": "QZXADDRESS 7 Hidden Lane",
    "PatientComments": "QZXCOMMENT smoker",
    "PatientTelephoneNumbers": "QZXPHONE5550199",
    "InstitutionName": "QZXINSTITUTE General",
    "InstitutionAddress": "QZXINSTADDR Hospital Road",
    "ReferringPhysicianName": "QZXREFDOC^House",
    "PerformingPhysicianName": "QZXPERFDOC^Grey",
    "OperatorsName": "QZXOPERATOR^Tech",
    "AccessionNumber": "QZXACC99",
    "StudyID": "QZXSTUDYID",
    "StudyDescription": "QZXSTUDYDESC chest",
    "SeriesDescription": "QZXSERIESDESC axial",
    "OtherPatientIDs": "QZXOTHERID",
    # invalid for their VRs: a parser that complains about them must not quote them
    "PatientSex": "QZXSEXWAYTOOLONGFORCS",
    "PatientAge": "QZXAGE",
}
#: Private tag (group 0x0011) with a marker, as vendors store extra patient details.
PRIVATE_MARKER: Final[str] = "QZXPRIVATE"
PATIENT_MARKERS: Final[tuple[str, ...]] = (
    "QZXPATNAME", "QZXGIVEN", "QZXPID4711", "19110311", "QZXADDRESS", "QZXCOMMENT", "QZXPHONE",
    "QZXINSTITUTE", "QZXINSTADDR", "QZXREFDOC", "QZXPERFDOC", "QZXOPERATOR", "QZXACC99", "QZXSTUDYID",
    "QZXSTUDYDESC", "QZXSERIESDESC", "QZXOTHERID", "QZXSEX", "QZXAGE", PRIVATE_MARKER,
    STUDY_MARK,  # every Patient ID, name and accession number of the DICOM study tree
)

#: Settings that make an accidentally accepted training finish in seconds (never meant to run).
TINY_TRAINING: Final[dict[str, object]] = {
    "data": "synthetic", "arch": "resnet18", "image_size": 32, "count": 12, "epochs": 1, "batch_size": 4,
    "eval_size": 8, "val_steps": 1, "device": "cpu", "augment": False,
}
#: Folder under the corpus root that the command lines use as ``--runs-dir``: the one place inside the
#: corpus where an entry point may write (a refused training may leave a run marked failed there).
CLI_RUNS: Final[str] = "cli-runs"
#: Files larger than this are only given to entry points by path (bytes would cost the memory).
BYTES_LIMIT: Final[int] = 64 << 20


@dataclass(frozen=True)
class CorpusItem:
    """One hostile input: where it is, which entry points take it, and what they should do.

    ``expect`` overrides ``expected`` for named entry points (e.g. a run whose best checkpoint
    is fine but whose resume state is a pickle). ``args`` are the command-line arguments of
    ``cli-args`` items. ``forbidden`` paths must not exist after any entry point ran.
    """

    name: str
    path: Path
    kinds: tuple[str, ...]
    expected: str
    about: str
    args: tuple[str, ...] = ()
    markers: tuple[str, ...] = ()
    forbidden: tuple[Path, ...] = ()
    reason: str = ""
    expect: Mapping[str, str] = field(default_factory=dict)

    def expected_at(self, entry_point: str) -> str:
        """The outcome a correct product gives at ``entry_point``."""
        return self.expect.get(entry_point, self.expected)


class _Reducer:
    """Pickles to a call of ``open(marker, "w")``: unpickling it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


# ---------------------------------------------------------------------------------- pixels
def _phantom(size: int = 64, seed: int = 0) -> np.ndarray:
    """A small grey chest-like picture: bright body, two dark lungs, a little noise."""
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    image = np.where((xx / 0.42) ** 2 + (yy / 0.32) ** 2 <= 1, 150.0, 10.0)
    for side in (-0.17, 0.17):
        image = np.where(((xx - side) / 0.12) ** 2 + (yy / 0.2) ** 2 <= 1, 40.0, image)
    image += np.random.default_rng(seed).normal(0, 4, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _encode(image: np.ndarray, suffix: str, *params: int) -> bytes:
    ok, data = cv2.imencode(suffix, image, list(params))
    assert ok, suffix
    return data.tobytes()


def _pil_bytes(picture: Image.Image, format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=format, **options)
    return buffer.getvalue()


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` grey pixels (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 4096, 9)) + _png_chunk(b"IEND", b""))


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) is patched to declare a huge size."""
    data = bytearray(_encode(_phantom(), ".jpg"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _tiff_declaring(path: Path, side: int) -> None:
    """A small TIFF whose ImageWidth/ImageLength tags are patched to ``side``."""
    tifffile.imwrite(path, _phantom())
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tiff:
        tags = tiff.pages[0].tags
        places = [(tags[name].valueoffset, tags[name].dtype) for name in ("ImageWidth", "ImageLength")]
    for offset, dtype in places:
        data[offset : offset + (2 if int(dtype) == 3 else 4)] = struct.pack("<H" if int(dtype) == 3 else "<I", side)
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------------- DICOM
def _ct(pixels_hu: np.ndarray, *, patient: bool = False, modality: str = "CT") -> FileDataset:
    """A CT slice (or ``[F, H, W]`` frames) in Hounsfield units as stored = HU + 1024, 16-bit."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = modality
    frames = pixels_hu if pixels_hu.ndim == 3 else pixels_hu[None]
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
    ds.PixelData = (frames.astype(np.int32) + 1024).clip(0, 65535).astype("<u2").tobytes()
    if patient:
        for keyword, value in PATIENT_TAGS.items():
            setattr(ds, keyword, value)
        block = ds.private_block(0x0011, "QZX VENDOR", create=True)
        block.add_new(0x10, "LO", PRIVATE_MARKER + " extra patient notes")
    return ds


def _hu_slice(size: int = 64) -> np.ndarray:
    """The phantom as Hounsfield units: air -1000, lungs about -800, body about 40."""
    return np.interp(_phantom(size).astype(np.float64), [0, 40, 150, 255], [-1000, -800, 40, 400]).astype(np.int16)


def _dicom_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _decodable(dicom_path: str, *, besides: str = "") -> bool:
    """Whether an installed decoder (other than plugin ``besides``) handles this file's transfer syntax.

    This decides the expectation of the compressed test files: with no decoder they must be
    refused with advice, with one they must be read. Pillow cannot decode 12-bit JPEG, hence
    ``besides="pillow"`` for that file.
    """
    syntax = pydicom.dcmread(dicom_path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if not syntax.is_compressed:
        return True
    try:
        return bool(set(get_decoder(syntax).available_plugins) - {besides})
    except NotImplementedError:
        return False


# ------------------------------------------------------------------------------------ runs
def _run_config(**changes: object) -> dict[str, object]:
    return {**TINY_TRAINING, "strategy": "standard", **changes}


def _trained_config() -> dict[str, object]:
    """The config a finished tiny run stores: settings, the data's fingerprint and the split.

    Rendered without the on-disk cache, so building the corpus writes nothing outside ``root``.
    """
    dataset = load_dataset("synthetic", image_size=32, count=12, seed=0, cache=False)
    split = split_dataset(dataset, val_fraction=0.15, test_fraction=0.15, seed=0).to_dict()
    return {**_run_config(), "format": "lunglab-run", "num_classes": 3, "classes": ["benign", "malignant", "normal"],
            "dataset": {"fingerprint": dataset.fingerprint, "size": len(dataset), "is_synthetic": True},
            "split": {side: split[side] for side in ("train", "val", "test", "strategy", "leaky", "seed")}}


#: One epoch's metrics line as a finished tiny training writes it.
METRICS_LINE: Final[dict[str, object]] = {
    "epoch": 1, "lr": 0.025, "train_loss": 1.1, "train_batch_acc": 0.375, "train_acc": 0.375,
    "train_robust_acc": 0.25, "val_acc": 0.5, "val_robust_acc": 0.5, "val_loss": 1.05, "eps": 4 / 255,
    "time_s": 7.3, "images_per_s": 1.7, "train_images": 8, "best": True,
}


def _write_run(run_dir: Path, config: bytes, model: bytes | None, *, last: bytes | None = None,
               metrics: bytes | None = None, status: bytes | None = None) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_bytes(config)
    (run_dir / "status.json").write_bytes(status or json.dumps({"phase": "done", "message": "finished"}).encode())
    (run_dir / "metrics.jsonl").write_bytes(metrics or (json.dumps(METRICS_LINE) + "\n").encode())
    if model is not None:
        (run_dir / "model.safetensors").write_bytes(model)
    if last is not None:
        (run_dir / "last.safetensors").write_bytes(last)
    return run_dir


def _safetensors_header(header: dict, payload: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + payload


def _zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]], *,
         compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in entries:
            archive.writestr(name, data, compress_type=compression)
    return path


def _symlink_entry(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix, so that the mode bits below mean "symbolic link"
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _lying_zip(path: Path, real_size: int, declared: int, rest: list[tuple[str, bytes]]) -> Path:
    """A model entry declaring ``declared`` bytes that inflates to ``real_size`` zeros (sizes patched).

    The lying entry is written first, so its local and central headers are the first of each.
    """
    _zip(path, [("run/model.safetensors", b"\0" * real_size), *rest], compression=zipfile.ZIP_DEFLATED)
    data = bytearray(path.read_bytes())
    real = struct.pack("<I", real_size)
    for offset in (data.index(b"PK\x03\x04") + 22, data.index(b"PK\x01\x02") + 24):
        assert data[offset : offset + 4] == real
        data[offset : offset + 4] = struct.pack("<I", declared)
    path.write_bytes(bytes(data))
    return path


def _flag_encrypted(path: Path) -> Path:
    """Set the 'encrypted' bit of the first entry (zipfile clears flags it is given when writing)."""
    data = bytearray(path.read_bytes())
    for offset in (data.index(b"PK\x03\x04") + 6, data.index(b"PK\x01\x02") + 8):
        data[offset] |= 0x1
    path.write_bytes(bytes(data))
    return path


# ---------------------------------------------------------------------------------- corpus
def build_corpus(root: Path) -> list[CorpusItem]:
    """Write every corpus input under ``root`` (created) and describe each one."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # pydicom and zipfile warn about the invalid values written on purpose
        warnings.simplefilter("ignore", UserWarning)
        scans = _scan_items(root / "scans")
        items = [*scans, *_real_items(root / "real"), *_folder_items(root / "folders", scans),
                 *_checkpoint_items(root)]
        items += _cli_items(root / "cli", items)
    names = [item.name for item in items]
    assert len(names) == len(set(names)), "corpus item names must be unique"
    return items


def _scan_items(folder: Path) -> list[CorpusItem]:
    folder.mkdir(parents=True)
    items: list[CorpusItem] = []

    def add(name: str, data: bytes | None, expected: str, about: str, *, reason: str = "",
            markers: tuple[str, ...] = (), forbidden: tuple[Path, ...] = ()) -> Path:
        path = folder / name
        if data is not None:
            path.write_bytes(data)
        items.append(CorpusItem(name, path, (SCAN, FOLDER), expected, about, markers=markers,
                                forbidden=forbidden, reason=reason))
        return path

    grey = _phantom()
    jpeg, png = _encode(grey, ".jpg"), _encode(grey, ".png")
    ct = _dicom_bytes(_ct(_hu_slice()))
    pixel_start = ct.rindex(b"\xe0\x7f\x10\x00")  # the (7FE0,0010) Pixel Data element

    # empty and truncated files
    add("empty.jpg", b"", REFUSED, "zero-byte JPEG", reason="empty")
    add("empty.png", b"", REFUSED, "zero-byte PNG", reason="empty")
    add("empty.dcm", b"", REFUSED, "zero-byte DICOM", reason="empty")
    add("truncated.jpg", jpeg[: len(jpeg) // 2], REFUSED, "JPEG cut in half", reason="truncated")
    add("truncated.png", png[: len(png) // 2], REFUSED, "PNG cut in half")
    add("truncated-pixels.dcm", ct[: pixel_start + 2000], REFUSED, "CT DICOM cut inside its pixel data")
    add("truncated-header.dcm", ct[:200], REFUSED, "DICOM cut inside its header")
    ztxt = _png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"A" * (16 << 20), 9))
    add("ztxt-bomb.png", png[:33] + ztxt + png[33:], REFUSED, "PNG with a text chunk inflating to 16 MB")
    add("bad-crc.png", png[:40] + bytes([png[40] ^ 0xFF]) + png[41:], REFUSED, "PNG with a damaged chunk (CRC)")

    # decompression bombs and absurd sizes
    add("bomb-1e10px.png", _png_declaring(100_000, 100_000), REFUSED,
        "PNG of 250 bytes declaring 100000x100000 pixels", reason="decompression bomb")
    add("bomb-64mp-valid.png", _encode(np.zeros((8000, 8000), np.uint8), ".png"), REFUSED,
        "valid all-black 8000x8000 PNG (64 MP, 60 kB)", reason="megapixels")
    add("bomb-sof.jpg", _jpeg_declaring(65_500, 65_500), REFUSED, "JPEG whose frame header declares 65500x65500")
    _tiff_declaring(folder / "bomb.tif", 60_000)
    add("bomb.tif", None, REFUSED, "TIFF whose tags declare 60000x60000")
    bomb = _ct(_hu_slice(16))
    bomb.Rows = bomb.Columns = 65_535
    add("bomb.dcm", _dicom_bytes(bomb), REFUSED, "DICOM declaring 65535x65535 with 512 bytes of pixels",
        reason="megapixels")
    add("tiny-1x1.png", _encode(np.full((1, 1), 128, np.uint8), ".png"), REFUSED, "1x1 PNG", reason="1x1")
    add("strip-20000x20.png", _encode(np.zeros((20, 20_000), np.uint8), ".png"), REFUSED, "20000x20 PNG",
        reason="20000x20")
    huge = folder / "huge-sparse-600MB.jpg"
    with open(huge, "wb") as handle:
        handle.truncate(600 << 20)  # sparse: costs no disk, but stat() says 600 MB
    add(huge.name, None, REFUSED, "600 MB file (sparse) named .jpg", reason="MB")

    # odd but legitimate depths and colour models
    add("png16.png", _encode((grey.astype(np.uint16) * 257), ".png"), ACCEPTED, "16-bit grey PNG")
    add("tiff16.tif", _tiff(folder / "tiff16.tif", grey.astype(np.uint16) * 64 + 3000), ACCEPTED,
        "16-bit TIFF with a 12-bit range")
    add("tiff-float-hu.tif", _tiff(folder / "tiff-float-hu.tif", _hu_slice().astype(np.float32)), ACCEPTED,
        "float32 TIFF in Hounsfield units")
    add("tiff-stack.tif", _tiff(folder / "tiff-stack.tif", np.stack([grey] * 3), photometric="minisblack"),
        ACCEPTED, "3-page TIFF stack")
    nan = grey.astype(np.float32) / 255
    nan[5, 5] = np.nan
    add("tiff-float-nan.tif", _tiff(folder / "tiff-float-nan.tif", nan), REFUSED, "float TIFF with a NaN",
        reason="NaN")
    inf = grey.astype(np.float32)
    inf[0, 0] = np.inf
    add("tiff-float-inf.tif", _tiff(folder / "tiff-float-inf.tif", inf), REFUSED, "float TIFF with +inf",
        reason="infinite")
    add("tiff-7-channels.tif", _tiff(folder / "tiff-7-channels.tif", np.stack([grey] * 7, axis=-1),
                                     planarconfig="contig", extrasamples=[0] * 6), REFUSED,
        "TIFF with 7 samples per pixel")
    add("tiff-complex.tif", _tiff(folder / "tiff-complex.tif", grey.astype(np.complex64)), REFUSED,
        "complex-valued TIFF")
    add("constant16.png", _encode(np.full((64, 64), 4000, np.uint16), ".png"), ACCEPTED,
        "16-bit PNG of one value")
    picture = Image.fromarray(grey)
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 200)])
    add("rgba.png", _pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG"), ACCEPTED, "RGBA PNG")
    add("palette.png", _pil_bytes(picture.convert("P"), "PNG"), ACCEPTED, "palette PNG")
    add("palette-transparent.png", _pil_bytes(picture.convert("P"), "PNG", transparency=0), ACCEPTED,
        "palette PNG with a transparent colour")
    add("bilevel.png", _pil_bytes(picture.convert("1"), "PNG"), ACCEPTED, "1-bit PNG")
    add("cmyk.jpg", _pil_bytes(picture.convert("CMYK"), "JPEG"), ACCEPTED, "CMYK JPEG")
    add("rgb.bmp", _encode(cv2.merge([grey, grey, grey]), ".bmp"), ACCEPTED, "RGB BMP")

    # not images, or images of formats we refuse
    add("text.jpg", b"this is not an image, it is a note\n" * 20, REFUSED, "text file named .jpg")
    add("page.png", b"<!DOCTYPE html><html><body><script>alert('x')</script></body></html>", REFUSED,
        "HTML with a script named .png")
    add("vector.png", b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect width="64" '
        b'height="64"/></svg>', REFUSED, "SVG with an onload handler named .png")
    add("animation.png", _pil_bytes(picture, "GIF"), REFUSED, "GIF named .png", reason="GIF")
    add("webp.jpg", _pil_bytes(picture, "WEBP"), REFUSED, "WebP named .jpg", reason="WEBP")
    add("j2k.png", _pil_bytes(picture, "JPEG2000"), REFUSED, "raw JPEG 2000 named .png", reason="JPEG2000")
    marker = folder.parent / "PICKLE-RAN-scan-pt"
    torch.save({"state_dict": _Reducer(marker)}, folder / "model.pt")
    add("model.pt", None, REFUSED, "torch.save pickle whose __reduce__ creates a file", forbidden=(marker,))
    link = folder / "passwd-link.jpg"
    link.symlink_to("/etc/passwd")
    add(link.name, None, REFUSED, "symbolic link to /etc/passwd named .jpg")
    # not regular files: reading a pipe blocks forever, /dev/zero never ends (no dataset folder: never listed)
    os.mkfifo(folder / "fifo.jpg")
    (folder / "dev-zero.jpg").symlink_to("/dev/zero")
    for name, about in (("fifo.jpg", "a named pipe (FIFO) named .jpg"), ("dev-zero.jpg", "a link to /dev/zero")):
        items.append(CorpusItem(name, folder / name, (SCAN,), REFUSED, about, reason="not a regular file"))

    # DICOM
    add("rtplan-no-pixels.dcm", Path(get_testdata_file("rtplan.dcm", download=False)).read_bytes(), REFUSED,
        "RT Plan DICOM: no pixel data at all", reason="no image")
    no_pixels = _ct(_hu_slice())
    del no_pixels.PixelData
    add("ct-no-pixels.dcm", _dicom_bytes(no_pixels), REFUSED, "CT Image Storage without Pixel Data",
        reason="pixel data")
    add("multiframe.dcm", _dicom_bytes(_ct(np.stack([_hu_slice(64)] * 5))), ACCEPTED, "5-frame CT DICOM")
    # pydicom's bundled test files (never downloaded): compressed ones are read when a decoder is installed
    for name, source, about, besides in (
        ("jpeg2000.dcm", "JPEG2000.dcm", "DICOM, JPEG 2000 transfer syntax", ""),
        ("jpegls.dcm", "MR_small_jpeg_ls_lossless.dcm", "DICOM, JPEG-LS lossless transfer syntax", ""),
        ("jpeg-extended-12bit.dcm", "JPGExtended.dcm", "DICOM, 12-bit JPEG extended transfer syntax", "pillow"),
        ("rle.dcm", "MR_small_RLE.dcm", "DICOM, RLE lossless transfer syntax", ""),
        ("deflated.dcm", "image_dfl.dcm", "DICOM, deflated explicit VR transfer syntax", ""),
        ("big-endian.dcm", "MR_small_bigendian.dcm", "DICOM, explicit VR big endian", ""),
        ("palette-colour.dcm", "examples_palette.dcm", "PALETTE COLOR DICOM", ""),
    ):
        path = Path(get_testdata_file(source, download=False))
        add(name, path.read_bytes(), ACCEPTED if _decodable(str(path), besides=besides) else REFUSED, about)
    add("rtdose-10x10.dcm", Path(get_testdata_file("rtdose.dcm", download=False)).read_bytes(), REFUSED,
        "RT Dose: 15 frames of 10x10 pixels", reason="10x10")
    add("no-preamble.dcm", Path(get_testdata_file("no_meta.dcm", download=False)).read_bytes(), REFUSED,
        "DICOM without preamble and file meta (not Part 10)")
    add("garbage-body.dcm", b"\0" * 128 + b"DICM" + bytes(range(256)) * 8, REFUSED,
        "DICM magic followed by garbage")
    add("patient-tags.dcm", _dicom_bytes(_ct(_hu_slice(), patient=True)), ACCEPTED,
        "CT DICOM full of patient tags (markers)", markers=PATIENT_MARKERS)
    broken = _dicom_bytes(_ct(_hu_slice(), patient=True))
    add("patient-tags-broken.dcm", broken[: broken.rindex(b"\xe0\x7f\x10\x00") + 600], REFUSED,
        "patient-tag DICOM with truncated pixel data", markers=PATIENT_MARKERS)
    short = _ct(_hu_slice(), patient=True)
    short.PixelData = short.PixelData[:1000]
    add("patient-tags-short-pixels.dcm", _dicom_bytes(short), REFUSED,
        "complete patient-tag DICOM whose Pixel Data is shorter than Rows x Columns", markers=PATIENT_MARKERS)
    floats = _ct(_hu_slice(), modality="OT")
    del floats.PixelData, floats.BitsStored, floats.HighBit, floats.PixelRepresentation
    del floats.RescaleSlope, floats.RescaleIntercept
    values = _hu_slice().astype(np.float32)
    values[3, 3] = np.nan
    floats.BitsAllocated, floats.FloatPixelData = 32, values.tobytes()
    add("float-nan.dcm", _dicom_bytes(floats), REFUSED, "Float Pixel Data with a NaN", reason="NaN")
    window = _ct(_hu_slice(), modality="MR")
    window.WindowWidth, window.WindowCenter = "0", "40"
    add("zero-window.dcm", _dicom_bytes(window), ACCEPTED, "MR DICOM whose stored window width is 0")
    zero = _ct(_hu_slice())
    zero.Rows = 0
    add("zero-rows.dcm", _dicom_bytes(zero), REFUSED, "DICOM with Rows = 0")
    garbage_jpeg = _ct(_hu_slice())
    garbage_jpeg.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    garbage_jpeg.BitsAllocated, garbage_jpeg.BitsStored, garbage_jpeg.HighBit = 8, 8, 7
    garbage_jpeg.PixelData = encapsulate([b"\xff\xd8\xff\xe0garbage, not a JPEG stream\xff\xd9"])
    garbage_jpeg["PixelData"].VR = "OB"
    add("jpeg-garbage.dcm", _dicom_bytes(garbage_jpeg), REFUSED, "JPEG-baseline DICOM with a garbage fragment")
    frames = _ct(_hu_slice())
    frames.NumberOfFrames = 10**9
    add("frames-1e9.dcm", _dicom_bytes(frames), REFUSED, "one frame of pixels declaring 10^9 frames")
    overflow = _ct(_hu_slice())
    overflow.RescaleSlope = "1e308"
    add("rescale-overflow.dcm", _dicom_bytes(overflow), REFUSED, "RescaleSlope 1e308: Hounsfield units overflow",
        reason="infinite")
    _display_items(add, folder)
    (folder / "folder.png").mkdir()
    items.append(CorpusItem("folder.png", folder / "folder.png", (SCAN,), REFUSED, "a folder named .png",
                            reason="folder"))
    return items


#: pydicom's test files the product refuses, and what the refusal must name (everything else is read).
PYDICOM_REFUSED: Final[dict[str, str]] = {
    **dict.fromkeys(("ExplVR_BigEndNoMeta.dcm", "ExplVR_LitEndNoMeta.dcm", "empty_charset_LEI.dcm", "reportsi.dcm",
                     "reportsi_with_empty_number_tags.dcm", "rtplan.dcm", "rtplan_truncated.dcm", "rtstruct.dcm",
                     "test-SR.dcm", "waveform_ecg.dcm"), "holds no image"),
    **dict.fromkeys(("UN_sequence.dcm", "no_meta_group_length.dcm", "priv_SQ.dcm"), "without Pixel Data"),
    **dict.fromkeys(("meta_missing_tsyntax.dcm", "nested_priv_SQ.dcm"), "does not state the image size"),
    **dict.fromkeys(("JPEGLSNearLossless_08.dcm", "JPEGLSNearLossless_16.dcm", "SC_rgb_small_odd.dcm",
                     "SC_rgb_small_odd_big_endian.dcm", "SC_rgb_small_odd_jpeg.dcm", "badVR.dcm", "rtdose.dcm",
                     "rtdose_1frame.dcm", "rtdose_expb.dcm", "rtdose_expb_1frame.dcm", "rtdose_rle.dcm",
                     "rtdose_rle_1frame.dcm"), "at least 16 pixels"),
    "MR_truncated.dcm": "truncated: its Pixel Data holds",
    # scan parameters libjpeg (and GDCM) reject / a J2K stream with a sequence delimiter inside: the decoders say so
    "JPEG-lossy.dcm": "compressed as JPEG Extended (Process 2 and 4), could not be decoded by the installed decoders",
    "JPEG2000-embedded-sequence-delimiter.dcm": "compressed as JPEG 2000 Image Compression, could not be decoded",
    "no_meta.dcm": "not a readable image",  # a bare RT Plan starting with no element this reader recognises
}


def _real_items(folder: Path) -> list[CorpusItem]:
    """pydicom's whole bundled test set, and a synthetic 12-bit CT slice in every transfer syntax."""
    from tests.dicom_codecs import LOSSLESS, LOSSY, ct_slice, display_slice, encode

    folder.mkdir(parents=True)
    items = []
    source = Path(get_testdata_file("CT_small.dcm", download=False)).parent
    for path in sorted(source.glob("*.dcm")):
        target = folder / f"pydicom-{path.name}"
        target.write_bytes(path.read_bytes())
        reason = PYDICOM_REFUSED.get(path.name, "")
        items.append(CorpusItem(f"real/pydicom/{path.name}", target, (REAL,), REFUSED if reason else ACCEPTED,
                                f"pydicom's test file {path.name}", reason=reason))
    encodings = [(f"ct12-{syntax.keyword}", ct_slice(), syntax) for syntax in (*LOSSLESS, *LOSSY)]
    encodings += [(f"rgb8-{syntax.keyword}", display_slice(samples=3), syntax)
                  for syntax in (JPEGBaseline8Bit, JPEG2000Lossless, JPEG2000)]  # YBR_FULL, YBR_RCT, YBR_ICT
    for name, ds, syntax in encodings:
        target = folder / f"{name}.dcm"
        target.write_bytes(encode(ds, syntax))
        items.append(CorpusItem(f"real/re-encoded/{name}.dcm", target, (REAL,), ACCEPTED,
                                f"synthetic 12-bit CT slice (or its 8-bit RGB capture) re-encoded as {syntax.name}"))
    return items


def _tiff(path: Path, array: np.ndarray, **options: object) -> None:
    """Write a TIFF; ``add`` is then given ``None`` as data (the file is already there)."""
    tifffile.imwrite(path, array, **options)


def _display_items(add: Callable[..., Path], folder: Path) -> None:
    """Files that record how their pixels are to be shown (issue 14): each must read as a viewer shows it."""
    grey = _phantom()
    exif = Image.Exif()
    exif[0x0112] = 6
    add("exif-rotated.jpg", _pil_bytes(Image.fromarray(grey[:, 8:]), "JPEG", exif=exif.tobytes()), ACCEPTED,
        "grey JPEG with EXIF orientation 6 (turn 90 degrees to view)")
    add("exif-rotated.png", _pil_bytes(Image.fromarray(grey[:, 8:]), "PNG", exif=exif.tobytes()), ACCEPTED,
        "PNG with an eXIf orientation 6")
    exif[0x0112] = 99
    add("exif-orientation-99.jpg", _pil_bytes(Image.fromarray(grey), "JPEG", exif=exif.tobytes()), ACCEPTED,
        "JPEG with an EXIF orientation outside 1..8 (ignored, as viewers do)")
    add("tiff-miniswhite-8.tif", _tiff(folder / "tiff-miniswhite-8.tif", 255 - grey, photometric="miniswhite"),
        ACCEPTED, "8-bit MinIsWhite TIFF")
    add("tiff-miniswhite-16.tif", _tiff(folder / "tiff-miniswhite-16.tif", (255 - grey).astype(np.uint16) * 257,
                                        photometric="miniswhite"), ACCEPTED, "16-bit MinIsWhite TIFF")
    add("tiff-miniswhite-1bit.tif", _tiff(folder / "tiff-miniswhite-1bit.tif", grey < 100, photometric="miniswhite"),
        ACCEPTED, "bilevel MinIsWhite TIFF")
    colormap = np.stack([(255 - np.arange(256)) * 257] * 3).astype(np.uint16)
    add("tiff-palette.tif", _tiff(folder / "tiff-palette.tif", grey, photometric="palette", colormap=colormap),
        ACCEPTED, "palette TIFF with an inverted grey colour map")
    add("tiff-orientation-8.tif", _tiff(folder / "tiff-orientation-8.tif", grey[:, 8:],
                                        extratags=[(274, 3, 1, 8, True)]), ACCEPTED, "TIFF with Orientation 8")
    add("tiff-cmyk.tif", _tiff(folder / "tiff-cmyk.tif", np.dstack([np.zeros_like(grey)] * 3 + [255 - grey]),
                               photometric="separated"), ACCEPTED, "CMYK TIFF")
    add("tiff-cielab.tif", _tiff(folder / "tiff-cielab.tif", np.dstack([grey] * 3), photometric="cielab"), REFUSED,
        "CIE L*a*b* TIFF", reason="L*a*b*")
    hu = _hu_slice()
    enhanced = _ct(np.stack([hu] * 3))
    enhanced.SOPClassUID = enhanced.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    del enhanced.RescaleSlope, enhanced.RescaleIntercept
    enhanced.SharedFunctionalGroupsSequence = [_item(PixelValueTransformationSequence=[
        _item(RescaleIntercept="-1024", RescaleSlope="1", RescaleType="HU")])]
    add("enhanced-ct.dcm", _dicom_bytes(enhanced), ACCEPTED,
        "Enhanced CT whose rescale is only in the functional groups")
    groups = _ct(np.stack([hu] * 4), patient=True)
    groups.PerFrameFunctionalGroupsSequence = [_item(FrameVOILUTSequence=[_item(WindowCenter="40", WindowWidth="-5")])]
    groups.SharedFunctionalGroupsSequence = []
    add("enhanced-short-groups.dcm", _dicom_bytes(groups), ACCEPTED,
        "4 frames but 1 per-frame group holding a negative window width, an empty shared group, patient tags",
        markers=PATIENT_MARKERS)
    inverse = _ct(hu)
    inverse.PresentationLUTShape = "INVERSE"
    add("presentation-inverse.dcm", _dicom_bytes(inverse), ACCEPTED, "MONOCHROME2 with Presentation LUT Shape INVERSE")
    mono1 = _ct(hu)
    mono1.PhotometricInterpretation = "MONOCHROME1"
    add("monochrome1.dcm", _dicom_bytes(mono1), ACCEPTED, "MONOCHROME1 CT")
    sigmoid = _ct(hu, modality="MR")
    sigmoid.WindowCenter, sigmoid.WindowWidth, sigmoid.VOILUTFunction = "40", "400", "SIGMOID"
    add("sigmoid-window.dcm", _dicom_bytes(sigmoid), ACCEPTED, "MR with a SIGMOID VOI LUT Function")
    unknown = _ct(hu, modality="MR")
    unknown.WindowCenter, unknown.WindowWidth, unknown.VOILUTFunction = "40", "400", "CUBIC"
    add("voi-function-unknown.dcm", _dicom_bytes(unknown), ACCEPTED, "MR with VOI LUT Function 'CUBIC'")
    lut = _ct(hu, modality="MR")
    lut.VOILUTSequence = [_item(LUTDescriptor=[256, 0, 16], LUTData=list(range(0, 4096, 16)))]
    lut.VOILUTSequence[0]["LUTData"].VR = "US"
    add("voi-lut.dcm", _dicom_bytes(lut), ACCEPTED, "MR with a VOI LUT Sequence")
    bad_lut = _ct(hu, modality="MR")
    bad_lut.VOILUTSequence = [_item(LUTDescriptor=[256, 0, 3], LUTData=list(range(256)))]
    bad_lut.VOILUTSequence[0]["LUTData"].VR = "US"
    add("voi-lut-3-bits.dcm", _dicom_bytes(bad_lut), ACCEPTED, "VOI LUT declaring 3-bit entries (not allowed)")
    tall = _ct(hu)
    tall.PixelSpacing = [1.4, 0.7]
    add("non-square-pixels.dcm", _dicom_bytes(tall), ACCEPTED, "CT whose pixels are twice as tall as wide")
    thin = _ct(hu)
    thin.PixelSpacing = [1000, 0.001]
    add("aspect-bomb.dcm", _dicom_bytes(thin), REFUSED, "Pixel Spacing 1000 x 0.001 mm: a million-fold aspect",
        reason="pixels")
    no_rescale = _ct(hu)
    del no_rescale.RescaleSlope, no_rescale.RescaleIntercept
    add("ct-no-rescale.dcm", _dicom_bytes(no_rescale), ACCEPTED, "CT stored as HU + 1024 without rescale tags")
    bare = _ct(hu, patient=True)
    del bare.file_meta
    bare.preamble = None
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, bare, implicit_vr=True, little_endian=True)
    add("headerless-ct.dcm", buffer.getvalue(), ACCEPTED, "CT data set without preamble, DICM and file meta",
        markers=PATIENT_MARKERS)
    add("headerless-garbage.dcm", b"\x08\x00\x16\x00" + bytes(range(256)) * 4, REFUSED,
        "starts like a bare DICOM data set, then garbage")
    add("DICOMDIR", Path(get_testdata_file("DICOMDIR", download=False)).read_bytes(), REFUSED,
        "a DICOMDIR (index of a DICOM disc)", reason="DICOMDIR")


def _item(**values: object) -> Dataset:
    """A sequence item with the given attributes."""
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _folder_items(folder: Path, scans: list[CorpusItem]) -> list[CorpusItem]:
    """Dataset folders: broken layouts, and one good dataset with every scan of the corpus mixed in."""
    folder.mkdir(parents=True)
    items: list[CorpusItem] = []
    good = _encode(_phantom(), ".png")

    def dataset(name: str, files: Mapping[str, Mapping[str, bytes]]) -> Path:
        top = folder / name
        top.mkdir()
        for class_folder, contents in files.items():
            (top / class_folder).mkdir(parents=True)
            for file_name, data in contents.items():
                (top / class_folder / file_name).write_bytes(data)
        return top

    def add(name: str, path: Path, expected: str, about: str, *, reason: str = "",
            markers: tuple[str, ...] = ()) -> None:
        items.append(CorpusItem(name, path, (FOLDER,), expected, about, reason=reason, markers=markers))

    three = {label: {f"{label} (1).png": good} for label in ("benign", "malignant", "normal")}
    (folder / "empty").mkdir()
    add("folder-empty", folder / "empty", REFUSED, "an empty folder", reason="no class folders")
    add("folder-missing", folder / "does-not-exist", REFUSED, "a path that does not exist", reason="no such folder")
    (folder / "a-file.txt").write_text("not a folder\n")
    add("folder-is-a-file", folder / "a-file.txt", REFUSED, "a file given as dataset folder")
    add("folder-no-images", dataset("no-images", {label: {"notes.txt": b"x"} for label in three}), REFUSED,
        "three class folders holding only text files", reason="no images")
    add("folder-missing-class", dataset("missing-class", {"Bengin cases": three["benign"],
                                                          "Malignant cases": three["malignant"]}), REFUSED,
        "Kaggle layout without 'Normal cases'", reason="normal")
    add("folder-duplicate-class", dataset("duplicate-class", {**three, "Bengin cases": {"a.png": good}}),
        REFUSED, "both 'benign' and 'Bengin cases'", reason="benign")
    broken = {"empty.jpg": b"", "text.jpg": b"not an image\n", "cut.png": good[:50]}
    add("folder-only-broken", dataset("only-broken", {label: broken for label in three}), REFUSED,
        "every file of every class is broken", reason="could be read")
    add("folder-class-broken", dataset("class-broken", {**three, "normal": broken}), REFUSED,
        "all files of one class are broken", reason="normal")
    loop = dataset("symlink-loop", three)
    (loop / "benign" / "loop").symlink_to(loop, target_is_directory=True)
    (loop / "malignant" / "outside.jpg").symlink_to("/etc/passwd")
    (loop / "normal" / "zero.jpg").symlink_to("/dev/zero")
    os.mkfifo(loop / "normal" / "pipe.png")
    add("folder-symlink-loop", loop, ACCEPTED,
        "class folders with a symlink loop, links to /etc/passwd and /dev/zero, and a named pipe")
    patients = {label: {f"{label}-{i}.dcm": _dicom_bytes(_ct(_hu_slice(64) + 5 * i, patient=True))
                        for i in range(2)} for label in three}
    add("folder-patient-dicoms", dataset("patient-dicoms", patients), ACCEPTED,
        "DICOM dataset full of patient tags", markers=PATIENT_MARKERS)
    add("folder-dicom-studies", make_dicom_studies(folder / "dicom-studies", patients_per_class=2).root, ACCEPTED,
        "a folder tree of DICOM series per patient, identifiers in every file", markers=PATIENT_MARKERS)
    # every scan of the corpus beside good ones: the loader keeps the readable ones and skips the rest
    mixed = dataset("every-scan", three)
    for index, item in enumerate(scan for scan in scans if FOLDER in scan.kinds):
        target = mixed / ("benign", "malignant", "normal")[index % 3] / item.name
        if item.path.is_symlink():
            target.symlink_to(os.readlink(item.path))
        else:
            os.link(item.path, target)
    add("folder-every-scan", mixed, ACCEPTED, "good scans plus every corpus scan", markers=PATIENT_MARKERS)
    return items


def _checkpoint_items(root: Path) -> list[CorpusItem]:
    """Run directories with tampered checkpoints and configs, and hostile run zips."""
    runs, configs, zips = root / "runs", root / "configs", root / "zips"
    for folder in (runs, configs, zips):
        folder.mkdir(parents=True)
    torch.manual_seed(0)
    state = build_model("resnet18").state_dict()
    metadata = {"format": "lunglab-model", "arch": "resnet18", "num_classes": "3"}
    valid = safetensors_bytes(state, metadata=metadata)
    trained = _trained_config()
    config = json.dumps(trained).encode()
    items: list[CorpusItem] = []

    def run(name: str, model: bytes | None, expected: str, about: str, *, last: bytes | None = None,
            reason: str = "", forbidden: tuple[Path, ...] = (), expect: Mapping[str, str] | None = None,
            settings: bytes = config, metrics: bytes | None = None, status: bytes | None = None) -> None:
        path = _write_run(runs / name, settings, None if model is valid else model, last=last, metrics=metrics,
                          status=status)
        if model is valid and name != "run-valid":  # the same weights: a hard link saves 45 MB of disk
            os.link(runs / "run-valid" / "model.safetensors", path / "model.safetensors")
        elif model is valid:
            (path / "model.safetensors").write_bytes(valid)
        items.append(CorpusItem(name, path, (CHECKPOINT, RUN_ZIP), expected, about, reason=reason,
                                forbidden=forbidden, expect=expect or {}))

    def changed(**tensors: torch.Tensor) -> bytes:
        return safetensors_bytes({**state, **tensors}, metadata=metadata)

    run("run-valid", valid, ACCEPTED, "a correct run (control)")
    marker = root / "PICKLE-RAN-model-safetensors"
    run("run-pickle-model", pickle.dumps({"fc.weight": _Reducer(marker)}), REFUSED,
        "model.safetensors that is a pickle whose __reduce__ creates a file", forbidden=(marker,))
    marker_pt = root / "PICKLE-RAN-torch-save"
    buffer = io.BytesIO()
    torch.save({"state_dict": _Reducer(marker_pt)}, buffer)
    run("run-torch-save-model", buffer.getvalue(), REFUSED, "model.safetensors written by torch.save (a pickle)",
        forbidden=(marker_pt,))
    marker_last = root / "PICKLE-RAN-last"
    run("run-pickle-last", valid, REFUSED, "valid model, but last.safetensors is a code-running pickle",
        last=pickle.dumps(_Reducer(marker_last)), forbidden=(marker_last,), expect={"load_model": ACCEPTED})
    run("run-empty-model", b"", REFUSED, "zero-byte model.safetensors")
    run("run-truncated-model", valid[: len(valid) // 3], REFUSED, "model.safetensors cut to a third")
    run("run-huge-header", struct.pack("<Q", 1 << 62) + b"{}", REFUSED,
        "safetensors declaring a 4 EiB header")
    run("run-header-past-end", struct.pack("<Q", 10_000_000) + b'{"a":', REFUSED,
        "safetensors header length past the end of the file")
    run("run-header-not-json", struct.pack("<Q", 24) + b"\xff\xfenot json at all........", REFUSED,
        "safetensors header that is not JSON")
    run("run-offsets-out-of-range",
        _safetensors_header({"backbone.fc.bias": {"dtype": "F32", "shape": [3], "data_offsets": [0, 1 << 40]}},
                            b"\0" * 12), REFUSED, "safetensors tensor whose data offsets point 1 TB away")
    run("run-wrong-shapes", changed(**{"backbone.fc.weight": torch.zeros(4, 512), "backbone.fc.bias": torch.zeros(4)}),
        REFUSED, "weights of a 4-class head", reason="backbone.fc")
    # half precision is widened on load (the shipped demo's weights are float16); float64 is not a model's
    run("run-half-precision", safetensors_bytes({name: tensor.half() if tensor.is_floating_point() else tensor
                                                 for name, tensor in state.items()}, metadata=metadata),
        ACCEPTED, "every float tensor stored as float16, widened to float32")
    run("run-wrong-dtypes", safetensors_bytes({name: tensor.double() if tensor.is_floating_point() else tensor
                                               for name, tensor in state.items()}, metadata=metadata),
        REFUSED, "every float tensor stored as float64", reason="float64")
    run("run-missing-tensors", safetensors_bytes(dict(list(state.items())[:5]), metadata=metadata), REFUSED,
        "only 5 of the tensors", reason="missing")
    run("run-extra-tensor", changed(**{"evil.payload": torch.zeros(8)}), REFUSED, "an unexpected extra tensor",
        reason="unexpected")
    nan_weight = state["backbone.fc.weight"].clone()
    nan_weight[0, 0] = float("nan")
    run("run-nan-weight", changed(**{"backbone.fc.weight": nan_weight}), REFUSED, "NaN in the final layer",
        reason="NaN")
    inf_var = state["backbone.layer4.1.bn2.running_var"].clone()
    inf_var[-1] = float("inf")
    run("run-inf-buffer", changed(**{"backbone.layer4.1.bn2.running_var": inf_var}), REFUSED,
        "+inf in a batch-norm running variance", reason="infinite")
    run("run-wrong-arch-metadata", safetensors_bytes(state, metadata={**metadata, "arch": "resnet34"}), REFUSED,
        "weights labelled as another architecture")
    run("run-no-model", None, REFUSED, "a run directory without model.safetensors", reason="model")
    # records beside the weights that only the dashboard and evaluation read: loading must not mind them
    junk = [{"epoch": 1}, {"epoch": 2, "train_loss": "abc", "val_acc": None}, {"epoch": 3, "val_acc": [1, 2]},
            {"epoch": "4"}, {"epoch": 5, "val_acc": 1e308 * 10, "best": "yes"}]
    run("run-metrics-tampered", valid, ACCEPTED, "metrics.jsonl lines missing fields, with wrong types and inf",
        metrics=("\n".join(json.dumps(line) for line in junk) + "\nnot json\n").encode())
    run("run-status-not-object", valid, ACCEPTED, "status.json holding a list", status=b"[1, 2, 3]")
    run("run-status-foreign-job", valid, ACCEPTED, "status.json claiming a running job with process id 1",
        status=json.dumps({"phase": "running", "job": {"pid": 1, "start_time": None, "command": ["rm", "-rf"]},
                           "progress": "abc", "eta_s": -5}).encode())
    run("run-status-bad-job", valid, ACCEPTED, "status.json whose job record has a non-numeric process id",
        status=json.dumps({"phase": "running", "job": {"pid": "abc"}}).encode())
    # the stored split is only used by evaluation: loading and importing are right to accept these
    split = dict(trained["split"])  # type: ignore[arg-type]
    for name, test, about in (("run-split-out-of-range", [7, 10**9], "a stored test split pointing at scan 10^9"),
                              ("run-split-negative", [-3, -1], "a stored test split of negative indices")):
        run(name, valid, ACCEPTED, about, settings=json.dumps({**trained, "split": {**split, "test": test}}).encode())

    for name, text, reason in (
        ("config-epochs-1e9", json.dumps(_run_config(epochs=10**9)), "epochs"),
        ("config-image-size-negative", json.dumps(_run_config(image_size=-5)), "image_size"),
        ("config-eps-300", json.dumps(_run_config(eps=300)), "eps"),
        ("config-arch-traversal", json.dumps(_run_config(arch="../../etc")), "architecture"),
        ("config-eps-nan", json.dumps(_run_config(eps=float("nan"))), "eps"),
        ("config-lr-infinity", json.dumps(_run_config(lr=float("inf"))), "lr"),
        ("config-batch-size-shell", json.dumps(_run_config(batch_size="32; rm -rf /")), "batch_size"),
        ("config-count-negative", json.dumps(_run_config(count=-1)), "count"),
        ("config-not-object", json.dumps([1, 2, 3]), "object"),
        ("config-not-json", "\x00\x01 not json {", "JSON"),
        ("config-5MB", json.dumps({**_run_config(), "comment": "x" * (5 << 20)}), ""),
        ("config-deep-nesting", '{"data": ' + "[" * 100_000 + "]" * 100_000 + "}", ""),
    ):
        path = _write_run(configs / name, text.encode(), b"")
        os.unlink(path / "model.safetensors")
        os.link(runs / "run-valid" / "model.safetensors", path / "model.safetensors")
        items.append(CorpusItem(name, path / "config.json", (CONFIG,), REFUSED, f"config.json: {name[7:]}",
                                reason=reason))

    items += _zip_items(zips, valid, config, root)
    return items


def _zip_items(folder: Path, valid: bytes, config: bytes, root: Path) -> list[CorpusItem]:
    items: list[CorpusItem] = []
    good = [("run/config.json", config), ("run/model.safetensors", valid)]
    evil = f"lunglab-corpus-evil-{uuid.uuid4().hex[:12]}"
    absolute = Path("/tmp") / evil

    def add(name: str, path: Path, expected: str, about: str, *, reason: str = "",
            forbidden: tuple[Path, ...] = ()) -> None:
        items.append(CorpusItem(name, path, (RUN_ZIP,), expected, about, reason=reason, forbidden=forbidden))

    add("zip-valid", _zip(folder / "valid.zip", good), ACCEPTED, "an exported run (control)")
    add("zip-bomb", _zip(folder / "bomb.zip", [("run/config.json", config),
                                              ("run/model.safetensors", b"\0" * (64 << 20))],
                         compression=zipfile.ZIP_DEFLATED), REFUSED, "64 MB of zeros deflated 1000-fold",
        reason="zip bomb")
    add("zip-bomb-lying-size", _lying_zip(folder / "lying.zip", 32 << 20, 1000, good[:1]), REFUSED,
        "model entry declaring 1000 bytes that inflates to 32 MB")
    add("zip-too-many-entries", _zip(folder / "many.zip", [(f"run/f{i}.json", b"{}") for i in range(5000)]),
        REFUSED, "5000 entries", reason="entries")
    add("zip-traversal-dotdot", _zip(folder / "dotdot.zip", [(f"../../{evil}/config.json", config),
                                                             ("run/model.safetensors", valid)]), REFUSED,
        "entry ../../<evil>/config.json", forbidden=(absolute,))
    add("zip-traversal-absolute", _zip(folder / "absolute.zip", [(f"{absolute}/config.json", config),
                                                                 (f"{absolute}/model.safetensors", b"x")]),
        REFUSED, "entries with absolute paths under /tmp", forbidden=(absolute,))
    add("zip-traversal-backslash", _zip(folder / "backslash.zip", [(f"..\\..\\{evil}\\config.json", config),
                                                                   ("run/model.safetensors", valid)]),
        REFUSED, "entry ..\\..\\<evil>\\config.json", forbidden=(absolute,))
    # directory entries are never created (only the run files are written), so this one is harmless
    add("zip-traversal-dir-entry", _zip(folder / "direntry.zip", [(f"../../{evil}/", b""), *good]), ACCEPTED,
        "a run plus a directory entry ../../<evil>/", forbidden=(absolute,))
    add("zip-symlink-model", _zip(folder / "symlink.zip", [good[0], (_symlink_entry("run/model.safetensors",
                                                                                    "/etc/passwd"), b"/etc/passwd")]),
        REFUSED, "model.safetensors entry that is a symlink to /etc/passwd", reason="link")
    add("zip-symlink-dir", _zip(folder / "symlink-dir.zip", [(_symlink_entry("run", f"/tmp/{evil}"),
                                                              f"/tmp/{evil}".encode()), *good]),
        REFUSED, "a 'run' entry that is a symlink to /tmp, then files under it", forbidden=(absolute,))
    add("zip-extra-file", _zip(folder / "extra.zip", [*good, ("run/evil.py", b"import os\n")]), REFUSED,
        "a run plus an evil.py", reason="evil.py")
    add("zip-two-runs", _zip(folder / "two.zip", [*good, ("other/config.json", config)]), REFUSED,
        "files of two runs", reason="more than one run")
    add("zip-repeated-file", _zip(folder / "repeat.zip", [*good, good[0]]), REFUSED, "config.json twice")
    add("zip-no-model", _zip(folder / "nomodel.zip", good[:1]), REFUSED, "config.json only", reason="model")
    (folder / "not-a-zip.zip").write_text("this is a text file\n")
    add("zip-not-a-zip", folder / "not-a-zip.zip", REFUSED, "text file named .zip", reason="not a zip")
    (folder / "truncated.zip").write_bytes((folder / "valid.zip").read_bytes()[: len(valid) // 2])
    add("zip-truncated", folder / "truncated.zip", REFUSED, "an export cut in half")
    corrupt = bytearray((folder / "valid.zip").read_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF
    (folder / "corrupt.zip").write_bytes(bytes(corrupt))
    add("zip-corrupt-member", folder / "corrupt.zip", REFUSED, "one flipped byte inside the model (bad CRC)")
    add("zip-encrypted-flag", _flag_encrypted(_zip(folder / "encrypted.zip", good[::-1])), REFUSED,
        "model entry flagged as encrypted", reason="encrypted")
    marker = root / "PICKLE-RAN-zip-pt"
    add("zip-with-model-pt", _zip(folder / "pt.zip", [good[0], ("run/model.pt", pickle.dumps(_Reducer(marker)))]),
        REFUSED, "config.json and a code-running model.pt", forbidden=(marker,))
    marker_save = root / "PICKLE-RAN-pt-as-zip"
    torch.save({"state_dict": _Reducer(marker_save)}, folder / "torch-save.pt")
    add("zip-torch-save-pt", folder / "torch-save.pt", REFUSED, "a torch.save .pt (itself a zip) as run import",
        forbidden=(marker_save,))
    add("zip-empty", _zip(folder / "empty.zip", []), REFUSED, "a zip with no entries")
    return items


def _cli_items(folder: Path, items: list[CorpusItem]) -> list[CorpusItem]:
    """Command lines with out-of-range or malformed values, for ``train`` and ``evaluate``.

    Training flags always include tiny settings, so a command wrongly accepted finishes in seconds;
    the evaluations that get past flag checking attack two 32 px scans with one FGSM step.
    """
    folder.mkdir(parents=True)
    by_name = {item.name: item for item in items}
    runs = folder.parent / CLI_RUNS
    runs.mkdir()

    def run(name: str) -> str:
        item = by_name[name]
        return str(item.path if item.path.is_dir() else item.path.parent)

    tiny = [arg for key, value in TINY_TRAINING.items() if key != "augment"
            for arg in (f"--{key.replace('_', '-')}", str(value))]
    train: list[tuple[str, list[str], str]] = [
        ("eps 300/255", ["--strategy", "pgd", "--eps", "300/255"], "eps"),
        ("eps -1", ["--strategy", "pgd", "--eps", "-1"], "eps"),
        ("eps nan", ["--strategy", "pgd", "--eps", "nan"], "eps"),
        ("eps 4/0", ["--strategy", "pgd", "--eps", "4/0"], "eps"),
        ("eps abc", ["--strategy", "pgd", "--eps", "abc"], "eps"),
        ("eps 4 (meant 4/255)", ["--strategy", "pgd", "--eps", "4"], "eps"),
        ("alpha inf", ["--strategy", "pgd", "--alpha", "inf"], "alpha"),
        ("epochs 1e9", ["--epochs", str(10**9)], "epochs"),
        ("image-size -5", ["--image-size", "-5"], "image_size"),
        ("arch ../../etc", ["--arch", "../../etc"], "arch"),
        ("batch-size 0", ["--batch-size", "0"], "batch_size"),
        ("lr inf", ["--lr", "inf"], "lr"),
        ("strategy bogus", ["--strategy", "bogus"], "strategy"),
        ("window bogus", ["--window", "bogus"], "window"),
        ("transfer-eps 1,abc", ["--transfer-eps", "1/255,abc"], "transfer_eps"),
        ("transfer-run ../../etc", ["--strategy", "transfer", "--transfer-run", "../../etc"], "../../etc"),
        ("unknown flag", ["--frobnicate", "3"], "unrecognized"),
        ("config-json missing", ["--config-json", str(folder / "missing.json")], "missing.json"),
        ("config-json not json", ["--config-json", str(by_name["config-not-json"].path)], "JSON"),
        ("config-json epochs 1e9", ["--config-json", str(by_name["config-epochs-1e9"].path)], "epochs"),
        ("config-json arch ../../etc", ["--config-json", str(by_name["config-arch-traversal"].path)], "arch"),
        ("config-json deep nesting", ["--config-json", str(by_name["config-deep-nesting"].path)], ""),
        ("resume ../../etc", ["--resume", "../../etc"], "no run"),
        ("resume absurd config", ["--resume", run("config-epochs-1e9")], "epochs"),
        ("data missing folder", ["--data", str(folder / "no-such-dataset")], "no such folder"),
        ("data only broken files", ["--data", str(by_name["folder-only-broken"].path)], "could be read"),
    ]
    cases: list[tuple[str, tuple[str, ...], str, str]] = []
    for name, extra, reason in train:
        # explicit flags win over --config-json and are refused with --resume, so those get none
        own = extra[0] in ("--resume", "--config-json")
        cases.append((f"train {name}", ("train", "--runs-dir", str(runs), "--quiet", *(() if own else tiny), *extra),
                      REFUSED, reason))

    valid, quick = run("run-valid"), ["--attacks", "fgsm", "--eps", "1/255", "--steps", "1", "--no-strength",
                                      "--device", "cpu"]
    (runs / "a-file").write_text("not a folder\n")
    evaluate: list[tuple[str, list[str], str, str]] = [
        ("valid run (control)", ["--run", valid, *quick, "--out", str(runs / "report")], ACCEPTED, ""),
        ("eps 300/255", ["--run", valid, "--eps", "300/255"], REFUSED, "epsilon"),
        ("eps -1", ["--run", valid, "--eps", "-1"], REFUSED, "epsilon"),
        ("eps nan", ["--run", valid, "--eps", "nan"], REFUSED, "epsilon"),
        ("eps 4/0", ["--run", valid, "--eps", "4/0"], REFUSED, "epsilon"),
        ("eps abc", ["--run", valid, "--eps", "abc"], REFUSED, "epsilon"),
        ("eps empty", ["--run", valid, "--eps", ","], REFUSED, "epsilon"),
        ("attacks bogus", ["--run", valid, "--attacks", "pgd,bogus"], REFUSED, "bogus"),
        ("attacks empty", ["--run", valid, "--attacks", ",,"], REFUSED, "attack"),
        ("steps 0", ["--run", valid, "--steps", "0"], REFUSED, "steps"),
        ("steps abc", ["--run", valid, "--steps", "abc"], REFUSED, "steps"),
        ("batch-size -1", ["--run", valid, "--batch-size", "-1"], REFUSED, "batch"),
        ("certify-n 5", ["--run", valid, "--certify-n", "5"], REFUSED, "certify"),
        ("certify sigma -1", ["--run", valid, *quick, "--certify", "-1"], REFUSED, "sigma"),
        ("certify sigma nan", ["--run", valid, *quick, "--certify", "nan"], REFUSED, "sigma"),
        ("defenses bogus", ["--run", valid, *quick, "--defenses", "bogus"], REFUSED, "bogus"),
        ("limit 0", ["--run", valid, *quick, "--limit", "0"], REFUSED, "limit"),
        ("split bogus", ["--run", valid, "--split", "bogus"], REFUSED, "split"),
        ("run ../../etc", ["--run", "../../etc"], REFUSED, "no run"),
        ("same run twice", ["--run", valid, "--run", valid, *quick], REFUSED, "twice"),
        ("run with pickled model", ["--run", run("run-pickle-model"), *quick], REFUSED, "safetensors"),
        ("run with NaN weights", ["--run", run("run-nan-weight"), *quick], REFUSED, "NaN"),
        ("run with absurd config", ["--run", run("config-eps-300"), *quick], REFUSED, "eps"),
        ("run with deeply nested config", ["--run", run("config-deep-nesting"), *quick], REFUSED, ""),
        ("run with split out of range", ["--run", run("run-split-out-of-range"), *quick], REFUSED, "split"),
        ("run with negative split", ["--run", run("run-split-negative"), *quick], REFUSED, "split"),
        ("out is a file", ["--run", valid, *quick, "--out", str(runs / "a-file")], REFUSED, "a-file"),
    ]
    cases += [(f"evaluate {name}", ("evaluate", "--runs-dir", str(runs), "--quiet", *extra), expected, reason)
              for name, extra, expected, reason in evaluate]
    # as a person types them, progress bars on: the error must still stand on its own line
    cases += [("train eps abc, typed (no --quiet)", ("train", "--runs-dir", str(runs), *tiny, "--eps", "abc"),
               REFUSED, "eps"),
              ("evaluate run ../../etc, typed (no --quiet)", ("evaluate", "--runs-dir", str(runs), "--run",
                                                              "../../etc"), REFUSED, "no run")]

    cli_items = []
    for name, args, expected, reason in cases:
        path = folder / (name.replace(" ", "_").replace("/", "-") + ".args.json")
        path.write_text(json.dumps(args))
        cli_items.append(CorpusItem(f"cli {name}", path, (CLI,), expected, "python -m pipeline " + " ".join(args),
                                    args=args, reason=reason))
    return cli_items
