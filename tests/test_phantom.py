"""The synthetic chest-CT phantom: reproducible, in the real set's class ratio, and anatomically sane."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.constants import CLASSES, LUNG_WINDOW
from pipeline.data.dicom import apply_window
from pipeline.data.phantom import (REAL_CLASS_COUNTS, SYNTHETIC_LABEL, default_class_counts, render_phantom,
                                   render_slice, synthesize)
from pipeline.errors import DatasetError

BENIGN, MALIGNANT, NORMAL = (CLASSES.index(name) for name in ("benign", "malignant", "normal"))
SIZE = 128


def grey(hu: float) -> int:
    """The 8-bit value a Hounsfield value gets in the lung window."""
    return int(apply_window(np.array([hu]), *LUNG_WINDOW)[0])


def scans(label: int, count: int, seed: int = 11):
    return [render_phantom(label, np.random.default_rng([seed, i]), SIZE) for i in range(count)]


@pytest.fixture(scope="module")
def by_class():
    return {label: scans(label, 12) for label in (BENIGN, MALIGNANT, NORMAL)}


def test_same_seed_gives_identical_bytes_at_full_size():
    first, labels_a = synthesize(3, seed=5, size=256)
    second, labels_b = synthesize(3, seed=5, size=256)
    assert first.tobytes() == second.tobytes()
    assert np.array_equal(labels_a, labels_b)


def test_seed_changes_images_and_prefixes_are_stable():
    images, labels = synthesize(10, seed=1, size=64)
    other, _ = synthesize(10, seed=2, size=64)
    assert all(not np.array_equal(a, b) for a, b in zip(images, other))
    prefix, prefix_labels = synthesize(4, seed=1, size=64)
    assert prefix.tobytes() == images[:4].tobytes()
    assert np.array_equal(prefix_labels, labels[:4])
    assert len({image.tobytes() for image in images}) == len(images)


def test_shapes_dtypes_and_grey_range():
    images, labels = synthesize(6, seed=0, size=96)
    assert images.shape == (6, 96, 96) and images.dtype == np.uint8
    assert labels.shape == (6,) and labels.dtype == np.int64
    assert set(labels.tolist()) == {0, 1, 2}
    assert images.max() == 255 and images.min() < grey(-1000)
    assert render_slice(NORMAL, np.random.default_rng(0), 48).shape == (48, 48)


def test_default_class_counts_follow_the_real_ratio():
    share = np.array(REAL_CLASS_COUNTS) / sum(REAL_CLASS_COUNTS)
    for count in range(3, 1300):
        counts = np.array(default_class_counts(count))
        assert counts.sum() == count and counts.min() >= 1
        assert np.all(np.abs(counts - share * count) < 1.0), count
    assert default_class_counts(1097) == REAL_CLASS_COUNTS
    _, labels = synthesize(40, size=32)
    assert tuple(np.bincount(labels, minlength=3)) == default_class_counts(40)
    _, labels = synthesize(9, size=32, class_counts=(4, 3, 2))
    assert tuple(np.bincount(labels, minlength=3)) == (4, 3, 2)


def test_progress_is_reported_in_steps_to_the_end():
    calls = []
    synthesize(30, size=32, progress=lambda done, total, message: calls.append((done, total)))
    assert calls == [(25, 30), (30, 30)]


@pytest.mark.parametrize("kwargs", [dict(count=2), dict(count=6, size=16), dict(count=6, size=64.0),
                                    dict(count=6, seed=-1), dict(count=6, class_counts=(1, 2, 2)),
                                    dict(count=5, class_counts=(1, 2)),
                                    dict(count=5, class_counts=(-1, 4, 2))])
def test_bad_settings_raise_a_dataset_error(kwargs):
    with pytest.raises(DatasetError):
        synthesize(**kwargs)


def test_unknown_label_is_refused():
    with pytest.raises(DatasetError, match="0..2"):
        render_slice(3, np.random.default_rng(0), 64)


def test_synthetic_label_word():
    assert SYNTHETIC_LABEL == "synthetic"


def test_air_lung_and_bone_have_their_ct_grey_levels(by_class):
    for scan in (s for group in by_class.values() for s in group):
        image, body, lungs = scan.image, scan.body, scan.lungs
        assert 0.3 < body.mean() < 0.85
        assert 0.12 < lungs.sum() / body.sum() < 0.6
        assert not (lungs & ~body).any()
        # air around the patient (not the table below): -1000 HU, dark but not black in a lung window
        near = cv2.dilate(body.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
        above_table = np.arange(SIZE)[:, None] < np.flatnonzero(body.any(axis=1)).max() - 4
        air = image[~near & above_table]
        assert abs(np.median(air) - grey(-1000)) <= 3 and air.std() < 12
        # aerated lung (lesions aside): about -850 HU, between air and soft tissue
        assert grey(-950) < np.median(image[lungs & ~scan.lesions]) < grey(-600)
        assert np.median(image[body & ~lungs]) > grey(-150)  # fat, muscle, mediastinum
        assert (image[body] == 255).mean() > 0.003  # ribs, spine and sternum saturate


def test_lesions_lie_inside_the_lungs_and_only_in_abnormal_scans(by_class):
    for label, group in by_class.items():
        for scan in group:
            assert not (scan.lesions & ~scan.lungs).any()
            if label == NORMAL:
                assert not scan.lesions.any() and scan.findings == ()
            else:
                assert scan.lesions.any() and scan.findings


def test_anatomy_does_not_depend_on_the_label():
    scans_by_label = [render_phantom(label, np.random.default_rng([3, 0]), SIZE) for label in range(3)]
    for scan in scans_by_label[1:]:
        assert np.array_equal(scan.body, scans_by_label[0].body)
        assert np.array_equal(scan.lungs, scans_by_label[0].lungs)


def test_malignant_lesions_are_larger_than_benign_nodules_in_the_images():
    """Bright area the lesion adds inside the lungs, against the same patient rendered without it."""
    def added_area(label: int, index: int) -> int:
        bright = grey(-400)
        with_lesion = render_phantom(label, np.random.default_rng([21, index]), SIZE)
        without = render_phantom(NORMAL, np.random.default_rng([21, index]), SIZE)
        lungs = with_lesion.lungs
        return int((with_lesion.image[lungs] > bright).sum()) - int((without.image[lungs] > bright).sum())

    benign = np.array([added_area(BENIGN, i) for i in range(16)])
    malignant = np.array([added_area(MALIGNANT, i) for i in range(16)])
    assert (benign >= 0).mean() > 0.7
    assert malignant.mean() > 2.5 * benign.mean() > 0
    # but not every malignant lesion is large: the classes overlap in size
    assert malignant.min() < np.median(benign) * 2


def test_calcified_nodules_are_brighter_than_soft_tissue_nodules():
    calcified, soft = [], []
    for scan in scans(BENIGN, 30, seed=4):
        kinds = {finding.kind for finding in scan.findings}
        values = scan.image[scan.lesions]
        if kinds == {"calcified nodule"}:
            calcified.append((values.mean(), (values == 255).mean()))
        elif kinds == {"nodule"}:
            soft.append((values.mean(), (values == 255).mean()))
    calcified, soft = np.array(calcified), np.array(soft)
    assert len(calcified) >= 3 and len(soft) >= 3
    assert calcified[:, 0].mean() > soft[:, 0].mean() + 15
    # calcium saturates the lung window; soft tissue mostly does not
    assert calcified[:, 1].min() > 0.3 > soft[:, 1].max()


def test_sizes_match_their_class_descriptions(by_class):
    benign = [f.diameter_mm for s in by_class[BENIGN] for f in s.findings]
    malignant = [f.diameter_mm for s in by_class[MALIGNANT] for f in s.findings if f.kind == "mass"]
    assert 9.5 <= min(benign) and max(benign) <= 20.5
    assert np.median(malignant) > 2 * np.median(benign)
    assert max(malignant) <= 65.5
