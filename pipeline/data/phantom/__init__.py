"""The synthetic chest-CT phantom: the embedded default dataset, so the product runs offline.

Each scan is an axial chest slice drawn in Hounsfield units (body, chest wall, ribs, spine,
mediastinum, lungs, vessels, table), with nodules or masses according to its class, passed through a
simulated scanner (blur, sharp-kernel edges, FBP noise) and the lung window, like the 8-bit JPEGs of
IQ-OTH/NCCD. It is synthetic and must be labelled so wherever it appears; it is never medical data.

Every scan depends only on ``(seed, index)``, so a set is reproducible byte for byte and any prefix
of a larger set is the smaller set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from pipeline.constants import CLASSES, NUM_CLASSES
from pipeline.constants import LUNG_WINDOW
from pipeline.data.dicom import apply_window
from pipeline.data.phantom.acquisition import acquire
from pipeline.data.phantom.anatomy import build_anatomy
from pipeline.data.phantom.lesions import Finding, draw_lesions
from pipeline.data.phantom.vessels import draw_vessels
from pipeline.errors import DatasetError
from pipeline.progress import ProgressCallback, report
from pipeline.workers import process_pool

__all__ = ["SYNTHETIC_LABEL", "SYNTHETIC_TITLE", "PHANTOM_VERSION", "Finding", "PhantomSlice",
           "default_class_counts", "render_phantom", "render_slice", "synthesize"]

#: The word every dataset name, figure and report built on the phantom carries.
SYNTHETIC_LABEL = "synthetic"
#: A title for figures and reports.
SYNTHETIC_TITLE = "Synthetic chest-CT phantom (not patient data)"
#: Bumped whenever the same seed would draw different images; part of any cache key.
PHANTOM_VERSION = 4

#: IQ-OTH/NCCD's class sizes (benign, malignant, normal), whose ratio the default set follows.
REAL_CLASS_COUNTS = (120, 561, 416)
_MIN_SIZE, _MAX_SIZE = 32, 1024
_PROGRESS_EVERY = 25
#: Worker processes pay for starting (each imports torch, about 3-5 s) only on large sets and from
#: four cores up: on 2 cores 450 scans took 13 s in one process and longer in two (bench/RESULTS.md).
_PARALLEL_FROM = 400
_PARALLEL_CORES = 4
_CHUNK = 50


@dataclass(frozen=True)
class PhantomSlice:
    """One rendered scan with its ground truth (which a real scan never has)."""

    image: np.ndarray  # uint8 [S, S], lung window
    label: int
    hu: np.ndarray  # float32 [S, S], the phantom before acquisition
    body: np.ndarray  # bool [S, S]
    lungs: np.ndarray  # bool [S, S]
    lesions: np.ndarray  # bool [S, S], empty for normal scans
    findings: tuple[Finding, ...]
    mm_per_px: float


def render_phantom(label: int, rng: np.random.Generator, size: int = 256) -> PhantomSlice:
    """Draw one scan of class ``label`` (index into CLASSES) with its masks.

    The patient, the lesions and the scanner take separate random streams, so the same ``rng`` state
    gives the same anatomy whatever the label: a scan and its lesion-free counterpart.
    """
    _check_size(size)
    if label not in range(NUM_CLASSES):
        raise DatasetError(f"Unknown class label {label!r}; use 0..{NUM_CLASSES - 1} "
                           f"for {', '.join(CLASSES)}.")
    patient_rng, lesion_rng, scanner_rng = rng.spawn(3)
    slice_mm = scanner_rng.uniform(1.25, 3.0)
    anatomy = build_anatomy(patient_rng, size)
    draw_vessels(anatomy, patient_rng, slice_mm)
    lesion_cover, findings = draw_lesions(anatomy, label, lesion_rng, slice_mm)
    hu = anatomy.hu
    image = apply_window(acquire(hu, scanner_rng, anatomy.canvas.mm_per_px), *LUNG_WINDOW)
    return PhantomSlice(image=image, label=label, hu=hu, body=anatomy.body > 0.5,
                        lungs=(anatomy.lungs[0] + anatomy.lungs[1]) > 0.5, lesions=lesion_cover > 0.5,
                        findings=tuple(findings), mm_per_px=anatomy.canvas.mm_per_px)


def render_slice(label: int, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """One scan of class ``label`` as uint8 [size, size] in the lung window."""
    return render_phantom(label, rng, size).image


def default_class_counts(count: int) -> tuple[int, int, int]:
    """Class sizes of a default set of ``count`` scans: IQ-OTH/NCCD's ratio, each class at least once."""
    _check_count(count)
    return tuple(int(n) for n in np.bincount(_default_labels(count), minlength=NUM_CLASSES))


