"""Find the class folders of a dataset on disk and list their images in slice order.

IQ-OTH/NCCD arrives from Kaggle as ``Bengin cases/`` (sic), ``Malignant cases/`` and ``Normal
cases/`` under one or two levels of ``The IQ-OTHNCCD lung cancer dataset/``, beside a
description ``.txt`` and sometimes an unlabelled ``Test cases/``. A hand-made ``benign/
malignant/ normal/`` layout (any case) works the same. Files are sorted naturally
(``case (2)`` before ``case (10)``) because their numbers follow slice order, which the
leakage-aware split relies on.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pipeline.constants import CLASSES
from pipeline.errors import DatasetError

#: Folder names of a class: the Kaggle spelling (with its "Bengin" typo) or the plain name.
CLASS_FOLDER: Final[re.Pattern[str]] = re.compile(r"^(bengin|benign|malignant|normal)(?:[\s_-]*cases?)?$", re.I)
TEST_FOLDER: Final[re.Pattern[str]] = re.compile(r"^tests?(?:[\s_-]*cases?)?$", re.I)
#: DICOM series are often written without an extension, so files with none are tried too.
IMAGE_SUFFIXES: Final[frozenset[str]] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".dic", ""}
)
#: The index file of a DICOM disc or folder: it lists images but holds none.
DICOMDIR: Final[str] = "DICOMDIR"
#: How deep below the given folder class folders are looked for (Kaggle copies nest two levels).
MAX_DEPTH: Final[int] = 6
EXPECTED: Final[str] = "Bengin cases/, Malignant cases/, Normal cases/ (as Kaggle ships them) or benign/, malignant/, normal/"


@dataclass(frozen=True)
class FolderLayout:
    """Where each class lives, its image files in slice order, and what was ignored."""

    root: Path
    folders: dict[str, Path]
    files: dict[str, list[Path]]
    notes: tuple[str, ...]
    kaggle: bool


def natural_key(text: str) -> tuple:
    """Sort key that orders embedded numbers by value: ``case (2)`` before ``case (10)``."""
    parts = re.split(r"(\d+)", text.casefold())
    return tuple(int(part) if index % 2 else part for index, part in enumerate(parts))


def file_number(path: str | Path) -> int | None:
    """The last number in a file name (``Malignant case (12).jpg`` -> 12), or None."""
    numbers = re.findall(r"\d+", Path(path).stem)
    return int(numbers[-1]) if numbers else None


def is_image_name(path: str | Path) -> bool:
    """Whether a file's name says it may be a scan (DICOM series often have no extension; a DICOMDIR never is)."""
    path = Path(path)
    return path.suffix.lower() in IMAGE_SUFFIXES and path.name.upper() != DICOMDIR


def class_of_folder(name: str) -> str | None:
    """The class a folder name stands for, or None."""
    match = CLASS_FOLDER.match(name.strip())
    if match is None:
        return None
    word = match.group(1).lower()
    return "benign" if word == "bengin" else word


def discover(root: str | Path) -> FolderLayout:
    """Locate the three class folders at any depth under ``root`` and list their images."""
    base = Path(root).expanduser()
    if not base.exists():
        raise DatasetError(f"no such folder: {base}. Check the path, or use 'synthetic' for the built-in phantom")
    if not base.is_dir():
        raise DatasetError(f"{base} is a file; point at the folder that holds the class folders ({EXPECTED})")
    candidates = _class_folder_candidates(base)
    if not candidates:
        found = sorted(entry.name for entry in base.iterdir() if entry.is_dir() and not entry.name.startswith("."))
        raise DatasetError(
            f"no class folders found under {base} (searched {MAX_DEPTH} levels deep). Expected {EXPECTED}. "
            f"Folders found at the top: {', '.join(found[:12]) or 'none'}"
        )
    ranked = sorted(candidates.items(), key=lambda item: (-len(item[1]), len(item[0].parts), str(item[0])))
    parent, folders = ranked[0]
    missing = [name for name in CLASSES if name not in folders]
    if missing:
        present = ", ".join(f"'{folder.name}'" for folder in folders.values())
        raise DatasetError(
            f"class folder{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)} missing in "
            f"{parent}: found only {present}. Expected {EXPECTED}"
        )
    notes = [f"another copy of the class folders at {other} was ignored" for other, found in ranked[1:]
             if len(found) == len(CLASSES)]
    notes += _sibling_notes(parent, folders)
    files: dict[str, list[Path]] = {}
    for name in CLASSES:
        images, others = _images_in(folders[name])
        if not images:
            raise DatasetError(
                f"class folder '{folders[name].name}' ({name}) in {parent} holds no images; "
                "every class needs at least one scan"
            )
        if others:
            notes.append(f"{len(others)} non-image file(s) in '{folders[name].name}' ignored (e.g. {others[0]})")
        files[name] = images
    kaggle = any(folder.name.lower().endswith("cases") for folder in folders.values())
    return FolderLayout(parent, {name: folders[name] for name in CLASSES}, files, tuple(notes), kaggle)


def _class_folder_candidates(base: Path) -> dict[Path, dict[str, Path]]:
    """Every folder that directly holds at least one class folder, with those class folders."""
    candidates: dict[Path, dict[str, Path]] = {}
    for current, subdirs, _ in os.walk(base):
        here = Path(current)
        depth = len(here.relative_to(base).parts)
        subdirs[:] = sorted(name for name in subdirs if not name.startswith("."))
        classes: dict[str, Path] = {}
        for name in subdirs:
            label = class_of_folder(name)
            if label is None:
                continue
            if label in classes:
                raise DatasetError(
                    f"two folders in {here} are both '{label}': '{classes[label].name}' and '{name}'. "
                    "Merge them or remove one"
                )
            classes[label] = here / name
        if classes:
            candidates[here] = classes
        # do not look for class folders inside class folders, nor deeper than MAX_DEPTH
        subdirs[:] = [] if depth >= MAX_DEPTH else [name for name in subdirs if class_of_folder(name) is None]
    return candidates


def _sibling_notes(parent: Path, folders: dict[str, Path]) -> list[str]:
    """Notes on the folders beside the class folders that were not used."""
    notes = []
    used = {folder.name for folder in folders.values()}
    for entry in sorted(parent.iterdir(), key=lambda path: natural_key(path.name)):
        if not entry.is_dir() or entry.name in used or entry.name.startswith("."):
            continue
        if TEST_FOLDER.match(entry.name):
            count = sum(1 for item in entry.rglob("*") if item.is_file())
            notes.append(
                f"unlabelled folder '{entry.name}' ({count} files) ignored: without labels it can be used "
                "neither for training nor for measuring accuracy"
            )
        else:
            notes.append(f"folder '{entry.name}' ignored: it is not a class folder")
    return notes


def _images_in(folder: Path) -> tuple[list[Path], list[str]]:
    """Image files below ``folder`` in natural order, and the names of other files."""
    images, others = [], []
    for path in folder.rglob("*"):
        if any(part.startswith(".") for part in path.relative_to(folder).parts) or not path.is_file():
            continue
        (images if is_image_name(path) else others).append(path)
    images.sort(key=lambda path: natural_key(path.relative_to(folder).as_posix()))
    return images, sorted(path.name for path in others)
