"""Datasets held in memory as uint8 tensors, decoded once and cached on disk.

Training must never wait on JPEG decoding: a folder is decoded once (in a thread pool; Pillow
and tifffile release the GIL), padded and resized to the model size, and kept as one uint8
tensor (1,097 scans at 224 px are 55 MB). The result is cached as ``.npz`` arrays beside a JSON
record, never as a pickle, under ``$LUNGLAB_CACHE_DIR/datasets``.

Two hashes, with different jobs:

- the cache key hashes the file names, sizes and modification times (plus the settings and,
  for the phantom, its source code). Reading every file's bytes again just to find the cache
  would cost a large part of what the cache saves; a file edited in place that keeps its size
  and time would be missed, the same trade-off make and rsync accept.
- ``ScanDataset.fingerprint`` hashes the decoded pixels, labels, file names and settings, so
  the same data copied to another machine (new modification times) has the same fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Iterable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.constants import CLASSES
from pipeline.data.dicom import Window
from pipeline.data.dicomweb import Credentials, Pacs, PacsQuery, describe, is_dicomweb_source, labelled_series
from pipeline.data.preprocess import preprocess_image
from pipeline.data.scan import open_scan
from pipeline.data.sources import discover
from pipeline.data.spec import DataSpec
from pipeline.data.studies import SliceIdentity, Studies, index_studies
from pipeline.errors import DatasetError, ScanError
from pipeline.json_object import parse_json_object
from pipeline.progress import ProgressCallback, report

#: The files of exported phantom scans (:func:`export_synthetic_scans`).
SCANS_ARRAYS: Final[str] = "scans.npz"
SCANS_RECORD: Final[str] = "scans.json"
#: Bump when the decoding or preprocessing changes, so that old caches are not reused.
CACHE_VERSION: Final[int] = 3
#: Size at which the phantom is rendered before the same preprocessing as real scans.
PHANTOM_RENDER_SIZE: Final[int] = 256
SYNTHETIC_NAME: Final[str] = "Synthetic chest-CT phantom (synthetic, not medical data)"
MAX_WORKERS: Final[int] = 8


def cache_dir() -> Path:
    """Root of the on-disk caches: ``$LUNGLAB_CACHE_DIR`` or ``~/.cache/lunglab``."""
    return Path(os.environ.get("LUNGLAB_CACHE_DIR") or Path.home() / ".cache" / "lunglab").expanduser()


def count_classes(labels: np.ndarray) -> dict[str, int]:
    """Scans per class name, every class listed (zero included)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(CLASSES))
    return {name: int(counts[index]) for index, name in enumerate(CLASSES)}


@dataclass
class SkippedFile:
    """A file that was left out of the dataset, and why."""

    path: str
    reason: str


