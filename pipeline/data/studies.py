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

Patient IDs are not trusted blindly. De-identification often leaves a placeholder ("ANONYMOUS",
"ANON", "UNKNOWN", "0", "NONE", an empty value, a run of one character such as "000000" or
"XXXX"), and some tools write one ID into every file; taken at face value, such IDs merge every
patient into one and no split by patient is possible. A placeholder is treated as no Patient ID,
and so is one ID shared by every DICOM slice of a collection that spans several patient folders
and several studies.

Fallbacks, each counted in a note and in the split report: slices without a usable Patient ID are
joined into one patient when they share a patient folder (the first folder below the class
folder) or a Study Instance UID, so that neither a patient's several studies nor a study's several
series folders end up as different patients; a slice that has neither a patient folder nor a
study UID is its series' patient. A slice without a Series Instance UID takes its folder as its
series. Slices of a series are sorted by their
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
#: Patient IDs that say nobody in particular (compared case-blind, without spaces, dots, dashes or underscores).
PLACEHOLDER_IDS: Final[frozenset[bytes]] = frozenset({
    b"", b"ANONYMOUS", b"ANON", b"ANONYMIZED", b"ANONYMISED", b"ANONYMOUSPATIENT", b"DEIDENTIFIED", b"REMOVED",
    b"UNKNOWN", b"UNK", b"NONE", b"NULL", b"NA", b"NAN", b"PATIENT", b"PATIENTID", b"ID", b"NOID", b"NOTSTATED",
    b"TEST", b"DEFAULT", b"EMPTY",
})
#: Left out before comparing with the placeholders ("N/A" is "NA", "ANON-" is "ANON").
PLACEHOLDER_PUNCTUATION: Final[bytes] = b" ._-^/\\\0"


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
    #: The file's Patient ID is a placeholder (ANONYMOUS, 0, ...): ``patient`` is None and a fallback groups it.
    placeholder: bool = False

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
    placeholder = is_placeholder_id(patient_id) and "PatientID" in ds
    usable = patient_id and not placeholder
    return SliceIdentity(
        patient=keyed_digest("patient", _raw(ds, "IssuerOfPatientID") or b"", patient_id) if usable else None,
        study=keyed_digest("study", study) if study else None,
        series=keyed_digest("series", series) if series else None,
        position=_position(view),
        instance=_number(view.get("InstanceNumber")),
        placeholder=bool(placeholder),
    )


def is_placeholder_id(value: bytes) -> bool:
    """Whether a Patient ID (raw bytes) names nobody: empty, a known placeholder, all zeros ("0", "000000"),
    or one letter or sign repeated ("XXXX", "****"). Single digits other than 0 may be real research IDs."""
    letters = bytes(value).upper().translate(None, PLACEHOLDER_PUNCTUATION)
    repeated = len(set(letters)) == 1 and (letters[:1] == b"0" or not letters[:1].isdigit())
    return letters in PLACEHOLDER_IDS or repeated


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
    #: How patients were told apart where Patient IDs could not be trusted (counts only; empty when they could).
    grouping: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "grouping", tuple(str(note) for note in self.grouping))
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
        return Studies(*(getattr(self, level)[rows] for level in (*LEVELS, "slice")), grouping=self.grouping)

    def to_dict(self) -> dict[str, Any]:
        return {**{level: getattr(self, level).tolist() for level in (*LEVELS, "slice")}, "grouping": list(self.grouping)}

    @classmethod
    def from_dict(cls, data: Any) -> "Studies":
        try:
            return cls(*(np.asarray(data[level], dtype=np.int64) for level in (*LEVELS, "slice")),
                       grouping=tuple(str(note) for note in data.get("grouping", ())))
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
    shared = _shared_id(identities, patient_folders)
    patients = [None if identity is None or shared else identity.patient for identity in identities]
    fallback, basis = _fallback_patients(identities, patient_folders, patients)
    keys: list[Optional[tuple[str, str, str]]] = []
    no_series = 0
    for identity, patient, series_folder in zip(identities, fallback, series_folders):
        if identity is None or patient is None:
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
    untrusted = [identity for identity, patient in zip(identities, patients) if identity is not None and patient is None]
    grouping = _grouping_notes(
        placeholders=sum(identity.placeholder for identity in untrusted),
        missing=sum(identity.patient is None and not identity.placeholder for identity in untrusted),
        shared=shared, basis=basis,
        patients=len({key[0] for key, patient in zip(keys, patients) if key is not None and patient is None}),
    )
    studies = Studies(*(numbers[level] for level in (*LEVELS, "slice")), grouping=tuple(grouping))
    return order, studies, _notes(studies, np.asarray(labels)[order], no_series, sum(key is None for key in keys))


