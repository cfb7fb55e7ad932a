"""The command line: ``python -m pipeline {train,evaluate,demo,attacks,pacs,extract,membership,backdoor}``.

Each subcommand lives beside the code it drives and registers itself here through an
``add_parser(subparsers)`` function that sets ``func`` on its parser.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.allocator import keep_freed_memory
from pipeline.errors import UserInputError


def build_parser() -> argparse.ArgumentParser:
    from pipeline.attacks import cli as attacks_cli
    from pipeline.data import cli as pacs_cli
    from pipeline.demo import cli as demo_cli
    from pipeline.evaluation import cli as evaluate_cli
    from pipeline.threats import cli as threats_cli
    from pipeline.threats import poisoning_cli
    from pipeline.training import cli as train_cli

    parser = argparse.ArgumentParser(prog="python -m pipeline", description="Lung CT robustness lab")
    subparsers = parser.add_subparsers(dest="command", required=True)
    train_cli.add_parser(subparsers)
    evaluate_cli.add_parser(subparsers)
    demo_cli.add_parser(subparsers)
    attacks_cli.add_parser(subparsers)
    pacs_cli.add_parser(subparsers)
    threats_cli.add_parser(subparsers)
    poisoning_cli.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()  # every command, background job and torchrun worker comes through here
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
