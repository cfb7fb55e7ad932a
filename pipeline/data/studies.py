"""DICOM studies in a dataset folder: whose slice each file is, without ever holding who that is.

A folder of DICOM series (``benign/<patient>/<study>/<series>/*.dcm``, or any nesting below the
class folders) must be split by patient: slices of one body on both sides of a split let a
model recognise the patient instead of the disease. The identifiers that say whose slice a
file is (Patient ID with its issuer, Study and Series Instance UID) are read here as raw bytes
(never decoded, validated or logged, so no parser warning can quote them) and at once replaced
by a keyed BLAKE2b digest under a key drawn fresh for each process. The digests only decide
which slices belong together; :func:`index_studies` then numbers patients, studies and series
0, 1, 2, ... in the order they first appear, and only those numbers are kept, cached or
reported. Nothing here returns, logs or stores an identifier or a digest of one.

Fallbacks, each counted in a note: a slice without a Patient ID belongs to its patient folder
(the first folder below its class folder) or, directly in the class folder, to its study; a
slice without a Series Instance UID to its folder. Slices of a series are sorted by their
position along the slice normal (Image Position (Patient) projected on the cross product of the
Image Orientation (Patient) direction cosines, as in PS3.3 C.7.6.2.1.1), then by Slice
Location, then by Instance Number.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from dataclasses import dataclass
from typing import Any, Final, Optional, Sequence

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from pipeline.errors import DatasetError

#: Key of the digests: fresh per process, never written anywhere, so a digest cannot be
#: matched against a list of guessed identifiers (medical record numbers are short).
_KEY: Final[bytes] = secrets.token_bytes(32)
LEVELS: Final[tuple[str, ...]] = ("patient", "study", "series")


@dataclass(frozen=True)
class SliceIdentity:
    """Where one DICOM slice belongs: keyed digests (or None when the file does not say) and its place.

    ``position`` is in millimetres along the slice normal; ``instance`` is the Instance Number.
    """

    patient: Optional[str]
    study: Optional[str]
    series: Optional[str]
    position: Optional[float]
    instance: Optional[int]

    def __repr__(self) -> str:  # the digests are not identifiers, but there is no reason to print them
        return f"SliceIdentity(position={self.position}, instance={self.instance})"


def keyed_digest(*parts: str | bytes) -> str:
    """A keyed BLAKE2b digest (hex) of ``parts``; meaningless outside this process."""
    digest = hashlib.blake2b(key=_KEY, digest_size=16)
    for part in parts:
        data = part.encode("utf-8", "surrogateescape") if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def slice_identity(ds: Dataset, view: Dataset) -> SliceIdentity:
    """The identity of one slice: identifiers from ``ds``, position from ``view`` (the frame's attributes)."""
    patient_id = _raw(ds, "PatientID")
    study = _raw(ds, "StudyInstanceUID")
    series = _raw(ds, "SeriesInstanceUID")
    return SliceIdentity(
        patient=keyed_digest("patient", _raw(ds, "IssuerOfPatientID") or b"", patient_id) if patient_id else None,
        study=keyed_digest("study", study) if study else None,
        series=keyed_digest("series", series) if series else None,
        position=_position(view),
        instance=_number(view.get("InstanceNumber")),
    )


def _raw(ds: Dataset, keyword: str) -> bytes:
    """The element's stored bytes, stripped of padding, without converting (or validating) its value."""
    tag = tag_for_keyword(keyword)
    if tag is None or tag not in ds:
        return b""
    element = ds.get_item(tag)
    value: Any = element.value if element is not None else None
    if value is None:
        return b""
    if not isinstance(element, RawDataElement):
        value = str(value).encode("utf-8", "surrogateescape")
    return bytes(value).strip(b" \x00")


def _position(view: Dataset) -> Optional[float]:
    """Millimetres along the slice normal; Slice Location when the geometry is missing; else None."""
    try:
        origin = np.asarray([float(value) for value in view.get("ImagePositionPatient") or ()], dtype=np.float64)
        cosines = np.asarray([float(value) for value in view.get("ImageOrientationPatient") or ()], dtype=np.float64)
        if origin.shape == (3,) and cosines.shape == (6,):
            normal = np.cross(cosines[:3], cosines[3:])
            if np.isfinite(normal).all() and np.linalg.norm(normal) > 0.5:
                position = float(origin @ normal)
                if math.isfinite(position):
                    return position
    except (TypeError, ValueError):
        pass
    location = _number(view.get("SliceLocation"), float)
    return location


def _number(value: Any, kind: type = int) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class Studies:
    """Per scan of a dataset: its patient, study and series numbers and its slice rank in the series.

    All four are int64 arrays ``[N]``; -1 marks a scan that is not a DICOM slice with an identity
    (a JPEG beside the DICOMs). Patients are numbered 0.. in the order they first appear.
    """

    patient: np.ndarray
    study: np.ndarray
    series: np.ndarray
    slice: np.ndarray

    def __post_init__(self) -> None:
        arrays = [np.asarray(getattr(self, level), dtype=np.int64).reshape(-1) for level in (*LEVELS, "slice")]
        if len({len(array) for array in arrays}) != 1:
            raise DatasetError(
                "the stored study index is damaged (its columns differ in length); load the folder again")
        for level, array in zip((*LEVELS, "slice"), arrays):
            object.__setattr__(self, level, array)

    def __len__(self) -> int:
        return len(self.patient)

    def take(self, rows: np.ndarray) -> "Studies":
        """The rows of a subset, in its order (numbers kept, so they still match the whole dataset's)."""
        return Studies(*(getattr(self, level)[rows] for level in (*LEVELS, "slice")))

    def to_dict(self) -> dict[str, list[int]]:
        return {level: getattr(self, level).tolist() for level in (*LEVELS, "slice")}

    @classmethod
    def from_dict(cls, data: Any) -> "Studies":
        try:
            return cls(*(np.asarray(data[level], dtype=np.int64) for level in (*LEVELS, "slice")))
        except (KeyError, TypeError, ValueError):
            raise DatasetError("the stored study index is damaged; load the folder again") from None

    def counts(self, rows: Optional[np.ndarray] = None) -> dict[str, int]:
        """How many patients, studies, series and slices ``rows`` (all scans by default) hold."""
        chosen = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        known = chosen[self.patient[chosen] >= 0]
        return {
            "patients": int(len(np.unique(self.patient[known]))),
            "studies": int(len(np.unique(self.study[known]))),
            "series": int(len(np.unique(self.series[known]))),
            "slices": int(len(known)),
        }

    def neighbour_pairs(self) -> np.ndarray:
        """Pairs ``(i, j)`` of scans that are consecutive slices of one series: ``[P, 2]`` int64."""
        rows = np.flatnonzero(self.series >= 0)
        order = rows[np.lexsort((self.slice[rows], self.series[rows]))]
        first, second = order[:-1], order[1:]
        keep = (self.series[first] == self.series[second]) & (self.slice[second] == self.slice[first] + 1)
        return np.stack([first[keep], second[keep]], axis=1).astype(np.int64)

    def patient_pairs(self) -> np.ndarray:
        """A chain of links joining every patient's scans into one group: ``[P, 2]`` int64."""
        rows = np.flatnonzero(self.patient >= 0)
        order = rows[np.argsort(self.patient[rows], kind="stable")]
        first, second = order[:-1], order[1:]
        keep = self.patient[first] == self.patient[second]
        return np.stack([first[keep], second[keep]], axis=1).astype(np.int64)


def index_studies(identities: Sequence[Optional[SliceIdentity]], labels: Sequence[int],
                  patient_folders: Sequence[Optional[str]], series_folders: Sequence[str],
                  ) -> tuple[np.ndarray, Optional[Studies], list[str]]:
    """Order the scans (by class, then patient, study, series and slice position) and number them.

    ``identities[i]`` is None for a scan that is not DICOM. ``patient_folders[i]`` is the first
    folder below scan i's class folder (None when the file lies directly in it), and
    ``series_folders[i]`` its own folder; both are the fallbacks described in the module
    docstring. Returns the new order (indices into the inputs), the study index of the scans in
    that order (None when no scan is a DICOM slice) and notes that give counts only.
    """
    count = len(identities)
    if not any(identity is not None for identity in identities):
        return np.arange(count), None, []
    keys: list[Optional[tuple[str, str, str]]] = []
    by_folder = by_study = no_series = 0
    for identity, patient_folder, series_folder in zip(identities, patient_folders, series_folders):
        if identity is None:
            keys.append(None)
            continue
        patient = identity.patient
        if patient is None and patient_folder is not None:
            patient, by_folder = keyed_digest("folder", patient_folder), by_folder + 1
        elif patient is None and identity.study is not None:
            patient, by_study = keyed_digest("study-as-patient", identity.study), by_study + 1
        if patient is None:
            keys.append(None)
            continue
        study = identity.study or keyed_digest("no study", patient)
        series = identity.series
        if series is None:
            series, no_series = keyed_digest("folder", series_folder), no_series + 1
        keys.append((patient, study, series))
    first_seen: dict[tuple[str, ...], int] = {}
    for index, key in enumerate(keys):
        if key is not None:
            for depth in range(1, 4):
                first_seen.setdefault(key[:depth], index)

    def place(index: int) -> tuple:
        key, identity = keys[index], identities[index]
        if key is None or identity is None:
            return (labels[index], 1, 0, 0, 0, 0, 0.0, 0, 0, index)
        position, instance = identity.position, identity.instance
        return (labels[index], 0, *(first_seen[key[:depth]] for depth in range(1, 4)),
                position is None, position or 0.0, instance is None, instance or 0, index)

    order = np.asarray(sorted(range(count), key=place), dtype=np.int64)
    numbers = {level: np.full(count, -1, dtype=np.int64) for level in (*LEVELS, "slice")}
    seen: list[dict[tuple[str, ...], int]] = [{}, {}, {}]
    ranks: dict[tuple[str, ...], int] = {}
    for row, index in enumerate(order):
        key = keys[index]
        if key is None:
            continue
        for depth, level in enumerate(LEVELS):
            numbers[level][row] = seen[depth].setdefault(key[:depth + 1], len(seen[depth]))
        numbers["slice"][row] = ranks.get(key, 0)
        ranks[key] = numbers["slice"][row] + 1
    studies = Studies(*(numbers[level] for level in (*LEVELS, "slice")))
    return order, studies, _notes(studies, np.asarray(labels)[order], by_folder, by_study, no_series,
                                  sum(key is None for key in keys))


def _notes(studies: Studies, labels: np.ndarray, by_folder: int, by_study: int, no_series: int,
           unplaced: int) -> list[str]:
    counts = studies.counts()
    notes = [f"DICOM studies: {counts['patients']} patients, {counts['studies']} studies, {counts['series']} series, "
             f"{counts['slices']} slices; the grouped split keeps each patient on one side"]
    if by_folder:
        notes.append(f"{by_folder} DICOM slice(s) carry no Patient ID and were grouped by their patient folder")
    if by_study:
        notes.append(f"{by_study} DICOM slice(s) carry no Patient ID and lie directly in a class folder; "
                     "each study was taken as one patient")
    if no_series:
        notes.append(f"{no_series} DICOM slice(s) carry no Series Instance UID; their folder was taken as the series")
    if unplaced:
        notes.append(f"{unplaced} DICOM file(s) name no patient, study or folder and are grouped like other images")
    known = studies.patient >= 0
    pairs = np.unique(np.stack([studies.patient[known], labels[known]], axis=1), axis=0)
    mixed = int((np.bincount(pairs[:, 0]) > 1).sum()) if len(pairs) else 0
    if mixed:
        notes.append(f"{mixed} patient(s) have slices in more than one class folder: check the labels")
    return notes


def side_report(studies: Studies, sides: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per side of a split: patients, studies, series and slices, and how many patients sit on two sides."""
    side_of = np.full(len(studies), -1, dtype=np.int64)
    for index, rows in enumerate(sides.values()):
        side_of[np.asarray(rows, dtype=np.int64)] = index
    known = (studies.patient >= 0) & (side_of >= 0)
    pairs = np.unique(np.stack([studies.patient[known], side_of[known]], axis=1), axis=0)
    across = int((np.bincount(pairs[:, 0]) > 1).sum()) if len(pairs) else 0
    per_side = {name: studies.counts(np.asarray(rows, dtype=np.int64)) for name, rows in sides.items()}
    summary = "; ".join(f"{name}: {c['patients']} patients, {c['series']} series, {c['slices']} slices"
                        for name, c in per_side.items())
    return {"sides": per_side, "patients_on_two_sides": across, "summary": summary}
