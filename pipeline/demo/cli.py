"""``python -m pipeline demo``: train the standard and the robust demo model, then print the pair."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipeline.demo.background import run_demo_job
from pipeline.demo.core import RECIPES, default_recipe, prepare_demo
from pipeline.jobs import raise_on_sigterm
from pipeline.progress import tqdm_progress


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    recipes = "; ".join(f"{name}: {recipe.describe()}" for name, recipe in RECIPES.items())
    parser = subparsers.add_parser(
        "demo",
        help="prepare the demo: a standard and a robust model on the synthetic phantom",
        description="Train a standard model and an adversarially fine-tuned one on the synthetic phantom, one "
        "after the other, as two ordinary runs; attack both with PGD on their held-out test scans and print "
        f"the figures. Recipes: {recipes}",
        epilog="example: python -m pipeline demo --runs-dir runs",
    )
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where the runs go (default: runs)")
    parser.add_argument(
        "--recipe", choices=["auto", *RECIPES], default="auto",
        help="cpu or gpu; auto picks gpu where CUDA is available (default: auto)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--job-dir", type=Path, help=argparse.SUPPRESS)  # the dashboard's background job
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    raise_on_sigterm()
    recipe = default_recipe(args.device) if args.recipe == "auto" else args.recipe
    echo = None if args.quiet else tqdm_progress("demo")
    if args.job_dir is not None:
        demo = run_demo_job(args.runs_dir, recipe, device=args.device, echo=echo)
        if demo is None:
            print("cancelled; the models finished so far are kept")
            return 1
    else:
        demo = prepare_demo(args.runs_dir, recipe, device=args.device, progress=echo)
    print(f"standard model: {demo.standard.run_dir}")
    print(f"robust model:   {demo.robust.run_dir}")
    print(f"held-out test scans: {demo.standard.test_scans}; the story scan: {demo.story}")
    print(demo.table())
    print("note: trained and tested on the synthetic phantom; these figures are not medical results")
    return 0
