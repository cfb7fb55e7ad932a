"""Leak-free grouped splits versus the leaky random split, on the Kaggle-layout fixture and built data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.constants import CLASSES
from pipeline.data import ScanDataset, leakage_report, load_dataset, split_dataset
from pipeline.data.splits import Split, group_scans, near_duplicate_pairs
from pipeline.errors import UserInputError
from tests.fixtures import make_kaggle_folder

#: The fixture's "patients" have 4-7 slices, so runs are cut at about 5 (the real set: about 10).
BLOCK = 5


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("kaggle")
    fixture = make_kaggle_folder(root / "download")
    return fixture, load_dataset(fixture.root, image_size=48, cache=False)


def sides_of(split: Split, count: int) -> np.ndarray:
    side = np.full(count, -1)
    for index, indices in enumerate((split.train, split.val, split.test)):
        side[indices] = index
    return side


def test_grouped_split_has_no_duplicate_or_near_duplicate_across_sides(kaggle) -> None:
    fixture, ds = kaggle
    split = split_dataset(ds, seed=0, block_length=BLOCK)
    side = sides_of(split, len(ds))
    assert (side >= 0).all() and len(split.train) + len(split.val) + len(split.test) == len(ds)
    assert not split.leaky and split.strategy == "grouped"

    report = leakage_report(ds, split)
    assert report["exact_pairs_across"] == 0 and report["near_pairs_across"] == 0
    assert report["test_with_similar_in_train"] == 0
    index = {Path(path): i for i, path in enumerate(ds.paths)}
    for first, second in fixture.duplicates + fixture.near_pairs:
        assert side[index[first]] == side[index[second]]
    grouping = report["grouping"]
    assert grouping["exact_duplicate_groups"] == len(fixture.duplicates)
    assert grouping["near_duplicate_pairs"] >= len(fixture.near_pairs)
    assert 1 < grouping["largest_group"] < len(ds) / 3 and grouping["groups"] >= 8
    assert (
        report["adjacent_slices_across"]
        < leakage_report(ds, split_dataset(ds, strategy="random"))["adjacent_slices_across"]
    )


def test_random_split_is_flagged_leaky_and_does_leak_on_the_fixture(kaggle) -> None:
    _, ds = kaggle
    split = split_dataset(ds, seed=0, strategy="random")
    assert split.leaky and "memorisation" in split.report["warning"]
    report = leakage_report(ds, split)
    assert report["leaky"] and report["exact_pairs_across"] + report["near_pairs_across"] > 0
    assert report["test_with_similar_in_train_fraction"] > 0.2


def test_splits_are_stratified(kaggle) -> None:
    _, ds = kaggle
    counts = np.bincount(ds.labels, minlength=len(CLASSES))
    random = split_dataset(ds, seed=1, strategy="random", val_fraction=0.2, test_fraction=0.2)
    for indices in (random.val, random.test):
        assert np.array_equal(np.bincount(ds.labels[indices], minlength=3), np.round(0.2 * counts))

    groups, _ = group_scans(ds, block_length=BLOCK)
    grouped = split_dataset(ds, seed=1, block_length=BLOCK, val_fraction=0.2, test_fraction=0.2)
    for label in range(len(CLASSES)):
        largest = np.bincount(groups[ds.labels == label]).max()
        for indices, share in ((grouped.train, 0.6), (grouped.val, 0.2), (grouped.test, 0.2)):
            got = int((ds.labels[indices] == label).sum())
            assert abs(got - share * counts[label]) <= largest, (CLASSES[label], got, share)
        assert (ds.labels[grouped.train] == label).any()
    assert grouped.report["class_counts"]["test"] == {
        name: int((ds.labels[grouped.test] == i).sum()) for i, name in enumerate(CLASSES)
    }


def test_splits_are_deterministic_from_the_seed_and_round_trip_json(kaggle) -> None:
    _, ds = kaggle
    for strategy in ("grouped", "random"):
        first = split_dataset(ds, seed=7, strategy=strategy, block_length=BLOCK)
        second = split_dataset(ds, seed=7, strategy=strategy, block_length=BLOCK)
        other = split_dataset(ds, seed=8, strategy=strategy, block_length=BLOCK)
        assert all(
            np.array_equal(getattr(first, side), getattr(second, side)) for side in ("train", "val", "test")
        )
        assert not np.array_equal(first.test, other.test)
        restored = Split.from_dict(json.loads(json.dumps(first.to_dict())))
        assert np.array_equal(restored.test, first.test) and restored.leaky == first.leaky
    with pytest.raises(UserInputError, match="damaged"):
        Split.from_dict({"train": [1]})


def test_bad_split_settings_are_refused(kaggle) -> None:
    _, ds = kaggle
    with pytest.raises(UserInputError, match="nothing to train"):
        split_dataset(ds, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(UserInputError, match="fraction"):
        split_dataset(ds, val_fraction=-0.1)
    with pytest.raises(UserInputError, match="strategy"):
        split_dataset(ds, strategy="patient")
    with pytest.raises(UserInputError, match="block_length"):
        split_dataset(ds, block_length=0)


def built_dataset(
    images: np.ndarray, labels: np.ndarray, paths: list[str], duplicate_groups: list[list[int]] | None = None
) -> ScanDataset:
    return ScanDataset(
        torch.from_numpy(images),
        labels,
        name="built",
        source="test",
        paths=paths,
        duplicate_groups=duplicate_groups or [],
        fingerprint="built",
        is_synthetic=False,
    )


def test_runs_are_cut_where_the_patient_changes() -> None:
    """Patients of 8 slices whose slices differ clearly (not near-duplicates): runs follow patients."""
    rng = np.random.default_rng(0)
    patients, slices, side = 6, 8, 32
    images, paths = [], []
    for patient in range(patients):
        anatomy = rng.uniform(0, 255, (side, side))
        for index in range(slices):
            images.append(np.clip(0.8 * anatomy + 0.2 * rng.uniform(0, 255, (side, side)), 0, 255))
            paths.append(f"/data/Normal cases/Normal case ({patient * slices + index + 1}).jpg")
    ds = built_dataset(np.stack(images).astype(np.uint8), np.full(len(images), 2), paths)
    assert len(near_duplicate_pairs(ds)) == 0
    groups, summary = group_scans(ds, block_length=slices)
    assert summary["groups"] == patients
    assert all(len(set(groups[p * slices : (p + 1) * slices])) == 1 for p in range(patients))


def test_grouping_scales_to_the_real_set_size_and_finds_pairs_across_chunks() -> None:
    """1,100 scans (more than one similarity chunk): injected near-duplicates are found, nothing else."""
    rng = np.random.default_rng(1)
    count = 1100
    images = rng.integers(0, 256, (count, 32, 32), dtype=np.uint8)
    images[1050] = np.clip(images[5].astype(int) + rng.integers(-3, 4, (32, 32)), 0, 255)
    images[700] = np.clip(images[20].astype(int) * 0.9 + 10, 0, 255)  # same slice, other contrast
    images[900] = images[300]
    labels = np.repeat(np.arange(3), [120, 560, 420])
    stems = {0: "Bengin", 1: "Malignant", 2: "Normal"}
    paths = [f"/d/{stems[label]} cases/{stems[label]} case ({i + 1}).jpg" for i, label in enumerate(labels)]
    ds = built_dataset(images, labels, paths, duplicate_groups=[[300, 900]])
    assert {tuple(pair) for pair in near_duplicate_pairs(ds)} == {(5, 1050), (20, 700), (300, 900)}
    split = split_dataset(ds, block_length=10)
    report = leakage_report(ds, split)
    assert report["exact_pairs_across"] == 0 and report["near_pairs_across"] == 0
    assert split.report["largest_group"] <= 2 * 15 and split.report["groups"] > 60
