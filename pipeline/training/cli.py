"""``python -m pipeline train``: every training setting as a flag, a progress bar, where the run is.

Flags are generated from the fields of :class:`TrainConfig` (``--batch-size`` for ``batch_size``)
and of its :class:`DataSpec` under their flat names (``--data``, ``--image-size``, ``--data-seed``,
``--split-seed``), so the command line never lags behind the configuration. Precedence, lowest
first: the field defaults, ``--preset``, ``--config-json``, explicit flags.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Optional

from pipeline.constants import SYNTHETIC_BANNER
from pipeline.data import DataSpec
from pipeline.data.poison import POISON_FLAT_NAMES, PoisonSpec
from pipeline.data.spec import FLAT_NAMES
from pipeline.errors import UserInputError
from pipeline.jobs import raise_on_sigterm
from pipeline.json_object import read_json_file
from pipeline.params import Param, params_of
from pipeline.progress import Progress, Step, report, tqdm_progress
from pipeline.store import read_record
from pipeline.tracking import add_tracking_flag, describe
from pipeline.training.config import PRESETS, TrainConfig, merge_settings
from pipeline.training.loop import EXECUTION_FIELDS, train


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train a model (standard or adversarial)",
        description="Train a ResNet on lung CT slices. Epsilons accept fractions like 4/255 or decimals.",
        epilog="example: python -m pipeline train --data synthetic --arch resnet50 --strategy pgd "
        "--epochs 30 --image-size 224 --runs-dir runs",
    )
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), help="start from a preset: quick (CPU demo) or full (GPU)"
    )
    parser.add_argument(
        "--config-json", type=Path, metavar="FILE", help="settings as a JSON object of field: value"
    )
    parser.add_argument(
        "--runs-dir", type=Path, default=Path("runs"), help="where run directories go (default: runs)"
    )
    parser.add_argument("--resume", metavar="RUN", help="continue a run (directory or name under --runs-dir)")
    parser.add_argument(
        "--run-dir", type=Path, help=argparse.SUPPRESS
    )  # a prepared directory (background jobs)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_tracking_flag(parser)
    for name, param in _settings():
        flag = "--" + name.replace("_", "-")
        text = param.help + (f" ({', '.join(map(str, param.choices))})" if param.choices else "")
        if param.kind is bool:
            parser.add_argument(
                flag,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{text} (default: {param.default})",
            )
        else:
            parser.add_argument(
                flag, dest=name, default=None, metavar=name.upper(), help=f"{text} (default: {param.default})"
            )
    parser.set_defaults(func=run)
    return parser


def _settings() -> list[tuple[str, Param]]:
    """Every setting by its flag's name: the training fields, then the data fields and the poisoning
    fields (a backdoor, for the threat experiments: ``--poison-fraction``, ``--trigger-hu``, ...) by their
    flat names."""
    data = [(FLAT_NAMES[name], param) for name, param in params_of(DataSpec).items()]
    poison = [(POISON_FLAT_NAMES[name], param) for name, param in params_of(PoisonSpec).items()]
    return [*params_of(TrainConfig).items(), *data, *poison]


def run(args: argparse.Namespace) -> int:
    raise_on_sigterm()
    explicit = {name: getattr(args, name) for name, _ in _settings() if getattr(args, name) is not None}
    is_main = os.environ.get("RANK", "0") == "0"
    progress = None if args.quiet or not is_main else _bars()
    if args.resume:
        changed = sorted(set(explicit) - set(EXECUTION_FIELDS))
        if changed or args.preset or args.config_json:
            raise UserInputError(
                f"--resume continues a run with its stored settings; only "
                f"{', '.join('--' + name.replace('_', '-') for name in EXECUTION_FIELDS)} may be "
                f"given with it (got {', '.join(changed) or '--preset/--config-json'})"
            )
        override = TrainConfig.from_dict(explicit) if explicit else None
        run_dir = train(override, args.runs_dir, progress=progress, resume=args.resume, track=args.track)
    else:
        preset = PRESETS[args.preset] if args.preset else {}
        settings = read_json_file(args.config_json, "settings file") if args.config_json else {}
        config = TrainConfig.from_dict(merge_settings(preset, settings, explicit), strict=True)
        run_dir = train(config, args.runs_dir, progress=progress, run_dir=args.run_dir, track=args.track)
    if is_main:
        _print_outcome(run_dir)
    return 0


def _bars() -> Progress:
    """One tqdm bar per stage (data, transfer examples, training), opened when the stage reports."""
    stage: dict[str, Any] = {"total": None, "done": 0, "bar": None}

    def update(done: int, total: int, message: str, step: Optional[Step]) -> None:
        if stage["bar"] is None or total != stage["total"] or done < stage["done"]:
            stage["bar"] = tqdm_progress("training" if message.startswith("epoch") else "preparing")
        stage.update(total=total, done=done)
        report(stage["bar"], done, total, message, step=step)

    return Progress(update)


def _print_outcome(run_dir: Path) -> None:
    record = read_record(run_dir)
    best = record.best
    print(f"run: {run_dir}")
    print(f"status: {record.status.get('phase')} - {record.status.get('message', '')}")
    if best:
        print(
            f"kept epoch {best['epoch']}: validation accuracy {best['val_acc']:.3f}"
            + (f", mean class recall {best['val_balanced_acc']:.3f}" if "val_balanced_acc" in best else "")
            + f", under PGD {best['val_robust_acc']:.3f} (eps {best['eps']:.4f})"
        )
    if record.status.get("tracking"):
        print(describe(record.status["tracking"]))
    poison = record.config.get("poison")
    if poison:
        print(f"POISONED on purpose (a backdoor experiment): {PoisonSpec.from_dict(poison).describe()}")
    if record.is_synthetic:
        print(f"note: trained on the synthetic phantom. {SYNTHETIC_BANNER}.")
