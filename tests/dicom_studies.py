"""A small folder tree of DICOM CT series per patient, as a hospital export lays it out.

``make_dicom_studies`` writes ``<class>/<case folder>/<series folder>/<random name>.dcm``: every
patient has one or two studies, each with one or two series of a few slices, and the slices are
named at random, so that only their Image Position (Patient) puts them in order (their Instance
Numbers run backwards in some series). Every identifier (Patient ID and Name, Study and Series
Instance UID, accession number) is a unique marker string, so a test can look for any of them in
any output. One patient has no Patient ID at all and is known only by its case folder. The
pixels differ from patient to patient (random organs) and change slowly along a series.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

CLASS_FOLDERS = ("benign", "malignant", "normal")
#: Every identifier starts with this, so a search for it finds any that leaked.
MARK = "QZXID"
#: UIDs are digits and dots only: these roots are unique to the fixture and searched for too.
UID_ROOT = "1.2.826.0.1.3680043.99.7"


@dataclass
class Slice:
    path: Path
    patient: str  #: the fixture's own name for the patient (not in the file)
    series: str
    z: float


@dataclass
class Studies:
    root: Path
    slices: list[Slice] = field(default_factory=list)
    identifiers: list[str] = field(default_factory=list)

    def patients(self) -> set[str]:
        return {item.patient for item in self.slices}


def make_dicom_studies(root: Path, *, patients_per_class: int = 4, size: int = 48, seed: int = 0) -> Studies:
    """Write the tree under ``root``; returns every slice with its patient, series and position."""
    rng = np.random.default_rng(seed)
    studies = Studies(Path(root))
    uid_counter = iter(range(1, 10**6))

    def uid() -> str:
        value = f"{UID_ROOT}.{next(uid_counter)}"
        studies.identifiers.append(value)
        return value

    for label in CLASS_FOLDERS:
        for number in range(patients_per_class):
            patient = f"{label}-{number}"
            anatomy = _anatomy(rng, size)
            has_id = not (label == "normal" and number == 0)
            patient_id, name = f"{MARK}-PID-{patient}", f"{MARK}^NAME^{patient}"
            if has_id:
                studies.identifiers += [patient_id, name]
            for study in range(2 if number == 1 else 1):
                study_uid, accession = uid(), f"{MARK}A{label[0]}{number}{study}"
                studies.identifiers.append(accession)
                for series in range(2 if number == 2 else 1):
                    series_uid = uid()
                    count = int(rng.integers(4, 7))
                    folder = root / label / f"case {number}" / f"study {study} series {series}"
                    folder.mkdir(parents=True)
                    for index in rng.permutation(count):
                        z = 100.0 + 2.5 * index - 40.0 * series
                        ds = _slice(anatomy, int(index), z, study_uid, series_uid, uid())
                        ds.InstanceNumber = count - int(index) if series == 0 else int(index) + 1
                        if has_id:
                            ds.PatientID, ds.PatientName = patient_id, name
                        ds.AccessionNumber = accession
                        path = folder / f"{rng.integers(16**8):08x}.dcm"
                        ds.save_as(path, enforce_file_format=True)
                        studies.slices.append(Slice(path, patient, f"{patient}/{study}/{series}", z))
    return studies


def _anatomy(rng: np.random.Generator, size: int) -> np.ndarray:
    """A body (40 HU) in air with two lungs and random blobs: one patient's look."""
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    hu = np.where((xx / 0.45) ** 2 + (yy / 0.35) ** 2 <= 1, 40.0, -1000.0)
    for side in (-0.2, 0.2):
        hu = np.where(((xx - side) / 0.13) ** 2 + (yy / 0.22) ** 2 <= 1, -820.0, hu)
    for _ in range(6):
        cx, cy, radius = rng.uniform(-0.35, 0.35), rng.uniform(-0.25, 0.25), rng.uniform(0.03, 0.1)
        hu = np.where((xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2, rng.uniform(-300, 300), hu)
    return hu


def _slice(anatomy: np.ndarray, index: int, z: float, study_uid: str, series_uid: str,
           instance_uid: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, instance_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.Modality, ds.SamplesPerPixel, ds.PhotometricInterpretation = "CT", 1, "MONOCHROME2"
    ds.Rows, ds.Columns = anatomy.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-120.0, -120.0, z]
    ds.PixelSpacing = [0.7, 0.7]
    hu = np.roll(anatomy, index, axis=0) + 15.0 * index  # neighbouring slices look alike
    ds.PixelData = (np.clip(hu, -1024, 3000) + 1024).astype("<u2").tobytes()
    return ds