def _shared_id(identities: Sequence[Optional[SliceIdentity]], patient_folders: Sequence[Optional[str]]
               ) -> Optional[tuple[int, int, int]]:
    """(slices, folders, studies) when one Patient ID is on every slice that has one, across several patient
    folders and several studies: an ID that tells nobody apart (a de-identifier's constant); else None."""
    rows = [index for index, identity in enumerate(identities) if identity is not None and identity.patient]
    if len({identities[index].patient for index in rows}) != 1:  # type: ignore[union-attr]
        return None
    folders = {patient_folders[index] for index in rows if patient_folders[index] is not None}
    studies = {identities[index].study for index in rows if identities[index].study}  # type: ignore[union-attr]
    return (len(rows), len(folders), len(studies)) if len(folders) >= 2 and len(studies) >= 2 else None


def _fallback_patients(identities: Sequence[Optional[SliceIdentity]], patient_folders: Sequence[Optional[str]],
                       patients: Sequence[Optional[str]]) -> tuple[list[Optional[str]], dict[str, int]]:
    """A patient key per slice: its trusted Patient ID, else the fallback of the module docstring.

    Slices without a trusted ID that share a patient folder or a Study Instance UID are one patient
    (union-find over both); one with neither is its series' patient; with no series either, None.
    Also returns how many slices each basis grouped: folder, study (no patient folder), series.
    """
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def root(node: tuple[str, str]) -> tuple[str, str]:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    nodes: list[list[tuple[str, str]]] = []
    basis = {"folder": 0, "study": 0, "series": 0}
    for identity, folder, patient in zip(identities, patient_folders, patients):
        if identity is None or patient is not None:
            nodes.append([])
            continue
        own = [("folder", folder)] if folder is not None else []
        own += [("study", identity.study)] if identity.study else []
        if not own and identity.series:
            own = [("series", identity.series)]
        if own:
            basis[own[0][0]] += 1
        for node in own[1:]:
            parent[root(node)] = root(own[0])
        nodes.append(own)
    keys = [patient if patient is not None else (keyed_digest("fallback", *root(own[0])) if own else None)
            for patient, own in zip(patients, nodes)]
    return keys, basis


def _grouping_notes(*, placeholders: int, missing: int, shared: Optional[tuple[int, int, int]],
                    basis: dict[str, int], patients: int) -> list[str]:
    """What the Patient IDs could not say and how patients were told apart instead, as one note (counts only)."""
    reasons = []
    if placeholders:
        reasons.append(f"{placeholders} DICOM slice(s) carry an empty or placeholder Patient ID (such as ANONYMOUS, "
                       "ANON, UNKNOWN or 0, as de-identification leaves), which was not used")
    if shared:
        slices, folders, studies = shared
        reasons.append(f"all {slices} DICOM slices with a Patient ID carry the same one, across {folders} patient "
                       f"folders and {studies} studies: it cannot tell patients apart, so it was not used")
    if missing:
        reasons.append(f"{missing} DICOM slice(s) carry no Patient ID")
    if not reasons:
        return []
    parts = [f"{basis['folder']} by their patient folder" if basis["folder"] else "",
             f"{basis['study']} lying directly in a class folder by their study (each study taken as one patient)"
             if basis["study"] else "",
             f"{basis['series']} with neither by their series" if basis["series"] else ""]
    notes = ["; ".join(reasons) + f". Those slices were grouped into {patients} patient(s): "
             + "; ".join(part for part in parts if part)
             + " (slices sharing a patient folder or a Study Instance UID count as one patient)"]
    return notes


def _notes(studies: Studies, labels: np.ndarray, no_series: int, unplaced: int) -> list[str]:
    counts = studies.counts()
    notes = [f"DICOM studies: {counts['patients']} patients, {counts['studies']} studies, {counts['series']} series, "
             f"{counts['slices']} slices; the grouped split keeps each patient on one side", *studies.grouping]
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
    return {"sides": per_side, "patients_on_two_sides": across, "summary": summary,
            "patient_grouping": list(studies.grouping)}
