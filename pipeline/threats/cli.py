"""``python -m pipeline extract`` and ``python -m pipeline membership``: the threats from the command line.

Flags are generated from the fields of :class:`ExtractionSettings` and :class:`MembershipSettings`
(``--query-seed`` for ``query_seed``; ``--target`` repeats), so the command line never lags behind the
settings; ``--config-json`` gives them all as a JSON object instead (what background jobs are given).
The models each threat trains, ``result.json`` and ``report.html`` go to ``--out`` (by default a new
``<run>/threats/<kind>-<timestamp>/``); the figures are printed, with their 95% intervals.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipeline.errors import UserInputError
from pipeline.jobs import raise_on_sigterm
from pipeline.json_object import read_json_file
from pipeline.params import Param, params_of
from pipeline.progress import tqdm_progress
from pipeline.store import read_status
from pipeline.threats.background import CANCELLED_KEEPS, new_threat_dir, run_threat_job
from pipeline.threats.extraction import ExtractionSettings
from pipeline.threats.membership import MembershipSettings
from pipeline.threats.report import summary_lines
from pipeline.tracking import add_tracking_flag, describe
from pipeline.units import format_epsilon

#: Subcommand: (settings, help, description, example).
COMMANDS: dict[str, tuple[type, str, str, str]] = {
    "extract": (
        ExtractionSettings,
        "model extraction: steal a saved run from its answers, then attack it with the copy",
        "Train a surrogate per query budget on the victim's answers alone (labels or probabilities) to phantom "
        "scans of another seed, and report agreement with the victim and the success of attacks crafted on the "
        "surrogate and replayed on the victim, beside the white-box and random-noise successes. Epsilons accept "
        "fractions like 4/255.",
        "python -m pipeline extract --victim runs/resnet18-standard --budgets 250,500,1000,2000 --answers labels",
    ),
    "membership": (
        MembershipSettings,
        "membership inference: can the model tell which scans it was trained on (loss, confidence, LiRA)",
        "Attack saved runs with the loss and confidence thresholds and offline LiRA (shadow models trained by "
        "the lab's loop on phantom scans of another seed), and report ROC AUC and TPR at 1% and 0.1% FPR with "
        "95% intervals. Give a standard and an adversarially trained run to compare them.",
        "python -m pipeline membership --target runs/resnet18-standard --target runs/resnet18-pgd --shadows 4",
    ),
}


def add_parser(subparsers: Any) -> None:
    """Register both subcommands."""
    for command, (settings, summary, description, example) in COMMANDS.items():
        parser = subparsers.add_parser(command, help=summary, description=description, epilog=f"example: {example}")
        for name, param in params_of(settings).items():
            flag = "--" + ("target" if name == "targets" else name.replace("_", "-"))
            text = param.help + (f" ({', '.join(map(str, param.choices))})" if param.choices else "")
            if param.kind is bool:
                parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                                    help=f"{text} (default: {param.default})")
            elif name == "targets":
                parser.add_argument(flag, dest=name, action="append", metavar="RUN", help=f"{text}; repeat it")
            else:
                parser.add_argument(flag, dest=name, default=None, metavar=name.upper(),
                                    help=text if "(default:" in text or param.default is None
                                    else f"{text} (default: {_written(param)})")
        parser.add_argument("--config-json", type=Path, metavar="FILE",
                            help="every setting as a JSON object (what background jobs are given); no other setting flags")
        parser.add_argument("--out", type=Path, help="folder for the trained models, result.json and report.html "
                            "(default: a new <run>/threats/<kind>-<timestamp>/)")
        parser.add_argument("--job-dir", type=Path, help=argparse.SUPPRESS)  # the dashboard's background job
        parser.add_argument("--quiet", action="store_true", help="no progress bar")
        add_tracking_flag(parser)
        parser.set_defaults(func=run, settings_class=settings)


def _written(param: Param) -> str:
    """A setting's default as people write it on this command line: budgets as k/255, lists with commas."""
    values = param.default if param.many else (param.default,)
    return ",".join(
        format_epsilon(value) if param.grey_levels and value is not None else str(value) for value in values
    )


def settings_from(args: argparse.Namespace) -> ExtractionSettings | MembershipSettings:
    """The settings the flags (or ``--config-json``) give, validated before anything is loaded."""
    cls = args.settings_class
    given = {name: getattr(args, name) for name in params_of(cls) if getattr(args, name) is not None}
    if args.config_json is not None:
        if given:
            raise UserInputError("give the settings in --config-json or as flags, not both")
        return cls.from_dict(read_json_file(args.config_json, "settings file"))
    return cls.from_dict(given)


def run(args: argparse.Namespace) -> int:
    raise_on_sigterm()
    settings = settings_from(args)
    out = args.job_dir or args.out or new_threat_dir(settings)
    done = run_threat_job(settings, out, echo=None if args.quiet else tqdm_progress(args.command), track=args.track)
    if done is None:
        print(f"cancelled; {CANCELLED_KEEPS}")
        return 1
    result, paths = done
    for line in summary_lines(result):
        print(line)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    entry = read_status(out).get("tracking")
    if entry:
        print(describe(entry))
    return 0
