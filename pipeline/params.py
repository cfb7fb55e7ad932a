"""One parameter schema for every setting a person types: attacks, training, data.

A :class:`Param` says what a value is (its kind, range or choices, a help line, and whether the
UI shows it as ``k/255`` grey levels); :meth:`Param.validate` turns what a person or a JSON file
gave into that kind, or raises an error that names the setting and what it accepts. The same
rules hold everywhere:

- booleans: ``True``/``False``, ``0``/``1``, and the words true/false, yes/no, on/off, 1/0;
  anything else (``"maybe"``, ``2``) is refused rather than read as true;
- whole numbers: ints, integral floats (``3.0``) and their text; never a bool, never ``2.5``;
- numbers: ints and floats, and text such as ``"0.0157"`` or ``"4/255"``; never a bool, never
  NaN or infinity;
- text: a non-empty string of at most 4096 characters.

Dataclass settings (a training run, a dataset) declare their fields with :func:`setting` and
call :func:`validate_fields` in ``__post_init__``; attacks list their ``Param`` objects.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Collection, Final, Mapping, Optional, TypeVar

from pipeline.errors import UserInputError

_TRUE: Final[frozenset[str]] = frozenset({"1", "true", "yes", "on"})
_FALSE: Final[frozenset[str]] = frozenset({"0", "false", "no", "off"})
_KIND_NAMES: Final[dict[type, str]] = {
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    str: "a text",
}
MAX_TEXT: Final[int] = 4096


@dataclass(frozen=True)
class Param:
    """One setting, described well enough to validate it and to build its control."""

    name: str
    kind: type
    default: Any
    help: str = ""
    low: Optional[float] = None
    high: Optional[float] = None
    choices: Optional[tuple[Any, ...]] = None
    #: Shown in the UI as ``k/255`` grey levels (epsilons and step sizes in image scale).
    grey_levels: bool = False
    #: A list setting: a sequence (or comma-separated text) of ``kind`` values, non-empty unless the
    #: default itself is empty (an optional list, such as an ensemble's runs).
    many: bool = False

    def validate(self, value: Any, *, error: type[UserInputError] = UserInputError) -> Any:
        """``value`` as this setting's kind, checked against its range and choices.

        ``None`` is kept where the default is ``None`` (an optional setting left unset). Raises
        ``error`` (a :class:`UserInputError`) naming the setting and what it accepts.
        """
        if value is None and self.default is None:
            return None
        if self.many:
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)) or (not items and self.default != ()):
                raise error(f"{self.name} must be a non-empty list, got {value!r}")
            return tuple(self._check(self._coerce(item, error), item, error) for item in items)
        return self._check(self._coerce(value, error), value, error)

    def _coerce(self, value: Any, error: type[UserInputError]) -> Any:
        kind = self.kind
        try:
            if kind is bool:
                if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                    return value.strip().lower() in _TRUE
                if isinstance(value, (bool, int)) and value in (0, 1):
                    return bool(value)
            elif kind is int:
                if isinstance(value, str):
                    value = float(value.strip()) if "." in value or "e" in value.lower() else int(value)
                if not isinstance(value, bool) and (not isinstance(value, float) or value.is_integer()):
                    return int(value)
            elif kind is float:
                if isinstance(value, str):
                    return float(Fraction(value.strip()))
                if not isinstance(value, bool):
                    return float(value)
            elif kind is str:
                if isinstance(value, str):
                    return value
            else:
                return kind(value)
        except (TypeError, ValueError, OverflowError, ZeroDivisionError):
            pass
        raise error(f"{self.name} must be {_KIND_NAMES.get(kind, kind.__name__)}, got {value!r}")

    def _check(self, coerced: Any, value: Any, error: type[UserInputError]) -> Any:
        if self.choices is not None and coerced not in self.choices:
            raise error(f"{self.name} must be one of {', '.join(map(str, self.choices))}, got {value!r}")
        if isinstance(coerced, (int, float)) and not isinstance(coerced, bool):
            low, high = self.low, self.high
            if not math.isfinite(coerced) or (low is not None and coerced < low) or (
                high is not None and coerced > high
            ):
                about = f" ({self.help})" if self.help else ""
                bounds = _range(low, high, self.grey_levels)
                raise error(f"{self.name} must {bounds}{about}, got {value!r}")
        if isinstance(coerced, str) and (not coerced.strip() or len(coerced) > MAX_TEXT):
            raise error(f"{self.name} must be a non-empty text of at most {MAX_TEXT} characters")
        return coerced


def _range(low: Optional[float], high: Optional[float], grey_levels: bool) -> str:
    def shown(value: float) -> str:
        return f"{value * 255:.4g}/255" if grey_levels and value else f"{value:g}"

    if low is not None and high is not None:
        return f"lie in [{shown(low)}, {shown(high)}]"
    if low is not None:
        return f"be at least {shown(low)}"
    return "be a finite number" if high is None else f"be at most {shown(high)}"


def setting(
    default: Any,
    *,
    kind: Optional[type] = None,
    help: str = "",
    low: Optional[float] = None,
    high: Optional[float] = None,
    choices: Optional[tuple[Any, ...]] = None,
    grey_levels: bool = False,
) -> Any:
    """A dataclass field validated by a :class:`Param` named after the field.

    The kind is ``kind`` or the default's type; a tuple default makes a list setting of its
    items' kind, and a ``None`` default with a range a number (else a text).
    """
    many = isinstance(default, tuple)
    if kind is None:
        sample = default[0] if many else default
        kind = type(sample) if sample is not None else (float if low is not None else str)
    param = Param("", kind, default, help, low, high, choices, grey_levels, many)
    factory = {"default_factory": lambda: default} if many else {"default": default}
    return dataclasses.field(metadata={"param": param}, **factory)


def params_of(settings: Any) -> dict[str, Param]:
    """The :class:`Param` of every field of a settings dataclass (or instance) declared by :func:`setting`."""
    return {
        spec.name: dataclasses.replace(spec.metadata["param"], name=spec.name)
        for spec in dataclasses.fields(settings)
        if "param" in spec.metadata
    }


def validate_fields(settings: Any, *, error: type[UserInputError] = UserInputError) -> None:
    """Replace each declared field of ``settings`` by its validated value (frozen dataclasses too)."""
    for name, param in params_of(settings).items():
        object.__setattr__(settings, name, param.validate(getattr(settings, name), error=error))


T = TypeVar("T")


def from_mapping(cls: type[T], values: Any, *, what: str, ignored: Collection[str] = ()) -> T:
    """Build the settings dataclass ``cls`` from a mapping (or return an instance as it is).

    Names other than the fields (and ``ignored``) are refused, so a typo in a settings file is a
    message rather than a silent default; ``what`` names the settings in that message.
    """
    if isinstance(values, cls):
        return values
    if not isinstance(values, Mapping):
        raise UserInputError(f"{what} settings must be a mapping of name: value, got {values!r}")
    names = {spec.name for spec in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names - set(ignored))
    if unknown:
        valid = ", ".join(sorted(names))
        raise UserInputError(f"unknown {what} setting(s) {', '.join(unknown)}; valid: {valid}")
    return cls(**{key: value for key, value in values.items() if key in names})


def under_flat_names(build: Callable[[], T], flat: Mapping[str, str]) -> T:
    """``build()``, the validation of a nested settings object (a run's data, its poisoning); its
    UserInputError naming one of the object's fields (``seed must lie in ...``) names instead the flat
    key people give on the command line and in settings files (``data_seed must lie in ...``):
    ``flat`` maps field names to flat keys."""
    try:
        return build()
    except UserInputError as error:
        text = str(error)
        name = text.split(" ", 1)[0]
        if flat.get(name, name) == name:
            raise
        raise type(error)(flat[name] + text[len(name):]) from None
