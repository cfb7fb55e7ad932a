"""Placeholder or shared Patient IDs do not merge patients (issue 23, point 3b).

De-identified exports often write one Patient ID into every file ("ANONYMOUS", "", "0", ...). The
hospital-export fixture of ``tests/dicom_studies.py`` (nine patients, three per class, one with
two studies and one with two series) is rewritten so that every slice carries such an ID; the
split must still be by patient (patient folder, then Study Instance UID, then Series Instance UID)
and say so, instead of "1 patients" and a 100/0/0 split.
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from pipeline.data import leakage_report, load_dataset, split_dataset
from pipeline.data.splits import SIDES
from pipeline.data.studies import is_placeholder_id
from tests.dicom_studies import Studies, make_dicom_studies


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Studies:
    return make_dicom_studies(tmp_path_factory.mktemp("placeholder") / "export", patients_per_class=3)


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUNGLAB_CACHE_DIR", str(tmp_path / "cache"))


def _rewrite(export: Studies, root: Path, patient_id: str | None, *, flat: bool = False,
             drop_study: bool = False) -> dict[Path, str]:
    """A copy of the export where every slice has ``patient_id`` (None: no Patient ID element at all).

    ``flat`` puts every file directly in its class folder (no patient folder to fall back on);
    ``drop_study`` removes the Study Instance UID too. Returns each new file's fixture patient.
    """
    owners = {}
    for number, item in enumerate(export.slices):
        ds = pydicom.dcmread(item.path)
        if patient_id is None:
            ds.pop("PatientID", None)
        else:
            ds.PatientID = patient_id
        if drop_study:
            del ds.StudyInstanceUID
        relative = item.path.relative_to(export.root)
        target = root / relative.parts[0] / f"{number:04d}.dcm" if flat else root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target, enforce_file_format=True)
        owners[target] = item.patient
    return owners


def _sides_of_patients(ds, split, owners: dict[Path, str]) -> dict[str, set[str]]:
    sides: dict[str, set[str]] = {}
    for name in SIDES:
        for row in getattr(split, name):
            sides.setdefault(owners[Path(ds.paths[row])], set()).add(name)
    return sides


@pytest.mark.parametrize("patient_id", ["ANONYMOUS", "", "0", "ANON", "UNKNOWN", "N/A", "000000", None,
                                        "SAME-FOR-EVERYONE-42"])
def test_nine_patient_folders_with_one_placeholder_id_split_by_patient(export: Studies, tmp_path: Path,
                                                                       patient_id: str | None) -> None:
    owners = _rewrite(export, tmp_path / "anon", patient_id)
    ds = load_dataset(tmp_path / "anon", image_size=32)
    assert ds.studies is not None
    assert ds.studies.counts()["patients"] == 9, ds.report.notes  # one per patient folder, not "1 patients"
    note = next(note for note in ds.report.notes if "Those slices were grouped into 9 patient(s)" in note)
    expected = {None: "carry no Patient ID", "SAME-FOR-EVERYONE-42": "carry the same one, across 9 patient folders"}
    assert expected.get(patient_id, "empty or placeholder Patient ID") in note
    split = split_dataset(ds, seed=0, val_fraction=0.25, test_fraction=0.25)
    assert min(len(split.train), len(split.val), len(split.test)) > 0, split.report["sizes"]
    sides = _sides_of_patients(ds, split, owners)
    assert len(sides) == 9 and all(len(names) == 1 for names in sides.values()), "a patient is on two sides"
    report = split.report["studies"]
    assert report["patients_on_two_sides"] == 0 and report["patient_grouping"] == [note]
    assert leakage_report(ds, split)["patient_grouping"] == [note]
    assert "SAME-FOR-EVERYONE" not in json.dumps(split.to_dict()) + json.dumps(ds.report.to_dict())


def test_without_patient_folders_each_study_then_each_series_is_a_patient(export: Studies, tmp_path: Path) -> None:
    """Files straight in the class folders: the study groups them; with no study UID either, the series."""
    _rewrite(export, tmp_path / "flat", "ANONYMOUS", flat=True)
    by_study = load_dataset(tmp_path / "flat", image_size=32)
    studies = len({(item.patient, item.series.split("/")[1]) for item in export.slices})
    assert by_study.studies.counts()["patients"] == studies == 12
    assert any(f"{len(export.slices)} lying directly in a class folder by their study" in note
               for note in by_study.report.notes)

    _rewrite(export, tmp_path / "flat-no-study", "ANONYMOUS", flat=True, drop_study=True)
    by_series = load_dataset(tmp_path / "flat-no-study", image_size=32)
    assert by_series.studies.counts()["patients"] == len({item.series for item in export.slices}) == 15
    assert any("with neither by their series" in note for note in by_series.report.notes)


def test_real_ids_are_still_trusted_and_a_patients_two_studies_stay_one_patient(export: Studies,
                                                                               tmp_path: Path) -> None:
    """Distinct IDs (also "1".."9", which research sets use) group as before; a shared folder joins studies."""
    root = tmp_path / "numbered"
    for number, item in enumerate(export.slices):
        ds = pydicom.dcmread(item.path)
        ds.PatientID = str(1 + sorted(export.patients()).index(item.patient))
        target = root / item.path.relative_to(export.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target, enforce_file_format=True)
    ds = load_dataset(root, image_size=32)
    assert ds.studies.counts() == {"patients": 9, "studies": 12, "series": 15, "slices": len(export.slices)}
    assert ds.studies.grouping == () and not any("Patient ID" in note for note in ds.report.notes)


@pytest.mark.parametrize("value, placeholder", [
    (b"ANONYMOUS", True), (b"anonymous ", True), (b"", True), (b"0", True), (b"0000", True), (b"XXXXXX", True),
    (b"N/A", True), (b"Unknown", True), (b"NONE", True), (b"1", False), (b"7", False), (b"PAT-0042", False),
    (b"123456", False), (b"ANON-17", False),
])
def test_placeholder_ids_are_recognised(value: bytes, placeholder: bool) -> None:
    assert is_placeholder_id(value) is placeholder

