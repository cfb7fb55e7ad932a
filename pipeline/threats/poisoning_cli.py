"""``python -m pipeline backdoor``: train a poisoned twin of a clean run and measure its backdoor.

Either the poisoning settings (``--poison-fraction``, ``--trigger-hu``, ... the same flags as
``python -m pipeline train``), which train the twin first, or ``--poisoned-run``, a run already poisoned.
The results land in a job folder under ``<runs>/threats/poisoning/`` (or ``--out``) and in MLflow; see
:mod:`pipeline.threats.poisoning`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipeline.constants import SYNTHETIC_BANNER
from pipeline.data.poison import POISON_FLAT_NAMES, PoisonSpec
from pipeline.jobs import raise_on_sigterm
from pipeline.json_object import read_json_file
from pipeline.params import params_of
from pipeline.progress import tqdm_progress
from pipeline.store import new_run_dir, read_status, resolve_run
from pipeline.threats.poisoning import KIND, BackdoorRequest, poisoning_root, run_job
from pipeline.threats.spectral import REMOVAL
from pipeline.tracking import add_tracking_flag, describe


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "backdoor",
        help="poison a share of a run's training scans with a trigger and measure the backdoor",
        description="Train a poisoned twin of a clean run (BadNets dirty-label or clean-label), then measure "
        "clean accuracy and trigger success rate of both on held-out scans, and whether spectral signatures "
        "find the poisoned training scans.",
        epilog="example: python -m pipeline backdoor --clean-run 20250101-120000-resnet18-standard "
        "--poison-fraction 0.1 --poison-target normal --trigger-size-mm 12 --trigger-hu 1000",
    )
    parser.add_argument("--clean-run", metavar="RUN", help="the unpoisoned run (directory or name under --runs-dir)")
    parser.add_argument(
        "--poisoned-run", metavar="RUN", help="measure this poisoned run instead of training a twin"
    )
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs live (default: runs)")
    parser.add_argument(
        "--removal", type=float, default=REMOVAL,
        help=f"the detection flags this many times the number of poisoned scans (default: {REMOVAL})",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument("--out", type=Path, help="folder for the results (default: a new one under the runs)")
    parser.add_argument("--config-json", type=Path, metavar="FILE", help="the experiment as a JSON object")
    parser.add_argument("--job-dir", type=Path, help=argparse.SUPPRESS)  # a prepared folder (background jobs)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_tracking_flag(parser)
    for name, param in params_of(PoisonSpec).items():
        flat = POISON_FLAT_NAMES[name]
        choices = f" ({', '.join(map(str, param.choices))})" if param.choices else ""
        parser.add_argument(
            "--" + flat.replace("_", "-"), dest=flat, metavar=flat.upper(),
            help=f"{param.help}{choices} (default: {param.default})",
        )
    parser.set_defaults(func=run)
    return parser


def _request(args: argparse.Namespace) -> BackdoorRequest:
    if args.config_json:
        return BackdoorRequest.from_dict(read_json_file(args.config_json, "experiment file"))
    poison = {name: getattr(args, flat) for name, flat in POISON_FLAT_NAMES.items() if getattr(args, flat) is not None}
    return BackdoorRequest(
        clean_run=args.clean_run,
        poisoned_run=args.poisoned_run,
        poison=poison or None,
        runs_dir=str(args.runs_dir),
        removal=args.removal,
        device=args.device,
        track=args.track,
    )


def run(args: argparse.Namespace) -> int:
    raise_on_sigterm()
    request = _request(args)
    job_dir = args.job_dir or args.out
    if job_dir is None:
        clean = resolve_run(request.runs_dir, str(request.clean_run))
        job_dir = new_run_dir(poisoning_root(request.runs_dir), f"{KIND}-{clean.name}")
    progress = None if args.quiet else tqdm_progress("backdoor")
    result, paths = run_job(request, job_dir, echo=progress)
    print(result.summary)
    print(f"poisoned run: {result.poisoned.run_dir}")
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    entry = read_status(Path(job_dir)).get("tracking")
    if entry:
        print(describe(entry))
    if result.synthetic:
        print(SYNTHETIC_BANNER.upper())
    return 0