@dataclass
class LoadReport:
    """What loading did: files skipped with reasons, per-file notes, general notes, cache use."""

    skipped: list[SkippedFile] = field(default_factory=list)
    file_notes: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    from_cache: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ScanDataset(Dataset):
    """Scans in memory: ``ds[i] -> (float32 [1, S, S] in [0, 1], label)``.

    ``images`` is a uint8 tensor ``[N, S, S]``; conversion to float happens per item (or once in
    ``tensors()``), so the dataset costs a quarter of its float size in memory. ``studies``, for
    a folder holding DICOM slices, numbers each scan's patient, study, series and slice (never an
    identifier; see ``pipeline.data.studies``); None otherwise.
    """

    classes: tuple[str, ...] = CLASSES

    def __init__(
        self,
        images: torch.Tensor,
        labels: np.ndarray,
        *,
        name: str,
        source: str,
        paths: Optional[list[str]],
        duplicate_groups: list[list[int]],
        fingerprint: str,
        is_synthetic: bool,
        report: Optional[LoadReport] = None,
        studies: Optional[Studies] = None,
        identity: Optional[str] = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 3 or images.shape[1] != images.shape[2]:
            raise ValueError(f"images must be uint8 [N, S, S], got {images.dtype} {tuple(images.shape)}")
        if len(labels) != len(images) or any(column is not None and len(column) != len(images)
                                             for column in (paths, studies)):
            raise ValueError("images, labels, paths and studies must have the same length")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.name = name
        self.source = source
        self.paths = paths
        self.duplicate_groups = duplicate_groups
        self.fingerprint = fingerprint
        #: What the scans are, whichever machine decoded or rendered them: the phantom's rendering
        #: differs by a grey level in a few pixels from one CPU to another (vectorised floating point),
        #: so its identity is its version, settings and labels; a folder's is its fingerprint.
        self.identity = identity if identity is not None else fingerprint
        self.is_synthetic = is_synthetic
        self.report = report if report is not None else LoadReport()
        self.studies = studies

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].unsqueeze(0).float().div_(255.0), int(self.labels[index])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All scans as float32 ``[N, 1, S, S]`` in ``[0, 1]`` and labels int64 ``[N]``."""
        return self.images.unsqueeze(1).float().div_(255.0), torch.from_numpy(self.labels.copy())

    def class_counts(self) -> dict[str, int]:
        return count_classes(self.labels)

    def record(self) -> dict[str, Any]:
        """What a run stores about its data (``config["dataset"]``), JSON-ready; :func:`same_data`
        compares two of them."""
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "identity": self.identity,
            "size": len(self),
            "is_synthetic": self.is_synthetic,
            "class_counts": self.class_counts(),
        }

    def subset(self, indices: Sequence[int] | np.ndarray) -> "ScanDataset":
        """A dataset of the given rows (duplicate groups renumbered, fingerprint derived)."""
        rows = np.asarray(indices, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"subset indices out of range for a dataset of {len(self)} scans")
        rows = rows % max(len(self), 1)
        position = {int(row): new for new, row in enumerate(rows)}
        groups = sorted(sorted(position[i] for i in group if i in position) for group in self.duplicate_groups)
        digest = hashlib.sha256(self.fingerprint.encode() + rows.tobytes()).hexdigest()
        identity = hashlib.sha256(self.identity.encode() + rows.tobytes()).hexdigest()
        return ScanDataset(
            self.images[torch.from_numpy(rows)],
            self.labels[rows],
            name=self.name,
            source=self.source,
            paths=None if self.paths is None else [self.paths[i] for i in rows],
            duplicate_groups=[group for group in groups if len(group) > 1],
            fingerprint=digest,
            is_synthetic=self.is_synthetic,
            report=self.report,
            studies=None if self.studies is None else self.studies.take(rows),
            identity=identity,
        )

    def __repr__(self) -> str:
        return f"ScanDataset({self.name!r}, {len(self)} scans of {self.image_size}px, {self.class_counts()})"


def load_dataset(
    spec: DataSpec | str | os.PathLike = "synthetic",
    *,
    progress: Optional[ProgressCallback] = None,
    cache: bool = True,
    credentials: Optional[Credentials] = None,
    **fields: Any,
) -> ScanDataset:
    """Load the scans ``spec`` names: the phantom (``count`` scans from ``seed``) or a dataset folder.

    ``load_dataset("data/iq", image_size=224)`` is short for
    ``load_dataset(DataSpec(source="data/iq", image_size=224))``; the split settings of a spec
    do not change the scans. ``window`` applies to DICOM files in a folder. With ``cache``, the
    decoded result is read from and written to the on-disk cache. A ``dicomweb:`` source is a
    PACS collection (:mod:`pipeline.data.dicomweb`), retrieved each time and never cached on
    disk; ``credentials`` log in to it (default: those remembered or in the environment). Raises
    :class:`UserInputError` for out-of-range settings and :class:`DatasetError` for a folder
    that is missing, empty or laid out in a way that cannot be read.
    """
    if not isinstance(spec, DataSpec):
        spec = DataSpec(source=str(spec), **fields)
    elif fields:
        raise TypeError("give either a DataSpec or a source with settings, not both")
    if spec.synthetic:
        return _load_synthetic(spec.image_size, spec.seed, spec.count, progress, cache)
    if is_dicomweb_source(spec.source):
        return _load_pacs(PacsQuery.from_source(spec.source), spec.image_size, spec.window, progress, credentials)
    return _load_folder(Path(spec.source), spec.image_size, spec.window, progress, cache)


def export_synthetic_scans(spec: DataSpec, folder: Path, progress: Optional[ProgressCallback] = None) -> Path:
    """Write the phantom scans ``spec`` names (rendered, or from the cache) to ``folder/scans.npz``
    (compressed uint8 images ``[N, S, S]``, int64 labels ``[N]``) beside ``scans.json`` (their record).

    The pair is what :func:`adopt_synthetic_scans` puts into another machine's cache, so that a
    shipped model's data need not be rendered again. Raises DatasetError for a spec that is not the
    synthetic phantom, OSError when ``folder`` cannot be written.
    """
    if not spec.synthetic:
        raise DatasetError(f"only the synthetic phantom's scans can be exported this way, not {spec.source}")
    load_dataset(spec, progress=progress)  # fills the cache
    cached = _read_cache(_synthetic_key(spec.image_size, spec.seed, spec.count), spec.image_size)
    if cached is None:
        raise DatasetError("the phantom's scans could not be cached on this machine; check the cache folder")
    images, labels, meta = cached
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / SCANS_ARRAYS, images=images, labels=labels)
    meta = {key: value for key, value in meta.items() if key != "key"}
    meta["report"] = LoadReport(notes=list(meta["report"]["notes"])).to_dict()
    (folder / SCANS_RECORD).write_text(json.dumps(meta), encoding="utf-8")
    return folder / SCANS_ARRAYS


def adopt_synthetic_scans(spec: DataSpec, folder: Path) -> bool:
    """Put the scans :func:`export_synthetic_scans` wrote to ``folder`` into this machine's dataset
    cache under ``spec``'s key, unless the cache has them already. True when the cache now has them.

    A rendering of this machine's own under the same key is replaced when its fingerprint differs:
    the phantom rendered on another CPU differs by a grey level in a few pixels, and models trained on
    the exported scans (the shipped demo's, whose runs predate :attr:`ScanDataset.identity`) are
    checked against the exported scans' fingerprint.

    The caller vouches that they are ``spec``'s scans (the shipped demo checks the phantom version);
    files that do not fit ``spec`` (count, size, dtypes) are not adopted and False is returned.
    """
    if not spec.synthetic:
        return False
    key = _synthetic_key(spec.image_size, spec.seed, spec.count)
    try:
        meta = parse_json_object((folder / SCANS_RECORD).read_text(encoding="utf-8"), SCANS_RECORD,
                                 error=DatasetError)
    except (OSError, ValueError):
        meta = {}
    cached = _read_cache(key, spec.image_size)
    if cached is not None and (not meta or cached[2].get("fingerprint") == meta.get("fingerprint")):
        return True
    try:
        if not meta:
            raise ValueError("no record")
        with np.load(folder / SCANS_ARRAYS, allow_pickle=False) as arrays:
            images, labels = arrays["images"], arrays["labels"]
    except (OSError, ValueError, KeyError):
        return cached is not None
    size = spec.image_size
    if images.dtype != np.uint8 or images.shape != (spec.count, size, size) or labels.shape != (spec.count,) \
            or labels.dtype != np.int64 or not isinstance(meta.get("report"), dict):
        return cached is not None
    _write_cache(key, images, labels, meta)
    return _read_cache(key, size) is not None


def _synthetic_key(size: int, seed: int, count: int) -> str:
    """The cache key of the phantom set: settings, cache version and the phantom's source code."""
    from pipeline.data import phantom  # imported here: rendering is only needed on a cache miss

    return _hash_json({"kind": "synthetic", "version": CACHE_VERSION, "size": size, "seed": seed, "count": count,
                       "render": PHANTOM_RENDER_SIZE, "phantom": _module_source_digest(phantom)})


def _load_synthetic(size: int, seed: int, count: int, progress: Optional[ProgressCallback],
                    cache: bool) -> ScanDataset:
    from pipeline.data import phantom  # imported here: rendering is only needed on a cache miss

    key = _synthetic_key(size, seed, count)
    cached = _read_cache(key, size) if cache else None
    if cached is not None:
        images, labels, meta = cached
        report(progress, 1, 1, "loaded the synthetic phantom from cache")
        return _build(images, labels, meta, paths=None, source="synthetic",
                      identity=phantom_identity(size, seed, labels))
    rendered, labels = phantom.synthesize(count, seed=seed, size=PHANTOM_RENDER_SIZE, progress=progress)
    images = np.stack([preprocess_image(np.asarray(image, dtype=np.uint8), size) for image in rendered])
    digests = [_pixel_digest(image) for image in rendered]
    meta = {
        "name": SYNTHETIC_NAME,
        "is_synthetic": True,
        "rel_paths": None,
        "duplicate_groups": _duplicate_groups(digests),
        "fingerprint": _hash_json({"size": size, "seed": seed, "labels": np.asarray(labels).tolist(),
                                   "pixels": digests}),
        "report": LoadReport(notes=[f"rendered {count} synthetic scans from seed {seed}"]).to_dict(),
    }
    labels = np.asarray(labels, dtype=np.int64)
    if cache:
        _write_cache(key, images, labels, meta)
    return _build(images, labels, meta, paths=None, source="synthetic",
                  identity=phantom_identity(size, seed, labels))


def phantom_identity(size: int, seed: int, labels: np.ndarray) -> str:
    """The phantom set's identity (a hex digest): its version, ``size`` in pixels, ``seed`` and ``labels``
    (int ``[N]``), never its pixels (which differ by a grey level in a few pixels between CPUs: 13 of
    2,000 scans at 112 px between two x86 machines)."""
    from pipeline.data.phantom import PHANTOM_VERSION

    return _hash_json({"phantom": PHANTOM_VERSION, "size": size, "seed": seed,
                       "labels": np.asarray(labels).tolist()})


def same_data(stored: Any, current: dict[str, Any]) -> bool:
    """Whether ``stored`` (a run's ``config["dataset"]``, any JSON value) and ``current`` (another run's,
    or :meth:`ScanDataset.record`) name the same scans: by identity where both have one, else by
    fingerprint (runs saved before identities were stored)."""
    stored = stored if isinstance(stored, dict) else {}
    if stored.get("identity") and current.get("identity"):
        return bool(stored["identity"] == current["identity"])
    return bool(stored.get("fingerprint")) and stored.get("fingerprint") == current.get("fingerprint")


def _load_folder(folder: Path, size: int, window: Window, progress: Optional[ProgressCallback],
                 cache: bool) -> ScanDataset:
    layout = discover(folder)
    entries = [(path, CLASSES.index(name)) for name in CLASSES for path in layout.files[name]]
    rel_paths = [path.relative_to(layout.root).as_posix() for path, _ in entries]
    key = _hash_json({"kind": "folder", "version": CACHE_VERSION, "size": size, "window": window,
                      "files": [[rel, *_stat_signature(path), label] for rel, (path, label) in zip(rel_paths, entries)]})
    source = str(layout.root.resolve())
    cached = _read_cache(key, size) if cache else None
    if cached is not None:
        images, labels, meta = cached
        report(progress, 1, 1, "loaded from cache")
        return _build(images, labels, meta, [str(layout.root / rel) for rel in meta["rel_paths"]], source)

    load_report = LoadReport(notes=list(layout.notes))
    results = _decode_all([path for path, _ in entries], size, window, progress)
    kept = []
    for (path, label), rel, result in zip(entries, rel_paths, results):
        if isinstance(result, str):
            load_report.skipped.append(SkippedFile(str(path), result))
            continue
        kept.append((result, label, rel))
        if result[2]:
            load_report.file_notes[str(path)] = list(result[2])
    order, studies, study_notes = _order_by_study(kept)
    load_report.notes += study_notes
    kept_images = [kept[i][0][0] for i in order]
    digests = [kept[i][0][1] for i in order]
    kept_labels = [kept[i][1] for i in order]
    kept_rel = [kept[i][2] for i in order]
    _check_classes(layout.folders, entries, kept_labels, load_report.skipped)
    groups = _duplicate_groups(digests)
    labels = np.asarray(kept_labels, dtype=np.int64)
    mixed = [group for group in groups if len(set(labels[group].tolist())) > 1]
    if groups:
        load_report.notes.append(
            f"{len(groups)} group(s) of byte-identical scans ({sum(map(len, groups))} files); "
            "the grouped split keeps each group on one side"
        )
    if mixed:
        load_report.notes.append(f"{len(mixed)} group(s) of identical scans carry different labels: check them")
    if load_report.skipped:
        load_report.notes.append(f"{len(load_report.skipped)} file(s) could not be read and were skipped")
    meta = {
        "name": f"IQ-OTH/NCCD ({layout.root.name})" if layout.kaggle else f"Folder '{layout.root.name}'",
        "is_synthetic": False,
        "rel_paths": kept_rel,
        "duplicate_groups": groups,
        "fingerprint": _hash_json({"size": size, "window": window, "files": kept_rel,
                                   "labels": labels.tolist(), "pixels": digests,
                                   **({"studies": studies.to_dict()} if studies is not None else {})}),
        "report": load_report.to_dict(),
        "studies": None if studies is None else studies.to_dict(),
    }
    images = np.stack(kept_images)
    if cache:
        _write_cache(key, images, labels, meta)
    return _build(images, labels, meta, [str(layout.root / rel) for rel in kept_rel], source)


def _load_pacs(query: PacsQuery, size: int, window: Window, progress: Optional[ProgressCallback],
               credentials: Optional[Credentials]) -> ScanDataset:
    """A labelled PACS collection, decoded in memory series by series and grouped like a DICOM folder.

    Nothing retrieved is kept: each series' instances are decoded (the same reader as files) and
    dropped. Scans are named ``<class>/series <k>/slice <j>`` (numbers of this load, no identifier).
    """
    pacs = Pacs(query.url, credentials)
    report(progress, 0, 1, "searching the PACS")
    collection = labelled_series(pacs, query)
    load_report = LoadReport(notes=list(collection.notes))
    kept: list[tuple[Decoded, int, str]] = []
    total = len(collection.series)
    for number, (series, label) in enumerate(collection.series, start=1):
        report(progress, number - 1, total, f"retrieving series {number}/{total} from the PACS")
        for index, data in enumerate(pacs.retrieve_series(series)):
            name = f"{label}/series {number}/instance {index + 1}"
            result = _decode_one(data, size, window)
            if isinstance(result, str):
                load_report.skipped.append(SkippedFile(name, result.replace("the uploaded file: ", "", 1)))
                continue
            kept.append((result, CLASSES.index(label), name))
            if result[2]:
                load_report.file_notes[name] = list(result[2])
    report(progress, total, total, f"retrieved {total} series from the PACS")
    if not kept:
        first = "; ".join(f"{item.path}: {item.reason}" for item in load_report.skipped[:3])
        raise DatasetError(f"no instance retrieved from the PACS could be read as a scan. First problems: {first}")
    # each series is one folder: the fallback for a slice without a Series Instance UID
    order, studies, study_notes = index_studies(
        [decoded[3] for decoded, _, _ in kept], [label for _, label, _ in kept],
        patient_folders=[None] * len(kept), series_folders=[rel.rsplit("/", 1)[0] for _, _, rel in kept])
    load_report.notes += study_notes
    present = {kept[i][1] for i in order}
    missing = [name for index, name in enumerate(CLASSES) if index not in present]
    if missing:
        load_report.notes.append(f"no scan of class {', '.join(missing)} in this collection")
    labels = np.asarray([kept[i][1] for i in order], dtype=np.int64)
    digests = [kept[i][0][1] for i in order]
    groups = _duplicate_groups(digests)
    if groups:
        load_report.notes.append(f"{len(groups)} group(s) of identical scans; the grouped split keeps each group "
                                 "on one side")
    if load_report.skipped:
        load_report.notes.append(f"{len(load_report.skipped)} instance(s) could not be read and were skipped")
    source = query.to_source()
    meta = {
        "name": describe(query),
        "is_synthetic": False,
        "duplicate_groups": groups,
        "fingerprint": _hash_json({"source": source, "size": size, "window": window, "labels": labels.tolist(),
                                   "pixels": digests, **({"studies": studies.to_dict()} if studies else {})}),
        "report": load_report.to_dict(),
        "studies": None if studies is None else studies.to_dict(),
    }
    images = np.stack([kept[i][0][0] for i in order])
    return _build(images, labels, meta, None, source)


#: What decoding one file gives: the preprocessed image, its pixel digest, notes and DICOM identity.
Decoded = tuple[np.ndarray, str, tuple[str, ...], Optional[SliceIdentity]]


def _decode_one(path: Path | bytes, size: int, window: Window) -> Decoded | str:
    """Decode and preprocess one file (or its bytes); a string is the reason it was skipped."""
    try:
        scan = open_scan(path, window=window)
    except ScanError as exc:
        return str(exc)
    return preprocess_image(scan.image, size), _pixel_digest(scan.image), scan.notes, scan.identity


def _decode_all(paths: list[Path], size: int, window: Window,
                progress: Optional[ProgressCallback]) -> list[Decoded | str]:
    total = len(paths)
    step = max(1, total // 100)
    results = []
    workers = max(1, min(MAX_WORKERS, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        for done, result in enumerate(pool.map(lambda path: _decode_one(path, size, window), paths), start=1):
            results.append(result)
            if done % step == 0 or done == total:
                report(progress, done, total, f"decoding scans {done}/{total}")
    return results


def _order_by_study(kept: list[tuple[Decoded, int, str]]) -> tuple[np.ndarray, Optional[Studies], list[str]]:
    """DICOM slices in patient, study, series and position order, numbered (see ``studies.index_studies``).

    ``kept`` holds (decoded, label, path relative to the dataset root, which starts with the class folder).
    """
    parts = [Path(rel).parts for _, _, rel in kept]
    return index_studies(
        [decoded[3] for decoded, _, _ in kept],
        [label for _, label, _ in kept],
        patient_folders=["/".join(part[:2]) if len(part) > 2 else None for part in parts],
        series_folders=["/".join(part[:-1]) for part in parts],
    )


def _check_classes(folders: dict[str, Path], entries: list[tuple[Path, int]], kept_labels: list[int],
                   skipped: list[SkippedFile]) -> None:
    """Refuse a dataset where a whole class (or everything) was unreadable, naming why."""
    if not kept_labels:
        first = "; ".join(f"{Path(item.path).name}: {item.reason}" for item in skipped[:3])
        raise DatasetError(f"none of the {len(entries)} files could be read as scans. First problems: {first}")
    present = set(kept_labels)
    for index, name in enumerate(CLASSES):
        if index not in present:
            reasons = [item.reason for item in skipped if folders[name] in Path(item.path).parents][:1]
            raise DatasetError(
                f"no file in class folder '{folders[name].name}' ({name}) could be read"
                f"{': ' + reasons[0] if reasons else ''}. Every class needs at least one readable scan"
            )


def _build(images: np.ndarray, labels: np.ndarray, meta: dict[str, Any], paths: Optional[list[str]],
           source: str, identity: Optional[str] = None) -> ScanDataset:
    stored = meta["report"]
    load_report = LoadReport(
        skipped=[SkippedFile(**item) for item in stored.get("skipped", [])],
        file_notes={key: list(value) for key, value in stored.get("file_notes", {}).items()},
        notes=list(stored.get("notes", [])),
        from_cache=bool(stored.get("from_cache", False)),
    )
    return ScanDataset(
        torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
        labels,
        name=meta["name"],
        source=source,
        paths=paths,
        duplicate_groups=[list(map(int, group)) for group in meta["duplicate_groups"]],
        fingerprint=meta["fingerprint"],
        is_synthetic=bool(meta["is_synthetic"]),
        report=load_report,
        studies=None if meta.get("studies") is None else Studies.from_dict(meta["studies"]),
        identity=identity,
    )


def _pixel_digest(image: np.ndarray) -> str:
    """Content hash of decoded pixels (shape included): identical scans have equal digests."""
    pixels = np.ascontiguousarray(image)
    return hashlib.blake2b(pixels.tobytes() + repr(pixels.shape).encode(), digest_size=16).hexdigest()


def _duplicate_groups(digests: Iterable[str]) -> list[list[int]]:
    """Lists of indices whose digests are equal (only groups of two or more)."""
    by_digest: dict[str, list[int]] = {}
    for index, digest in enumerate(digests):
        by_digest.setdefault(digest, []).append(index)
    return sorted(group for group in by_digest.values() if len(group) > 1)


def _stat_signature(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError:
        return (-1, -1)
    return (stat.st_size, stat.st_mtime_ns)


def _hash_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _module_source_digest(module: Any) -> str:
    """Hash of a module's source (all .py files of a package), so code changes invalidate the cache."""
    folders = getattr(module, "__path__", None)
    files = sorted(file for folder in folders for file in Path(folder).rglob("*.py")) if folders \
        else [Path(module.__file__)]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + file.read_bytes())
    return digest.hexdigest()


def _cache_paths(key: str) -> tuple[Path, Path]:
    folder = cache_dir() / "datasets"
    return folder / f"{key[:32]}.npz", folder / f"{key[:32]}.json"


def _read_cache(key: str, size: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """The cached arrays and record, or None when absent or inconsistent (then it is rebuilt)."""
    arrays_path, meta_path = _cache_paths(key)
    if not (arrays_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = parse_json_object(meta_path.read_text(encoding="utf-8"), meta_path.name, error=DatasetError)
        with np.load(arrays_path, allow_pickle=False) as arrays:
            images, labels = arrays["images"], arrays["labels"]
    except (OSError, ValueError, KeyError):  # DatasetError is a ValueError: damage is a cache miss
        return None
    count = len(labels)
    consistent = (
        meta.get("key") == key and images.dtype == np.uint8 and images.shape == (count, size, size)
        and labels.dtype == np.int64 and (meta.get("rel_paths") is None or len(meta["rel_paths"]) == count)
        and _studies_fit(meta.get("studies"), count)
    )
    if not consistent:
        return None
    meta["report"]["from_cache"] = True
    return images, labels, meta


def _studies_fit(stored: Any, count: int) -> bool:
    """Whether a cached study index is absent or readable with one row per scan."""
    if stored is None:
        return True
    try:
        return len(Studies.from_dict(stored)) == count
    except DatasetError:
        return False


def _write_cache(key: str, images: np.ndarray, labels: np.ndarray, meta: dict[str, Any]) -> None:
    """Write arrays, then the JSON record (which marks the entry complete); failures only cost speed."""
    arrays_path, meta_path = _cache_paths(key)
    try:
        arrays_path.parent.mkdir(parents=True, exist_ok=True)
        for target, write in (
            (arrays_path, lambda handle: np.savez(handle, images=images, labels=labels)),
            (meta_path, lambda handle: handle.write(json.dumps({**meta, "key": key}).encode("utf-8"))),
        ):
            handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
            try:
                with os.fdopen(handle, "wb") as stream:
                    write(stream)
                os.replace(temporary, target)
            finally:
                Path(temporary).unlink(missing_ok=True)
    except OSError as exc:
        meta["report"]["notes"].append(f"the dataset cache could not be written ({exc.strerror or exc})")
