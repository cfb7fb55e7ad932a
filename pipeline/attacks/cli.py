"""``python -m pipeline attacks``: the attack catalogue as the registry holds it.

Without a name, one line per attack: its name, family, title and budget at the defaults, in the
budget's own units (grey levels, or degrees and pixels, or a patch's side), and whether the
evaluation can compare it at a stated epsilon or the transfer matrix offers it. With a name, that
attack's full reference: paper and link, call, norm, every parameter with its default and range.
"""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.attacks.registry import attack_class, available, get_attack, transfer_attacks


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "attacks",
        help="list the attack catalogue, or show one attack's reference",
        description="The attacks this lab runs, by registry name (the names --attacks and "
        "--transfer-attack of the evaluate command take).",
        epilog="example: python -m pipeline attacks spatial",
    )
    parser.add_argument("name", nargs="?", help="an attack's registry name: print its full reference")
    parser.set_defaults(func=run)
    return parser


def catalogue_lines() -> list[str]:
    """One line per registered attack, in registration order."""
    lines = []
    for name in available():
        cls = attack_class(name)
        notes = []
        if cls.norm is not None and any(param.name == "eps" for param in cls.params) and not cls.budget_units:
            notes.append("evaluate")
        if name in transfer_attacks():
            notes.append("transfer matrix")
        offered = f" [{', '.join(notes)}]" if notes else ""
        budget = get_attack(name).describe_budget()
        lines.append(f"{name:<15} {cls.family:<11} {cls.title}: {budget}{offered}")
    return lines


def run(args: argparse.Namespace) -> int:
    if args.name:
        cls = attack_class(args.name)  # an unknown name lists the known ones
        print(f"{cls.name}: {cls.title} ({cls.family})\n\n{cls.__doc__}")
        return 0
    print("\n".join(catalogue_lines()))
    return 0
