"""``python -m pipeline demo``: install the shipped demo models, retrain them, or regenerate the shipped files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipeline.demo.background import run_demo_job
from pipeline.demo.core import RECIPES, Demo, default_recipe, prepare_demo
from pipeline.demo.shipped import SHIPPED_DIR, SHIPPED_RECIPE, install_shipped, ship
from pipeline.jobs import raise_on_sigterm
from pipeline.progress import tqdm_progress


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    recipes = "; ".join(f"{name}: {recipe.describe()}" for name, recipe in RECIPES.items())
    parser = subparsers.add_parser(
        "demo",
        help="the demo: a standard and a robust model on the synthetic phantom (shipped; or retrain them)",
        description="Install the two demo models that ship with the lab (a standard model and an adversarially "
        "fine-tuned one, trained on the synthetic phantom with the cpu recipe) into the run store, in seconds, "
        "and print their held-out figures. --train trains them anew instead, as two ordinary runs, attacks both "
        "with PGD on their held-out test scans and prints the figures; --ship also regenerates the shipped "
        f"files ({SHIPPED_DIR}). Recipes: {recipes}",
        epilog="examples: python -m pipeline demo --runs-dir runs; python -m pipeline demo --train --runs-dir runs; "
        "python -m pipeline demo --ship --runs-dir /tmp/demo",
    )
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where the runs go (default: runs)")
    parser.add_argument("--train", action="store_true", help="train the two models instead of installing the "
                        "shipped ones")
    parser.add_argument("--ship", action="store_true", help=f"train with the {SHIPPED_RECIPE} recipe, then write "
                        "the shipped files from the result (the one command that regenerates them)")
    parser.add_argument("--from-runs", type=Path, metavar="DIR", help="with --ship: ship the demo already "
                        "prepared in DIR (by --train --recipe cpu) instead of training")
    parser.add_argument(
        "--recipe", choices=["auto", *RECIPES], default="auto",
        help="with --train: cpu or gpu; auto picks gpu where CUDA is available (default: auto)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--job-dir", type=Path, help=argparse.SUPPRESS)  # the dashboard's background job
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    raise_on_sigterm()
    echo = None if args.quiet else tqdm_progress("demo")
    if args.from_runs is not None and not args.ship:
        print("--from-runs goes with --ship")
        return 2
    if args.ship:
        if args.from_runs is None:
            prepare_demo(args.runs_dir, SHIPPED_RECIPE, device=args.device, progress=echo)
        demo = ship(args.from_runs or args.runs_dir, progress=echo)
        print(f"wrote the shipped demo to {SHIPPED_DIR}")
    elif not args.train:
        demo = install_shipped(args.runs_dir)
        print("installed the shipped demo models (trained with the cpu recipe; nothing was trained now)")
    elif args.job_dir is not None:
        recipe = default_recipe(args.device) if args.recipe == "auto" else args.recipe
        trained = run_demo_job(args.runs_dir, recipe, device=args.device, echo=echo)
        if trained is None:
            print("cancelled; the models finished so far are kept")
            return 1
        demo = trained
    else:
        recipe = default_recipe(args.device) if args.recipe == "auto" else args.recipe
        demo = prepare_demo(args.runs_dir, recipe, device=args.device, progress=echo)
    _print(demo)
    return 0


def _print(demo: Demo) -> None:
    print(f"standard model: {demo.standard.run_dir}")
    print(f"robust model:   {demo.robust.run_dir}")
    print(f"held-out test scans: {demo.standard.test_scans}; the story scan: {demo.story}")
    print(demo.table())
    print("note: trained and tested on the synthetic phantom; these figures are not medical results")
