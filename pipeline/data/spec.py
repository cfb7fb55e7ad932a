"""``DataSpec``: the one name of a dataset and its split, which every part of the lab passes on.

The Data page previews a ``DataSpec``, training trains on it and stores it in the run record,
evaluation reloads it from there: what the Data page shows is what a model is trained and
tested on. It holds the scans' identity (source, image size, and for the phantom its count and
seed; for DICOM folders the named window) and the split's (fractions, strategy and seed).

The command line, the presets and records written before the ``DataSpec`` existed name these
settings flat (``data``, ``image_size``, ``data_seed``, ...); :func:`fold_data_settings` turns
such a mapping into the nested form.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Final, Mapping

from pipeline.data.dicom import WINDOW_NAMES
from pipeline.data.dicomweb import PacsQuery, is_dicomweb_source
from pipeline.data.preprocess import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from pipeline.errors import UserInputError
from pipeline.params import from_mapping, setting, validate_fields

SYNTHETIC: Final[str] = "synthetic"
SPLIT_STRATEGIES: Final[tuple[str, ...]] = ("grouped", "random")
#: The flat name of each field, as command-line flags, presets and older run records write it.
FLAT_NAMES: Final[dict[str, str]] = {
    "source": "data",
    "image_size": "image_size",
    "count": "count",
    "seed": "data_seed",
    "window": "window",
    "val_fraction": "val_fraction",
    "test_fraction": "test_fraction",
    "split_strategy": "split_strategy",
    "split_seed": "split_seed",
}


@dataclass(frozen=True)
class DataSpec:
    """Which scans, at which size, split how. Frozen and hashable: a cache key as it stands.

    Raises :class:`UserInputError` naming the field when a value is out of range.
    """

    source: str = setting(
        SYNTHETIC, help="'synthetic' (the phantom), a dataset folder, or a PACS collection (dicomweb:http://...)"
    )
    image_size: int = setting(
        224, low=MIN_IMAGE_SIZE, high=MAX_IMAGE_SIZE, help="side of the square scans in pixels"
    )
    count: int = setting(600, low=12, high=100_000, help="number of phantom scans (ignored for folders)")
    seed: int = setting(0, low=0, high=2**31 - 1, help="seed of the synthetic phantom")
    window: str = setting(
        "lung", choices=WINDOW_NAMES, help="CT window of DICOM folders (file: the one each file stores)"
    )
    val_fraction: float = setting(0.15, low=0.05, high=0.5, help="share of scans for validation")
    test_fraction: float = setting(0.15, low=0.0, high=0.5, help="share of scans held out for testing")
    split_strategy: str = setting(
        "grouped", choices=SPLIT_STRATEGIES, help="grouped keeps near-duplicates on one side"
    )
    split_seed: int = setting(0, low=0, high=2**31 - 1, help="seed of the train/validation/test split")

    def __post_init__(self) -> None:
        validate_fields(self)
        if is_dicomweb_source(self.source):  # written back in its one spelling; refuses credentials in the URL
            object.__setattr__(self, "source", PacsQuery.from_source(self.source).to_source())
        if self.val_fraction + self.test_fraction >= 0.9:
            raise UserInputError(
                "val_fraction + test_fraction must stay below 0.9 to leave scans to train on"
            )

    @property
    def synthetic(self) -> bool:
        """Whether this is the synthetic phantom (never a medical result)."""
        return self.source.strip().lower() == SYNTHETIC

    @property
    def scans(self) -> tuple[Any, ...]:
        """What decides the scans themselves (not the split): the key of a loaded dataset."""
        return (self.source, self.image_size, self.count, self.seed, self.window)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: field name to value."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DataSpec:
        """Build from a nested mapping of field: value; unknown names are refused."""
        return from_mapping(cls, values, what="data")


def fold_data_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with its data settings under one ``data`` key, as :meth:`DataSpec.from_dict` takes.

    ``data`` may already be nested (a mapping or a ``DataSpec``) or be the flat source text;
    flat keys (``image_size``, ``data_seed``, ... see :data:`FLAT_NAMES`) are moved into it and
    win over nested ones. Nothing is validated here.
    """
    folded = dict(values)
    data = folded.pop("data", None)
    if isinstance(data, DataSpec):
        nested = data.to_dict()
    elif isinstance(data, Mapping):
        nested = dict(data)
    else:
        nested = {} if data is None else {"source": data}
    for name, flat in FLAT_NAMES.items():
        if flat != "data" and flat in folded:
            nested[name] = folded.pop(flat)
    folded["data"] = nested
    return folded
