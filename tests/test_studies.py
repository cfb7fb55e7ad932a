"""A folder of DICOM studies splits by patient, slices in position order, and no identifier gets out."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest

from pipeline.data import leakage_report, load_dataset, open_scan, split_dataset
from pipeline.data.splits import SIDES
from tests.dicom_studies import MARK, UID_ROOT, Studies, make_dicom_studies


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Studies:
    return make_dicom_studies(tmp_path_factory.mktemp("studies") / "export")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LUNGLAB_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def side_of_each_file(ds, split) -> dict[Path, str]:
    return {Path(ds.paths[row]): name for name in SIDES for row in getattr(split, name)}


def test_slices_are_numbered_by_patient_and_sorted_by_position(studies: Studies, cache: Path) -> None:
    ds = load_dataset(studies.root, image_size=32)
    assert ds.studies is not None
    assert ds.studies.counts() == {"patients": 12, "studies": 15, "series": 18, "slices": len(studies.slices)}
    row = {Path(path): index for index, path in enumerate(ds.paths)}
    by_series: dict[str, list] = {}
    for item in studies.slices:
        by_series.setdefault(item.series, []).append(item)
    for members in by_series.values():
        rows = [row[item.path] for item in sorted(members, key=lambda item: item.z)]
        assert rows == list(range(rows[0], rows[0] + len(rows))), "a series is not contiguous in position order"
        assert ds.studies.slice[rows].tolist() == list(range(len(rows)))
        assert len(set(ds.studies.series[rows].tolist())) == 1
    for patient in studies.patients():  # one number per patient, whether by Patient ID or by its folder
        numbers = {int(ds.studies.patient[row[item.path]]) for item in studies.slices if item.patient == patient}
        assert len(numbers) == 1
    assert any("no Patient ID" in note and "patient folder" in note for note in ds.report.notes)
    again = load_dataset(studies.root, image_size=32)
    assert again.report.from_cache and again.paths == ds.paths
    assert again.studies.to_dict() == ds.studies.to_dict() and again.fingerprint == ds.fingerprint


def test_grouped_split_keeps_every_patient_on_one_side_and_reports_it(studies: Studies, cache: Path) -> None:
    ds = load_dataset(studies.root, image_size=32)
    for seed in range(4):
        split = split_dataset(ds, seed=seed, val_fraction=0.25, test_fraction=0.25)
        side = side_of_each_file(ds, split)
        for patient in studies.patients():
            assert len({side[item.path] for item in studies.slices if item.patient == patient}) == 1
        report = split.report["studies"]
        assert report["patients_on_two_sides"] == 0
        assert sum(counts["patients"] for counts in report["sides"].values()) == 12
        assert sum(counts["slices"] for counts in report["sides"].values()) == len(studies.slices)
        train = report["sides"]["train"]
        assert report["summary"].startswith(
            f"train: {train['patients']} patients, {train['series']} series, {train['slices']} slices; val: ")
        assert leakage_report(ds, split)["patients_on_two_sides"] == 0
        assert leakage_report(ds, split)["adjacent_slices_across"] == 0


def test_a_random_split_is_caught_putting_patients_on_two_sides(studies: Studies, cache: Path) -> None:
    ds = load_dataset(studies.root, image_size=32)
    split = split_dataset(ds, seed=0, strategy="random")
    assert split.report["studies"]["patients_on_two_sides"] > 0
    leaks = leakage_report(ds, split)
    assert leaks["patients_on_two_sides"] > 0 and leaks["adjacent_slices_across"] > 0


def test_no_identifier_in_any_output_log_or_file(studies: Studies, cache: Path, caplog: pytest.LogCaptureFixture,
                                                 tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(studies.root, image_size=32)
        split = split_dataset(ds, seed=0)
        scan = open_scan(studies.slices[0].path)
        texts = [
            json.dumps(ds.report.to_dict()), repr(ds), ds.name, json.dumps(split.to_dict()),
            json.dumps(leakage_report(ds, split)), json.dumps(ds.studies.to_dict()), repr(scan), str(scan.notes),
        ]
    texts += [record.getMessage() for record in caplog.records] + [str(warning.message) for warning in caught]
    written = [path.read_bytes() for path in cache.rglob("*") if path.is_file()]
    assert written, "the dataset cache was not written, so this test checked nothing on disk"
    assert any(MARK in value for value in studies.identifiers)
    assert any(UID_ROOT in value for value in studies.identifiers)
    for identifier in [*studies.identifiers, MARK, UID_ROOT]:
        assert not any(identifier in text for text in texts), f"{identifier!r} shown or logged"
        assert not any(identifier.encode() in data for data in written), f"{identifier!r} stored"
