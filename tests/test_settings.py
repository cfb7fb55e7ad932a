"""Settings people type: one schema, one name for a dataset, old and new layouts alike."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipeline.attacks import get_attack
from pipeline.data import DataSpec, fold_data_settings
from pipeline.errors import UserInputError
from pipeline.training import TrainConfig


def test_data_spec_validates_round_trips_and_is_a_cache_key() -> None:
    spec = DataSpec(image_size="64", count=24.0, split_seed="7", val_fraction="1/5")
    assert (spec.image_size, spec.count, spec.split_seed, spec.val_fraction) == (64, 24, 7, 0.2)
    assert DataSpec.from_dict(spec.to_dict()) == spec and hash(spec) == hash(DataSpec.from_dict(spec.to_dict()))
    assert spec.scans == DataSpec(image_size=64, count=24, split_seed=1).scans  # the split is not the scans
    for bad, words in (
        ({"count": 0}, "count must lie in"),
        ({"seed": 1.5}, "seed must be a whole number"),
        ({"window": "bone"}, "window must be one of"),
        ({"split_strategy": "patient"}, "split_strategy must be one of"),
        ({"val_fraction": 0.5, "test_fraction": 0.45}, "below 0.9"),
        ({"source": ""}, "non-empty text"),
    ):
        with pytest.raises(UserInputError, match=words):
            DataSpec(**bad)
    with pytest.raises(UserInputError, match="unknown data setting"):
        DataSpec.from_dict({"image_size": 64, "size": 64})


def test_flat_and_nested_settings_name_the_same_training() -> None:
    flat = {"data": "synthetic", "image_size": 48, "data_seed": 2, "count": 36, "split_seed": 4, "seed": 9}
    nested = {"data": {"image_size": 48, "seed": 2, "count": 36, "split_seed": 4}, "seed": 9}
    assert fold_data_settings(flat)["data"] == {"source": "synthetic", **nested["data"]}
    config = TrainConfig.from_dict(flat)
    assert config == TrainConfig.from_dict(nested) == TrainConfig.from_dict(config.to_dict())
    assert config.seed == 9 and config.data.split_seed == 4  # the training seed no longer moves the split
    quick = TrainConfig.from_preset("quick", data=DataSpec(image_size=48, count=36))
    assert quick.data == DataSpec(image_size=48, count=36) and quick.arch == "resnet18"
    overridden, preset = TrainConfig.from_preset("quick", image_size=64).data, TrainConfig.from_preset("quick").data
    assert overridden == replace(preset, image_size=64) != preset  # a flat override changes one field
    with pytest.raises(UserInputError, match="at least 32 pixels"):
        TrainConfig(data=DataSpec(image_size=16))


def _outcome(build) -> object:
    try:
        return build()
    except UserInputError:
        return "refused"


@pytest.mark.parametrize(
    "attack_name, training_name, values",
    [
        ("eps", "eps", ["4/255", "0.0157", 0.0157, True, "four", float("nan"), 2.0]),
        ("steps", "steps", [3, "3", 3.0, "3.0", 2.5, True, "three", 0]),
        ("random_start", "augment", [True, "yes", "off", 1, 0, 2, "maybe", None]),
    ],
)
def test_attacks_and_training_read_a_setting_the_same_way(
    attack_name: str, training_name: str, values: list
) -> None:
    """One schema: PGD's parameters and the training configuration accept and refuse alike."""
    for value in values:
        attack = _outcome(lambda: getattr(get_attack("pgd", **{attack_name: value}), attack_name))
        training = _outcome(lambda: getattr(TrainConfig(**{training_name: value}), training_name))
        assert attack == training, (value, attack, training)
    assert get_attack("pgd", eps="4/255").eps == pytest.approx(4 / 255)  # a typed attribute, as torchattacks'
    assert _outcome(lambda: get_attack("pgd", random_start="maybe")) == "refused"  # was read as False
