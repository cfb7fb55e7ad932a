"""Attacks by name: ``get_attack("pgd", eps=4/255)(model, x, y)``.

The registry is the only list of attacks, and a name means one attack everywhere (``cw`` is
CW-L2, ``cw-linf`` the CW margin loss inside an L∞ ball). Registering an attack also completes
its docstring from its schema: the call with its shapes and units, what its norm bounds, every
parameter with its default and range, and an example, so the documentation cannot drift from
the defaults the code uses.
"""

from __future__ import annotations

import textwrap
from typing import Any, TypeVar

from pipeline.attacks.base import Attack, Param
from pipeline.errors import AttackParameterError
from pipeline.units import format_epsilon

_REGISTRY: dict[str, type[Attack]] = {}

A = TypeVar("A", bound=type[Attack])


def register(cls: A) -> A:
    """Class decorator: make an attack available under its lower-case ``name``."""
    name = cls.name
    if name != name.lower() or name in _REGISTRY:
        raise RuntimeError(f"attack name {name!r} must be lower-case and unique")
    _REGISTRY[name] = cls
    cls.__doc__ = f"{(cls.__doc__ or cls.title).rstrip()}\n\n{_reference(cls)}"
    return cls


#: What the result may differ from the scan by, per norm.
_BOUNDS = {
    "linf": "differs from ``x`` by at most ``eps`` in every pixel (the L∞ ball, image scale)",
    "l2": "lies within L2 distance ``eps`` of ``x`` (image scale, over the whole scan)",
    "l1": "lies within L1 distance ``eps`` of ``x`` (image scale, over the whole scan)",
    "l0": "changes few pixels, each by any amount (an L0 attack: no budget in grey levels)",
    None: "is not held in a norm ball (a minimal-perturbation search or a corruption)",
}


def _reference(cls: type[Attack]) -> str:
    """The generated part of a registered attack's docstring (indented as a class docstring)."""
    target = " (``target`` [N] aims it at given classes)" if cls.supports_target else ""
    call = (
        f"Call: ``get_attack({cls.name!r}, **params)(model, x, y) -> x_adv``, with ``x`` float "
        "[N, 1, H, W] in [0, 1] (the scan's own grey levels; budgets in this image scale, shown as "
        f"k/255 grey levels) and ``y`` int64 [N] class indices{target}. ``x_adv`` has ``x``'s shape, "
        f"dtype and device, lies in [0, 1] and {cls.bound or _BOUNDS[cls.norm]}; ``x`` and the model are "
        "left unchanged. Bad parameters raise AttackParameterError."
    )
    lines = [
        *textwrap.wrap(call, width=96, break_on_hyphens=False),
        "",
        "Parameters (default, allowed range):",
        *(f"    {_describe(param)}" for param in cls.params),
        "",
        "Example::",
        "",
        "    >>> from pipeline.attacks import get_attack",
        f"    >>> attack = get_attack({cls.name!r}{_example_args(cls)})",
        "    >>> x_adv = attack(model, x, y)  # x: float [N, 1, H, W] in [0, 1]; y: int64 [N]",
    ]
    return "\n".join(f"    {line}" if line else "" for line in lines)


def _describe(param: Param) -> str:
    shown = _value(param, param.default) if param.default is not None else "unset (automatic)"
    if param.choices is not None:
        allowed = ", one of " + ", ".join(map(str, param.choices))
    elif param.low is not None and param.high is not None:
        allowed = f", in [{_value(param, param.low)}, {_value(param, param.high)}]"
    else:
        allowed = ""
    return f"{param.name} ({param.kind.__name__}, default {shown}{allowed}): {param.help}"


def _value(param: Param, value: object) -> str:
    if param.grey_levels and isinstance(value, float) and value:
        return format_epsilon(value)
    return repr(value)


def _example_args(cls: type[Attack]) -> str:
    """The budget (or the first parameter) at its default, as a person would write it."""
    param = next((p for p in cls.params if p.name == "eps"), cls.params[0] if cls.params else None)
    if param is None or param.default is None:
        return ""
    value = format_epsilon(param.default) if param.grey_levels else repr(param.default)
    return f", {param.name}={value}"


def available(family: str | None = None) -> list[str]:
    """Names of all registered attacks (optionally one family), in registration order."""
    return [name for name, cls in _REGISTRY.items() if family is None or cls.family == family]


def transfer_attacks() -> list[str]:
    """The attacks a transfer matrix offers: PGD (its default) and those made to transfer between models
    (MI-FGSM and the DI-, TI-, NI-, SI-NI- and VMI-FGSM family), in registration order."""
    return [name for name, cls in _REGISTRY.items() if name == "pgd" or cls.transfer_oriented]


def attack_class(name: str) -> type[Attack]:
    try:
        return _REGISTRY[str(name).strip().lower()]
    except KeyError:
        raise AttackParameterError(
            f"unknown attack {name!r}; available attacks: {', '.join(_REGISTRY)}"
        ) from None


def get_attack(name: str, **params: Any) -> Attack:
    """Build the attack ``name`` with ``params`` (validated against its schema)."""
    return attack_class(name)(**params)


def attack_schema(name: str) -> tuple[Param, ...]:
    """The parameter schema of ``name``, for building controls and help text."""
    return attack_class(name).params