def synthesize(count: int = 600, *, seed: int = 0, size: int = 256,
               class_counts: tuple[int, int, int] | None = None,
               progress: ProgressCallback | None = None,
               workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render a set: images uint8 [count, size, size] and labels int64 [count] in CLASSES order.

    Classes are interleaved (not sorted), so every prefix keeps the class ratio; without
    ``class_counts`` the labels of a prefix do not depend on ``count`` either. ``workers``
    processes render a large set in parallel (default: one per CPU core this process may use, from
    four cores up);
    each scan depends only on ``(seed, index)``, so the result is the same byte for byte.
    """
    _check_count(count)
    _check_size(size)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise DatasetError(f"The phantom seed must be a non-negative integer, got {seed!r}.")
    if class_counts is None:
        labels = _default_labels(count)
    else:
        labels = _labels_for(count, class_counts)
    images = np.empty((count, size, size), np.uint8)
    if workers is None:
        cores = _usable_cores()
        workers = cores if cores >= _PARALLEL_CORES else 1
    workers = min(workers, count // _CHUNK)
    if workers > 1 and count >= _PARALLEL_FROM:
        # clean spawned children: never fork a process holding threads, never re-run its __main__
        with process_pool(workers) as pool:
            starts = range(0, count, _CHUNK)
            chunks = [pool.submit(_render_range, int(seed), size, labels[start:start + _CHUNK], start)
                      for start in starts]
            for start, chunk in zip(starts, chunks):
                done = start + len(labels[start:start + _CHUNK])
                images[start:done] = chunk.result()
                report(progress, done, count, f"rendering {SYNTHETIC_LABEL} scans ({workers} processes)")
        return images, labels
    for index, label in enumerate(labels):
        images[index] = render_slice(int(label), np.random.default_rng([int(seed), index]), size)
        if (index + 1) % _PROGRESS_EVERY == 0 or index + 1 == count:
            report(progress, index + 1, count, f"rendering {SYNTHETIC_LABEL} scans")
    return images, labels


def _render_range(seed: int, size: int, labels: np.ndarray, start: int) -> np.ndarray:
    """Scans ``start, start + 1, ...`` of the set, one per label: a worker process's share."""
    return np.stack([render_slice(int(label), np.random.default_rng([seed, start + offset]), size)
                     for offset, label in enumerate(labels)])


def _usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity call
        return os.cpu_count() or 1


def _check_count(count: int) -> None:
    if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or count < NUM_CLASSES:
        raise DatasetError(f"A synthetic set needs at least {NUM_CLASSES} scans (one per class), "
                           f"got {count!r}.")


def _check_size(size: int) -> None:
    whole = isinstance(size, (int, np.integer)) and not isinstance(size, bool)
    if not whole or not _MIN_SIZE <= size <= _MAX_SIZE:
        raise DatasetError(f"Phantom image size must be an integer from {_MIN_SIZE} to {_MAX_SIZE} pixels, "
                           f"got {size!r}.")


def _default_labels(count: int) -> np.ndarray:
    """One of each class first, then always the class furthest below its share of IQ-OTH/NCCD's ratio."""
    share = np.asarray(REAL_CLASS_COUNTS, float) / sum(REAL_CLASS_COUNTS)
    return _interleave(count, share, start=(1, 2, 0))


def _labels_for(count: int, class_counts: tuple[int, int, int]) -> np.ndarray:
    counts = np.asarray(class_counts)
    if counts.shape != (NUM_CLASSES,) or not np.issubdtype(counts.dtype, np.integer) or (counts < 0).any():
        raise DatasetError(f"class_counts must be {NUM_CLASSES} non-negative integers "
                           f"({', '.join(CLASSES)}), got {class_counts!r}.")
    if counts.sum() != count:
        raise DatasetError(f"class_counts {tuple(int(c) for c in counts)} add up to {int(counts.sum())}, "
                           f"not to count={count}; make them agree or leave class_counts out.")
    return _interleave(count, counts / count, cap=counts)


def _interleave(count: int, share: np.ndarray, start: tuple[int, ...] = (),
                cap: np.ndarray | None = None) -> np.ndarray:
    labels = np.empty(count, np.int64)
    have = np.zeros(NUM_CLASSES)
    for i in range(count):
        if i < len(start):
            choice = start[i]
        else:
            deficit = share * (i + 1) - have
            if cap is not None:
                deficit[have >= cap] = -np.inf
            choice = int(np.argmax(deficit))
        labels[i] = choice
        have[choice] += 1
    return labels
