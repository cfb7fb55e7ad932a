"""The first value a setting shows when a person ticks "set by hand": inside the setting's own range.

An automatic setting (default None) of the threat forms once started at 0 below its minimum of 1, which
crashed the whole page, and counts started in the middle of wide ranges (500 shadow epochs)."""

from __future__ import annotations

import pytest

from dashboard.ui.controls import _starting_value
from pipeline.attacks import available
from pipeline.attacks.registry import attack_schema
from pipeline.params import params_of
from pipeline.threats.extraction import ExtractionSettings
from pipeline.threats.membership import MembershipSettings

AUTOMATIC = [
    param
    for params in (
        *(attack_schema(name) for name in available()),
        params_of(ExtractionSettings).values(),
        params_of(MembershipSettings).values(),
    )
    for param in params
    if param.default is None and not param.grey_levels and param.kind in (int, float)
]


@pytest.mark.parametrize("param", AUTOMATIC, ids=lambda param: param.name)
def test_a_setting_set_by_hand_starts_inside_its_range(param) -> None:
    value = _starting_value(param)
    assert param.low is None or value >= param.low
    assert param.high is None or value <= param.high
    if param.kind is int and param.low is not None:
        assert value == param.low  # a count starts at its smallest, never mid-range


def test_the_forms_have_automatic_counts_to_check() -> None:
    assert {"limit", "shadow_epochs", "candidates"} & {param.name for param in AUTOMATIC}
