"""Attacks by name: ``get_attack("pgd", eps=4/255)(model, x, y)``."""

from __future__ import annotations

from typing import Any, TypeVar

from pipeline.attacks.base import Attack, Param
from pipeline.errors import AttackParameterError

_REGISTRY: dict[str, type[Attack]] = {}

A = TypeVar("A", bound=type[Attack])


def register(cls: A) -> A:
    """Class decorator: make an attack available under its lower-case ``name``."""
    name = cls.name
    if name != name.lower() or name in _REGISTRY:
        raise RuntimeError(f"attack name {name!r} must be lower-case and unique")
    _REGISTRY[name] = cls
    return cls


def available(family: str | None = None) -> list[str]:
    """Names of all registered attacks (optionally one family), in registration order."""
    return [name for name, cls in _REGISTRY.items() if family is None or cls.family == family]


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

