"""The attack engine: one native PyTorch implementation per attack behind one call shape.

``get_attack(name, **params)(model, x, y) -> x_adv``; see :mod:`pipeline.attacks.base`.
Importing this package registers every attack module below.
"""

from pipeline.attacks.base import Attack, AttackInfo, project
from pipeline.attacks.registry import (
    attack_class, attack_schema, available, get_attack, register, transfer_attacks,
)

# Importing an attack module registers its attacks; available() lists them in this order.
import pipeline.attacks.fgsm  # noqa: E402,F401
import pipeline.attacks.pgd  # noqa: E402,F401
import pipeline.attacks.transfer  # noqa: E402,F401
import pipeline.attacks.apgd  # noqa: E402,F401
import pipeline.attacks.cw  # noqa: E402,F401
import pipeline.attacks.deepfool  # noqa: E402,F401
import pipeline.attacks.ead  # noqa: E402,F401
import pipeline.attacks.square  # noqa: E402,F401
import pipeline.attacks.simba  # noqa: E402,F401
import pipeline.attacks.spsa  # noqa: E402,F401
import pipeline.attacks.boundary  # noqa: E402,F401
import pipeline.attacks.sparse  # noqa: E402,F401
import pipeline.attacks.universal  # noqa: E402,F401
import pipeline.attacks.spatial  # noqa: E402,F401
import pipeline.attacks.patch  # noqa: E402,F401
import pipeline.attacks.corruptions  # noqa: E402,F401
import pipeline.attacks.autoattack  # noqa: E402,F401
from pipeline.attacks.minimal import minimal_epsilon, search_refusal, search_runs  # noqa: E402

__all__ = [
    "Attack", "AttackInfo", "project",
    "attack_class", "attack_schema", "available", "get_attack", "register", "transfer_attacks",
    "minimal_epsilon", "search_refusal", "search_runs",
]
