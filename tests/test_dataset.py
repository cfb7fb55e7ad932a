"""Folder datasets as Kaggle ships IQ-OTH/NCCD, the plain layout, bad folders, the cache and the phantom."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.data import get_testdata_file

from pipeline.constants import CLASSES
from pipeline.data import (
    DataSpec,
    adopt_synthetic_scans,
    export_synthetic_scans,
    load_dataset,
    preprocess_image,
    read_scan,
    same_data,
)
from pipeline.data.dataset import SCANS_ARRAYS, SCANS_RECORD, cache_dir
from pipeline.data.kaggle import download_iqothnccd
from pipeline.errors import DatasetError, UserInputError
from tests.fixtures import FOLDERS, ODD_SIZES, make_kaggle_folder

SIZE = 32


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own cache folder, so cache hits are the test's own doing."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("LUNGLAB_CACHE_DIR", str(folder))
    return folder


def test_kaggle_layout_loads_with_real_names_sizes_and_order(tmp_path: Path) -> None:
    fixture = make_kaggle_folder(tmp_path / "download")
    calls = []
    ds = load_dataset(
        fixture.root, image_size=SIZE, progress=lambda done, total, message: calls.append((done, total))
    )

    assert ds.classes == CLASSES and not ds.is_synthetic and "IQ-OTH/NCCD" in ds.name
    assert ds.class_counts() == fixture.counts and len(ds) == sum(fixture.counts.values())
    assert ds.images.dtype == torch.uint8 and tuple(ds.images.shape) == (len(ds), SIZE, SIZE)
    assert ds.image_size == SIZE and Path(ds.source) == fixture.dataset_dir.resolve()
    x, y = ds[0]
    assert x.dtype == torch.float32 and tuple(x.shape) == (1, SIZE, SIZE) and 0 <= x.min() <= x.max() <= 1
    assert isinstance(y, int) and y == 0
    xs, ys = ds.tensors()
    assert tuple(xs.shape) == (len(ds), 1, SIZE, SIZE) and ys.dtype == torch.int64
    assert torch.equal(xs[5], ds[5][0]) and np.array_equal(ys.numpy(), ds.labels)
    assert calls[-1] == (len(ds), len(ds))

    malignant = [Path(path).name for path, label in zip(ds.paths, ds.labels) if label == 1]
    assert malignant[:3] == ["Malignant case (1).jpg", "Malignant case (2).jpg", "Malignant case (3).jpg"]
    assert malignant.index("Malignant case (10).jpg") == 9  # natural order, not (1), (10), (11)...
    assert not any("Test case" in path or path.endswith(".txt") for path in ds.paths)
    assert any("Test cases" in note and "ignored" in note for note in ds.report.notes)


def test_odd_sizes_and_three_channel_files_match_single_reads(tmp_path: Path) -> None:
    fixture = make_kaggle_folder(tmp_path / "download")
    ds = load_dataset(fixture.root, image_size=SIZE)
    index = {Path(path): i for i, path in enumerate(ds.paths)}
    odd = [fixture.path(label, number) for label, number in ODD_SIZES]
    for path in odd + fixture.three_channel[:3]:
        assert np.array_equal(ds.images[index[path]].numpy(), preprocess_image(read_scan(path), SIZE))
    assert read_scan(odd[1]).shape == (512, 801)


def test_duplicate_groups_are_the_byte_identical_files(tmp_path: Path) -> None:
    fixture = make_kaggle_folder(tmp_path / "download")
    ds = load_dataset(fixture.root, image_size=SIZE)
    found = {frozenset(Path(ds.paths[i]) for i in group) for group in ds.duplicate_groups}
    assert found == {frozenset(pair) for pair in fixture.duplicates}


def test_plain_lowercase_layout_without_nesting(tmp_path: Path) -> None:
    fixture = make_kaggle_folder(tmp_path / "kaggle", per_class=(4, 5, 6), nested=False)
    plain = tmp_path / "plain"
    for name, folder in zip(("BENIGN", "Malignant", "normal"), FOLDERS.values()):
        shutil.copytree(fixture.dataset_dir / folder, plain / "data" / name)
    ds = load_dataset(plain, image_size=SIZE)
    assert ds.class_counts() == {"benign": 4, "malignant": 5, "normal": 6} and "IQ-OTH" not in ds.name


def test_dicom_folder_uses_the_chosen_window(tmp_path: Path) -> None:
    ct, mr = get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")
    for folder, source, name in (
        ("benign", ct, "IM0001"),
        ("malignant", ct, "ct.dcm"),
        ("normal", mr, "mr.dcm"),
    ):
        (tmp_path / folder).mkdir()
        shutil.copyfile(source, tmp_path / folder / name)
    ds = load_dataset(tmp_path, image_size=SIZE, window="mediastinal")
    assert len(ds) == 3 and ds.duplicate_groups == [[0, 1]]  # a file without extension is read too
    assert np.array_equal(ds.images[0].numpy(), preprocess_image(read_scan(ct, window="mediastinal"), SIZE))
    assert any("not CT" in note for notes in ds.report.file_notes.values() for note in notes)
    assert load_dataset(tmp_path, image_size=SIZE).fingerprint != ds.fingerprint


def test_corrupted_files_are_reported_and_skipped(tmp_path: Path) -> None:
    fixture = make_kaggle_folder(tmp_path / "download", corrupt=True)
    ds = load_dataset(fixture.root, image_size=SIZE)
    assert len(ds) == sum(fixture.counts.values())
    skipped = {Path(item.path): item.reason for item in ds.report.skipped}
    assert set(skipped) == set(fixture.corrupt)
    assert all(reason for reason in skipped.values())
    assert "empty" in skipped[fixture.path("benign", fixture.counts["benign"] + 1)]
    assert "Accepted formats" in skipped[fixture.path("normal", fixture.counts["normal"] + 1)]
    assert any("could not be read" in note for note in ds.report.notes)


def test_missing_class_names_it_and_the_folders_found(tmp_path: Path) -> None:
    fixture = make_kaggle_folder(tmp_path / "download", per_class=(3, 3, 3))
    shutil.rmtree(fixture.dataset_dir / "Malignant cases")
    with pytest.raises(DatasetError, match="'malignant' missing") as error:
        load_dataset(fixture.root, image_size=SIZE)
    assert "Bengin cases" in str(error.value) and "Normal cases" in str(error.value)


def test_empty_or_unreadable_class_and_folders_without_classes(tmp_path: Path) -> None:
    fixture = make_kaggle_folder(tmp_path / "download", per_class=(3, 3, 3))
    for path in (fixture.dataset_dir / "Normal cases").iterdir():
        path.write_text("not an image")
    with pytest.raises(DatasetError, match=r"Normal cases.*\(normal\) could be read"):
        load_dataset(fixture.root, image_size=SIZE)
    for path in (fixture.dataset_dir / "Normal cases").iterdir():
        path.unlink()
    with pytest.raises(DatasetError, match="holds no images"):
        load_dataset(fixture.root, image_size=SIZE)

    (tmp_path / "holiday" / "photos").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no class folders.*photos"):
        load_dataset(tmp_path / "holiday", image_size=SIZE)
    with pytest.raises(DatasetError, match="no such folder"):
        load_dataset(tmp_path / "nowhere", image_size=SIZE)
    with pytest.raises(UserInputError, match="image_size"):
        load_dataset(fixture.root, image_size=3)
    with pytest.raises(UserInputError, match="window"):
        load_dataset(fixture.root, image_size=SIZE, window="bone")


def test_second_load_comes_from_the_cache_without_decoding(tmp_path: Path, private_cache: Path) -> None:
    fixture = make_kaggle_folder(tmp_path / "download", per_class=(4, 5, 6), corrupt=True)
    first = load_dataset(fixture.root, image_size=SIZE)
    arrays = list((private_cache / "datasets").glob("*.npz"))
    records = list((private_cache / "datasets").glob("*.json"))
    assert cache_dir() == private_cache and len(arrays) == len(records) == 1 and not first.report.from_cache
    with np.load(arrays[0], allow_pickle=False) as stored:
        assert stored["images"].shape == (len(first), SIZE, SIZE)

    calls = []
    second = load_dataset(fixture.root, image_size=SIZE, progress=lambda *args: calls.append(args))
    assert second.report.from_cache and len(calls) == 1 and "cache" in calls[0][2]
    assert torch.equal(first.images, second.images) and second.paths == first.paths
    assert second.fingerprint == first.fingerprint and second.duplicate_groups == first.duplicate_groups
    assert [item.path for item in second.report.skipped] == [item.path for item in first.report.skipped]

    assert not load_dataset(fixture.root, image_size=SIZE + 8).report.from_cache  # settings are in the key
    changed = fixture.path("normal", 2)
    changed.write_bytes(fixture.path("normal", 5).read_bytes())
    reloaded = load_dataset(fixture.root, image_size=SIZE)
    assert not reloaded.report.from_cache and reloaded.fingerprint != first.fingerprint


def test_moved_copy_reuses_the_cache_with_its_own_paths_and_a_broken_cache_is_rebuilt(
    tmp_path: Path, private_cache: Path
) -> None:
    fixture = make_kaggle_folder(tmp_path / "download", per_class=(4, 5, 6))
    first = load_dataset(fixture.root, image_size=SIZE)
    moved = tmp_path / "elsewhere"
    shutil.copytree(fixture.root, moved)  # copy2 keeps sizes and modification times
    again = load_dataset(moved, image_size=SIZE)
    assert again.report.from_cache and all(path.startswith(str(moved)) for path in again.paths)
    assert again.fingerprint == first.fingerprint

    for path in (private_cache / "datasets").glob("*.npz"):
        path.write_bytes(b"not an npz")
    rebuilt = load_dataset(fixture.root, image_size=SIZE)
    assert not rebuilt.report.from_cache and torch.equal(rebuilt.images, first.images)


def test_subset_keeps_rows_labels_paths_and_duplicates(tmp_path: Path) -> None:
    fixture = make_kaggle_folder(tmp_path / "download")
    ds = load_dataset(fixture.root, image_size=SIZE)
    group = ds.duplicate_groups[0]
    rows = np.array([group[1], 0, group[0], 7])
    part = ds.subset(rows)
    assert len(part) == 4 and torch.equal(part.images[0], ds.images[group[1]])
    assert part.paths == [ds.paths[i] for i in rows] and np.array_equal(part.labels, ds.labels[rows])
    assert part.duplicate_groups == [[0, 2]] and part.fingerprint != ds.fingerprint
    with pytest.raises(IndexError):
        ds.subset([len(ds)])


def test_synthetic_phantom_is_labelled_cached_and_deterministic() -> None:
    first = load_dataset("synthetic", image_size=SIZE, seed=3, count=12)
    assert first.is_synthetic and "synthetic" in first.name.lower() and first.paths is None
    assert first.source == "synthetic" and tuple(first.images.shape) == (12, SIZE, SIZE)
    again = load_dataset("synthetic", image_size=SIZE, seed=3, count=12)
    assert again.report.from_cache and torch.equal(first.images, again.images)
    fresh = load_dataset("synthetic", image_size=SIZE, seed=3, count=12, cache=False)
    assert torch.equal(first.images, fresh.images) and fresh.fingerprint == first.fingerprint
    assert load_dataset("synthetic", image_size=SIZE, seed=4, count=12).fingerprint != first.fingerprint


def test_phantom_rendered_on_another_cpu_is_the_same_data_and_shipped_scans_replace_it(
    tmp_path: Path,
) -> None:
    """Another CPU renders the phantom a grey level apart in a few pixels (13 of 2,000 scans at 112 px
    between two x86 machines): its fingerprint differs, its identity does not, and scans exported from
    that machine (the shipped demo's) replace this machine's rendering in the cache."""
    spec = DataSpec(source="synthetic", image_size=SIZE, seed=3, count=12)
    here = load_dataset(spec)
    exported = tmp_path / "elsewhere"
    export_synthetic_scans(spec, exported)
    with np.load(exported / SCANS_ARRAYS) as arrays:
        images, labels = arrays["images"].copy(), arrays["labels"]
    images[5, 10, 10] += 1  # the other machine's rounding
    np.savez_compressed(exported / SCANS_ARRAYS, images=images, labels=labels)
    record = json.loads((exported / SCANS_RECORD).read_text())
    (exported / SCANS_RECORD).write_text(json.dumps({**record, "fingerprint": "rendered elsewhere"}))

    assert adopt_synthetic_scans(spec, exported)  # replaces this machine's own rendering
    there = load_dataset(spec)
    assert there.report.from_cache and there.fingerprint == "rendered elsewhere"
    assert int(there.images[5, 10, 10]) == int(here.images[5, 10, 10]) + 1
    assert there.identity == here.identity and same_data(here.record(), there.record())
    assert not same_data({"fingerprint": here.fingerprint}, there.record())  # a run saved before identities
    assert not same_data(here.record(), load_dataset(dataclasses.replace(spec, seed=4)).record())
    assert adopt_synthetic_scans(spec, exported) and load_dataset(spec).fingerprint == "rendered elsewhere"


def test_bad_synthetic_settings_are_refused_before_rendering() -> None:
    with pytest.raises(UserInputError, match="count"):
        load_dataset("synthetic", image_size=SIZE, count=0)
    with pytest.raises(UserInputError, match="seed"):
        load_dataset("synthetic", image_size=SIZE, seed=1.5)


def test_kaggle_download_without_internet_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a proxy on a closed local port makes the real download fail fast and the same way everywhere
    for variable in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    with pytest.raises(DatasetError, match="by hand") as error:
        download_iqothnccd(tmp_path / "dest")
    assert "kaggle.com/datasets/adityamahimkar/iqothnccd-lung-cancer-dataset" in str(error.value)
    assert not os.path.exists(tmp_path / "dest" / "Bengin cases")
