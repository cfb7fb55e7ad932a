"""Train/validation/test splits that keep near-identical scans on one side.

IQ-OTH/NCCD holds consecutive slices of about 110 patients, numbered in slice order, with 42
byte-identical pairs and ~300 images that have a near-identical neighbour. An image-level random
split puts neighbours of the same patient into train and test, and the test score then measures
memory, not diagnosis. The grouped split joins into one group:

- exact duplicates (the dataset's content hashes);
- near-duplicates: z-normalised 32x32 thumbnails whose RMS difference is below a threshold
  (0.15 by default, a correlation above ~0.989), which ignores brightness and contrast changes
  and JPEG noise but not a different slice of a different body;
- every slice of one patient, when the scans are DICOM slices that say whose they are
  (``pipeline.data.studies``: hashed identifiers, numbered patients); such slices take no part
  in the file-number runs below, and their neighbours are the next slices of their series;
- runs of consecutive file numbers in a class folder. Patient boundaries are not recorded, so
  each numbered chain is cut into runs of about ``block_length`` scans (10 by default: 1,097
  images over the 110 described cases is about 10 slices per patient). Fixed borders every 10
  numbers would fall inside most patients, and since near-duplicate links then rejoin the two
  halves, a whole class would percolate into one group; so each cut is placed, within a window
  around the target length, where neighbouring slices differ most (the likeliest change of
  patient) and never between near-duplicates. What can remain across a border is an ordinary,
  not near-identical, neighbouring slice pair; ``leakage_report`` counts those too.

Groups are found as connected components of the union of these links (union-find done by
scipy's sparse graph routine, vectorised), then whole groups are dealt to the sides class by
class in a seeded random order, each to the side where it best closes the gap to the target
counts (relative squared miss; random order, not largest-first, so that big groups do not all
end up in train).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.constants import CLASSES
from pipeline.data.dataset import ScanDataset, count_classes
from pipeline.data.sources import file_number
from pipeline.data.spec import DataSpec
from pipeline.data.studies import side_report
from pipeline.errors import UserInputError

NEAR_THRESHOLD: Final[float] = 0.15
THUMBNAIL_SIZE: Final[int] = 32
BLOCK_LENGTH: Final[int] = 10
SIDES: Final[tuple[str, str, str]] = ("train", "val", "test")
#: Rows of the similarity matrix computed at once: bounds memory to CHUNK x N floats.
CHUNK: Final[int] = 1024
#: Above this share of a dataset in one group, the split warns that it cannot be balanced.
GIANT_GROUP_SHARE: Final[float] = 0.2
LEAKY_WARNING: Final[str] = (
    "image-level random split: duplicates and neighbouring slices of one patient fall on both sides, "
    "so accuracy on it measures memorisation as much as diagnosis"
)


@dataclass(frozen=True)
class Split:
    """Indices of each side, how they were made, and a report of the grouping."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    strategy: str
    leaky: bool
    seed: int
    report: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: stored beside a run so evaluation uses the same test set."""
        return {
            "train": self.train.tolist(), "val": self.val.tolist(), "test": self.test.tolist(),
            "strategy": self.strategy, "leaky": self.leaky, "seed": self.seed, "report": self.report,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Split":
        try:
            sides = {side: np.asarray(data[side], dtype=np.int64).reshape(-1) for side in SIDES}
            return cls(**sides, strategy=str(data["strategy"]), leaky=bool(data["leaky"]), seed=int(data["seed"]),
                       report=dict(data.get("report", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserInputError(f"the stored split is incomplete or damaged ({exc}); make a new split") from None


def split_dataset(
    ds: ScanDataset,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    strategy: Literal["grouped", "random"] = "grouped",
    block_length: int = BLOCK_LENGTH,
    near_threshold: float = NEAR_THRESHOLD,
) -> Split:
    """Stratified split; ``grouped`` (default) keeps duplicate/neighbour groups on one side."""
    _check_fractions(val_fraction, test_fraction)
    if strategy not in ("grouped", "random"):
        raise UserInputError(f"unknown split strategy {strategy!r}; choose 'grouped' or 'random' (leaky)")
    if isinstance(block_length, bool) or not isinstance(block_length, int) or block_length < 1:
        raise UserInputError(f"block_length must be a whole number of slices >= 1, got {block_length!r}")
    if not 0.0 <= near_threshold <= 2.0:
        raise UserInputError(f"near_threshold is an RMS distance between 0 and 2, got {near_threshold}")
    rng = np.random.default_rng(seed)
    labels = ds.labels
    if strategy == "random":
        groups = np.arange(len(ds))
        report: dict[str, Any] = {"warning": LEAKY_WARNING}
    else:
        groups, report = group_scans(ds, block_length=block_length, near_threshold=near_threshold)
    side = _deal_groups(groups, labels, (1.0 - val_fraction - test_fraction, val_fraction, test_fraction), rng)
    parts = {name: np.flatnonzero(side == index) for index, name in enumerate(SIDES)}
    report.update(
        strategy=strategy, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
        sizes={name: int(len(indices)) for name, indices in parts.items()},
        class_counts={name: count_classes(labels[indices]) for name, indices in parts.items()},
    )
    if ds.studies is not None:
        report["studies"] = side_report(ds.studies, parts)
    return Split(**parts, strategy=strategy, leaky=strategy == "random", seed=seed, report=report)


def split_for(ds: ScanDataset, spec: DataSpec) -> Split:
    """The split ``spec`` names for its dataset: the one training stores and the Data page previews."""
    return split_dataset(
        ds,
        val_fraction=spec.val_fraction,
        test_fraction=spec.test_fraction,
        seed=spec.split_seed,
        strategy=spec.split_strategy,  # type: ignore[arg-type]
    )


def group_scans(ds: ScanDataset, *, block_length: int = BLOCK_LENGTH,
                near_threshold: float = NEAR_THRESHOLD) -> tuple[np.ndarray, dict[str, Any]]:
    """A group id per scan (exact ∪ near duplicates ∪ patients ∪ runs of numbers) and a summary of it."""
    count = len(ds)
    if count == 0:
        raise UserInputError("cannot split an empty dataset")
    thumbs = _thumbnails(ds.images)
    exact = _exact_pairs(ds.duplicate_groups)
    near = _near_pairs(thumbs, near_threshold)
    runs = _run_pairs(ds, thumbs, block_length, near_threshold)
    patients = ds.studies.patient_pairs() if ds.studies is not None else np.zeros((0, 2), dtype=np.int64)
    edges = np.concatenate([exact, near, runs, patients])
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(count, count))
    _, groups = connected_components(graph, directed=False)
    sizes = np.bincount(groups)
    label_sets = np.zeros((len(sizes), len(CLASSES)), dtype=np.int64)
    np.add.at(label_sets, (groups, ds.labels), 1)
    summary: dict[str, Any] = {
        "groups": int(len(sizes)),
        "largest_group": int(sizes.max()),
        "singletons": int((sizes == 1).sum()),
        "scans_in_groups": int(sizes[sizes > 1].sum()),
        "exact_duplicate_groups": len(ds.duplicate_groups),
        "near_duplicate_pairs": int(len(near)),
        "near_threshold": near_threshold,
        "block_length": block_length,
        "slice_links": int(len(runs)),
        "mixed_label_groups": int(((label_sets > 0).sum(axis=1) > 1).sum()),
    }
    if ds.studies is not None:
        summary["dicom"] = ds.studies.counts()
    if count >= 50 and sizes.max() > GIANT_GROUP_SHARE * count:
        summary["warning"] = (
            f"one group holds {sizes.max()} of {count} scans, so the split cannot be balanced well; "
            "lower near_threshold (stricter near-duplicates) or block_length"
        )
    return groups, summary


def split_groups(ds: ScanDataset, split: Split) -> np.ndarray | None:
    """The group id of every scan of ``ds`` (int ``[N]``) as the grouped ``split`` drew them, for
    intervals that resample whole groups; None for a random split, whose scans count as independent.

    Recomputed from the data with the settings stored in the split's report (grouping is
    deterministic), so splits stored before group ids were kept work too.
    """
    if split.strategy != "grouped":
        return None
    groups, _ = group_scans(
        ds,
        block_length=int(split.report.get("block_length", BLOCK_LENGTH)),
        near_threshold=float(split.report.get("near_threshold", NEAR_THRESHOLD)),
    )
    return groups


def near_duplicate_pairs(ds: ScanDataset, threshold: float = NEAR_THRESHOLD) -> np.ndarray:
    """Pairs ``(i, j)``, ``i < j``, whose normalised thumbnails differ by less than ``threshold`` RMS."""
    return _near_pairs(_thumbnails(ds.images), threshold)


def leakage_report(ds: ScanDataset, split: Split, *, near_threshold: float = NEAR_THRESHOLD) -> dict[str, Any]:
    """How much of each side has an exact or near duplicate, or a neighbouring slice, on another side."""
    side = np.full(len(ds), -1, dtype=np.int64)
    for index, name in enumerate(SIDES):
        side[getattr(split, name)] = index
    exact = _exact_pairs(ds.duplicate_groups, all_pairs=True)
    near = near_duplicate_pairs(ds, near_threshold)
    adjacent = _adjacent_pairs(ds)
    if ds.studies is not None:
        adjacent = np.concatenate([adjacent, ds.studies.neighbour_pairs()])

    def across(pairs: np.ndarray) -> np.ndarray:
        return pairs[(side[pairs[:, 0]] != side[pairs[:, 1]]) & (side[pairs[:, 0]] >= 0) & (side[pairs[:, 1]] >= 0)]

    similar = np.concatenate([exact, near])
    train, test = side == 0, side == 2
    test_hit = _has_partner(similar, test, train)
    train_hit = _has_partner(similar, train, test)
    report = {
        "strategy": split.strategy,
        "leaky": split.leaky,
        "exact_pairs_across": int(len(across(exact))),
        "near_pairs_across": int(len(across(near))),
        "adjacent_slices_across": int(len(across(adjacent))),
        "test_with_similar_in_train": int(test_hit.sum()),
        "test_with_similar_in_train_fraction": float(test_hit.sum() / max(int(test.sum()), 1)),
        "train_with_similar_in_test_fraction": float(train_hit.sum() / max(int(train.sum()), 1)),
        "near_threshold": near_threshold,
        "grouping": split.report,
    }
    if ds.studies is not None:
        sides = {name: getattr(split, name) for name in SIDES}
        report["patients_on_two_sides"] = side_report(ds.studies, sides)["patients_on_two_sides"]
        # where Patient IDs were placeholders or missing: how patients were told apart instead
        report["patient_grouping"] = list(ds.studies.grouping)
    return report


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise UserInputError(f"{name} must be a fraction in [0, 1), got {value!r}")
    if val_fraction + test_fraction >= 1.0:
        raise UserInputError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction:g} leaves nothing to train on; "
            "keep their sum below 1 (0.15 + 0.15 is usual)"
        )


def _deal_groups(groups: np.ndarray, labels: np.ndarray, shares: tuple[float, float, float],
                 rng: np.random.Generator) -> np.ndarray:
    """Side per scan: per class (a group's majority label), shuffled groups go where they fit the targets best."""
    side = np.zeros(len(labels), dtype=np.int64)
    if not len(labels):
        return side
    sizes = np.bincount(groups)
    votes = np.zeros((len(sizes), len(CLASSES)), dtype=np.int64)
    np.add.at(votes, (groups, labels), 1)
    majority = votes.argmax(axis=1)
    members = np.split(np.argsort(groups, kind="stable"), np.cumsum(sizes)[:-1])
    want = np.asarray(shares, dtype=np.float64)
    # ties go to test, then val: the small sides get a group before train takes the rest
    tie_order = np.array([2, 1, 0])
    for label in range(len(CLASSES)):
        ids = np.flatnonzero((majority == label) & (sizes > 0))
        if not len(ids):
            continue
        total = sizes[ids].sum()
        targets = np.array([0.0, round(want[1] * total), round(want[2] * total)])
        targets[0] = total - targets[1] - targets[2]
        have = np.zeros(3)
        scale = np.maximum(targets, 1.0) ** 2
        for group in rng.permutation(ids):
            # the side where this group most reduces the squared *relative* miss of the targets:
            # small sides (val, test) get filled rather than starved, and none is overfilled
            cost = ((have + sizes[group] - targets) ** 2 - (have - targets) ** 2) / scale
            chosen = tie_order[np.argmin(cost[tie_order])]
            side[members[group]] = chosen
            have[chosen] += sizes[group]
    return side


def _near_pairs(thumbs: np.ndarray, threshold: float) -> np.ndarray:
    count, dims = thumbs.shape
    if count < 2:
        return np.zeros((0, 2), dtype=np.int64)
    # for unit-RMS vectors, RMS difference d and correlation r satisfy d^2 = 2 - 2r
    min_correlation = 1.0 - threshold ** 2 / 2.0
    pairs = []
    for start in range(0, count, CHUNK):
        block = thumbs[start:start + CHUNK] @ thumbs.T / dims
        rows, cols = np.nonzero(block >= min_correlation)
        rows = rows + start
        keep = cols > rows
        pairs.append(np.stack([rows[keep], cols[keep]], axis=1))
    return np.concatenate(pairs).astype(np.int64)


def _distance(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Row-wise RMS difference of normalised thumbnails."""
    return np.sqrt(((first - second) ** 2).mean(axis=1))


def _thumbnails(images: torch.Tensor) -> np.ndarray:
    """``[N, 32*32]`` thumbnails, each shifted to mean 0 and scaled to RMS 1 (brightness/contrast-free)."""
    if len(images) == 0:
        return np.zeros((0, THUMBNAIL_SIZE * THUMBNAIL_SIZE), dtype=np.float32)
    small = torch.nn.functional.adaptive_avg_pool2d(images.unsqueeze(1).float(), THUMBNAIL_SIZE)
    flat = small.flatten(1).numpy().astype(np.float32)
    flat -= flat.mean(axis=1, keepdims=True)
    rms = np.sqrt((flat ** 2).mean(axis=1, keepdims=True))
    return np.divide(flat, rms, out=np.zeros_like(flat), where=rms > 1e-6)


def _exact_pairs(duplicate_groups: list[list[int]], *, all_pairs: bool = False) -> np.ndarray:
    """Links within each duplicate group: a chain (enough to join it) or every pair (to count leaks)."""
    pairs = []
    for group in duplicate_groups:
        members = np.asarray(group, dtype=np.int64)
        if all_pairs:
            first, second = np.triu_indices(len(members), k=1)
            pairs.append(np.stack([members[first], members[second]], axis=1))
        else:
            pairs.append(np.stack([members[:-1], members[1:]], axis=1))
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)


def _slice_positions(ds: ScanDataset) -> tuple[np.ndarray, np.ndarray]:
    """Per scan: a code of its (class, folder) and its file number (-1 when it has none).

    DICOM slices with a known patient get -1: their patient and series say more than file names.
    """
    if ds.paths is None:
        return np.zeros(len(ds), dtype=np.int64), np.full(len(ds), -1, dtype=np.int64)
    folders = [f"{label}|{Path(path).parent}" for label, path in zip(ds.labels.tolist(), ds.paths)]
    _, codes = np.unique(np.asarray(folders), return_inverse=True)
    numbers = np.array([-1 if number is None else number for number in map(file_number, ds.paths)],
                       dtype=np.int64)
    if ds.studies is not None:
        numbers[ds.studies.patient >= 0] = -1
    return codes.astype(np.int64), numbers


def _run_pairs(ds: ScanDataset, thumbs: np.ndarray, block_length: int, near_threshold: float) -> np.ndarray:
    """Links between consecutively numbered scans of a class folder, cut into runs of about ``block_length``.

    A chain continues over one missing number (a skipped file). Each chain is cut into runs of
    ``ceil(L/2)`` to ``L + L//2`` scans; inside that range the cut goes where neighbouring slices
    differ most (the likeliest change of patient) and never between near-duplicates.
    """
    codes, numbers = _slice_positions(ds)
    order = np.lexsort((numbers, codes))
    order = order[numbers[order] >= 0]
    first, second = order[:-1], order[1:]
    linked = (codes[first] == codes[second]) & (numbers[second] - numbers[first] <= 2)
    distance = _distance(thumbs[first], thumbs[second])
    keep = linked.copy()
    breaks = np.flatnonzero(~linked)
    for start, stop in zip(np.concatenate([[0], breaks + 1]), np.concatenate([breaks, [len(linked)]])):
        for cut in _cuts(distance[start:stop], distance[start:stop] <= near_threshold, block_length):
            keep[start + cut] = False
    return np.stack([first[keep], second[keep]], axis=1)


def _cuts(distance: np.ndarray, near: np.ndarray, length: int) -> list[int]:
    """Which links of one chain to cut (link k joins scans k and k+1) to make runs of about ``length``."""
    cuts: list[int] = []
    start, links = 0, len(distance)
    while links + 1 - start > length + length // 2:
        low, high = start + (length + 1) // 2 - 1, min(start + length + length // 2 - 1, links - 1)
        window = np.arange(low, high + 1)
        allowed = window[~near[window]]
        if len(allowed):
            cut = int(allowed[np.argmax(distance[allowed])])
        else:
            later = np.flatnonzero(~near[high + 1:])
            if not len(later):
                break
            cut = int(high + 1 + later[0])
        cuts.append(cut)
        start = cut + 1
    return cuts


def _adjacent_pairs(ds: ScanDataset) -> np.ndarray:
    """Scans of one class folder numbered N and N+1: neighbouring slices."""
    codes, numbers = _slice_positions(ds)
    order = np.lexsort((numbers, codes))
    first, second = order[:-1], order[1:]
    keep = (codes[first] == codes[second]) & (numbers[first] >= 0) & (numbers[second] == numbers[first] + 1)
    return np.stack([first[keep], second[keep]], axis=1)


def _has_partner(pairs: np.ndarray, side_a: np.ndarray, side_b: np.ndarray) -> np.ndarray:
    """Mask of scans on ``side_a`` linked by ``pairs`` to a scan on ``side_b``."""
    hit = np.zeros(len(side_a), dtype=bool)
    if len(pairs):
        left, right = pairs[:, 0], pairs[:, 1]
        hit[left[side_a[left] & side_b[right]]] = True
        hit[right[side_a[right] & side_b[left]]] = True
    return hit
