"""The attack engine: one native PyTorch implementation per attack behind one call shape.

``get_attack(name, **params)(model, x, y) -> x_adv``; see :mod:`pipeline.attacks.base`.
Importing this package registers every attack module below.
"""

from pipeline.attacks.base import Attack, AttackInfo, Param, project
from pipeline.attacks.registry import attack_class, attack_schema, available, get_attack, register

__all__ = [
    "Attack", "AttackInfo", "Param", "project",
    "attack_class", "attack_schema", "available", "get_attack", "register",
]
