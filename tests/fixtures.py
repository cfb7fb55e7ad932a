"""A small IQ-OTH/NCCD look-alike on disk, with the real names, odd sizes and flaws.

``make_kaggle_folder`` writes the layout exactly as Kaggle ships it (``Bengin cases`` typo,
double nesting, the description ``.txt``, an unlabelled ``Test cases`` folder), grey JPEGs of
"patients" whose consecutive file numbers are slices of one body, some saved with three
channels, the four odd sizes of the real set, byte-identical copies under other numbers, and
near-identical neighbouring slices. Other test files reuse it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

TOP = "The IQ-OTHNCCD lung cancer dataset"
FOLDERS = {"benign": "Bengin cases", "malignant": "Malignant cases", "normal": "Normal cases"}
FILE_STEMS = {"benign": "Bengin case", "malignant": "Malignant case", "normal": "Normal case"}
#: The real set's odd sizes (width x height) and the class whose folder holds them.
ODD_SIZES = {
    ("malignant", 5): (623, 512),
    ("malignant", 13): (801, 512),
    ("malignant", 21): (511, 404),
    ("normal", 8): (506, 331),
}
#: (class, original number, copy number): byte-identical files, numbered far apart as in the real set.
DUPLICATES = (("benign", 2, 9), ("malignant", 3, 27), ("normal", 4, 19))


@dataclass
class KaggleFixture:
    """Where things were written, and what a correct loader should find."""

    root: Path
    dataset_dir: Path
    counts: dict[str, int]
    duplicates: list[tuple[Path, Path]] = field(default_factory=list)
    near_pairs: list[tuple[Path, Path]] = field(default_factory=list)
    three_channel: list[Path] = field(default_factory=list)
    corrupt: list[Path] = field(default_factory=list)

    def path(self, label: str, number: int) -> Path:
        return self.dataset_dir / FOLDERS[label] / f"{FILE_STEMS[label]} ({number}).jpg"


def make_kaggle_folder(
    root: Path,
    *,
    per_class: tuple[int, int, int] = (16, 30, 24),
    size: int = 64,
    nested: bool = True,
    corrupt: bool = False,
    seed: int = 0,
) -> KaggleFixture:
    """Write the fixture under ``root``; returns what was written. ``root`` is what a user would load."""
    rng = np.random.default_rng(seed)
    top = Path(root) / TOP
    dataset_dir = top / TOP if nested else top
    fixture = KaggleFixture(Path(root), dataset_dir, dict(zip(FOLDERS, per_class)))
    for (label, folder), count in zip(FOLDERS.items(), per_class):
        (dataset_dir / folder).mkdir(parents=True, exist_ok=True)
        copies = {copy: original for name, original, copy in DUPLICATES if name == label and copy <= count}
        number = 1
        while number <= count:
            slices = int(rng.integers(4, 8))
            patient = _Patient(rng)
            for index in range(min(slices, count - number + 1)):
                if number not in copies:
                    width, height = ODD_SIZES.get((label, number), (size, size))
                    image = patient.slice(index // 2, width, height, rng)
                    path = fixture.path(label, number)
                    if number % 6 == 0:
                        cv2.imwrite(
                            str(path), cv2.merge([image, image, image]), [cv2.IMWRITE_JPEG_QUALITY, 95]
                        )
                        fixture.three_channel.append(path)
                    else:
                        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
                    if (
                        index % 2 == 1
                        and (label, number) not in ODD_SIZES
                        and (label, number - 1) not in ODD_SIZES
                        and number - 1 not in copies
                    ):
                        fixture.near_pairs.append((fixture.path(label, number - 1), path))
                number += 1
        for copy, original in copies.items():
            shutil.copyfile(fixture.path(label, original), fixture.path(label, copy))
            fixture.duplicates.append((fixture.path(label, original), fixture.path(label, copy)))
    (dataset_dir / "IQ-OTH_NCCD lung cancer dataset.txt").write_text("The IQ-OTH/NCCD lung cancer dataset\n")
    test_cases = dataset_dir / "Test cases"
    test_cases.mkdir(exist_ok=True)
    for number in range(1, 4):
        cv2.imwrite(str(test_cases / f"Test case ({number}).jpg"), _Patient(rng).slice(0, size, size, rng))
    if corrupt:
        fixture.corrupt = _add_corrupt_files(fixture, per_class)
    return fixture


def _add_corrupt_files(fixture: KaggleFixture, per_class: tuple[int, int, int]) -> list[Path]:
    """A truncated JPEG, a text file named .jpg and an empty file, numbered after the good ones."""
    truncated = fixture.path("malignant", per_class[1] + 1)
    truncated.write_bytes(fixture.path("malignant", 1).read_bytes()[:300])
    text = fixture.path("normal", per_class[2] + 1)
    text.write_text("this is not an image\n")
    empty = fixture.path("benign", per_class[0] + 1)
    empty.write_bytes(b"")
    return [truncated, text, empty]


class _Patient:
    """A body outline with two dark lungs and its own texture; its slices change lung size and detail.

    Slices ``2k`` and ``2k + 1`` share ``variant`` k and differ only by noise (near-identical
    neighbours); other slices of the patient differ clearly but keep the body; other patients
    differ in body, lungs and texture.
    """

    def __init__(self, rng: np.random.Generator) -> None:
        self.body = (rng.uniform(0.30, 0.46), rng.uniform(0.22, 0.38), rng.uniform(-0.06, 0.06))
        self.lungs = rng.uniform(0.08, 0.16, size=4)
        self.level = rng.uniform(80, 160)
        self.seed = int(rng.integers(2**31))

    def slice(self, variant: int, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
        """Slice ``variant`` of this patient at ``width`` x ``height`` with fresh noise."""
        detail = np.random.default_rng((self.seed, variant))
        side = min(width, height)
        yy, xx = np.mgrid[0:side, 0:side] / side - 0.5
        rx, ry, cy = self.body
        body = (xx / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        texture = cv2.resize(detail.uniform(0, 1, size=(8, 8)), (side, side), interpolation=cv2.INTER_CUBIC)
        image = np.where(body, self.level + 50 * texture, 0.0)
        scale = detail.uniform(0.7, 1.3)
        for sign, (lx, ly) in ((-1, self.lungs[:2]), (1, self.lungs[2:])):
            lung = ((xx - sign * 0.17) / (lx * scale)) ** 2 + ((yy - cy) / (ly * scale + 0.08)) ** 2 <= 1
            image = np.where(lung, 20 + 40 * texture, image)
        image = image + rng.normal(0, 1.5, size=image.shape)
        canvas = np.zeros((height, width))
        top, left = (height - side) // 2, (width - side) // 2
        canvas[top : top + side, left : left + side] = image
        return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
