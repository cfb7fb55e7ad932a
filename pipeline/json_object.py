"""Reading JSON that must hold an object, from files a user or an attacker may have touched.

Every on-disk JSON the lab reads (run records, the dataset cache, settings files, reports) goes
through this one parser, so a damaged or hostile file is always a clear message, never a crash.
It sits below the data, run and training layers so that each can use it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from pipeline.errors import CheckpointError, UserInputError


def parse_json_object(
    data: bytes | str, source: str, *, error: type[UserInputError] = CheckpointError
) -> dict[str, Any]:
    """Decode JSON that must hold an object; anything else raises ``error`` naming ``source``.

    Python's parser recurses once per nesting level, so a file of 100,000 brackets raises
    RecursionError rather than JSONDecodeError: that is a damaged file too, not a crash.
    """
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as problem:
        reason = "nested too deeply" if isinstance(problem, RecursionError) else str(problem)
        raise error(f"{source} is not valid JSON ({reason}); fix the file or replace it") from None
    if not isinstance(value, dict):
        kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
        kind = kinds.get(type(value), "a number")
        raise error(f"{source} must hold a JSON object of name: value pairs, not {kind}")
    return value


def read_json_file(path: Path, what: str) -> dict[str, Any]:
    """A user's settings file as a JSON object; unreadable or not an object raises :class:`UserInputError`."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise UserInputError(f"cannot read {what} {path}: {error.strerror}") from None
    return parse_json_object(data, f"{what} {path}", error=UserInputError)
def json_float(value: Any) -> float:
    """A number read back from a report: JSON has no NaN, so reports write it as null."""
    return math.nan if value is None else float(value)


def json_floats(values: Iterable[Any]) -> np.ndarray:
    """Numbers read back from a report as float64 ``[N]``, null as NaN (see :func:`json_float`)."""
    return np.array([json_float(value) for value in values], dtype=np.float64)
