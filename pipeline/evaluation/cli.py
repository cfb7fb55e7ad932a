"""``python -m pipeline evaluate``: the reference table with strength checks, and the report files.

Loads each run's model and the scans it was never trained on (its stored split), runs the
evaluation suite, prints the table, and writes ``report.json``, ``report.csv`` and
``report.html`` side by side (by default under the first run's ``evaluations/<timestamp>/``).
With ``--job-dir`` it also keeps ``status.json`` there up to date for the dashboard and stops
when the job is cancelled.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from pipeline import jobs, tracking
from pipeline.errors import UserInputError
from pipeline.evaluation.certify import check_settings
from pipeline.evaluation.data import SPLIT_SIDES, run_data, split_indices
from pipeline.evaluation.defenses import make_defense
from pipeline.evaluation.report import SYNTHETIC_BANNER, save_report
from pipeline.evaluation.strength import StrengthSettings
from pipeline.evaluation.suite import EvaluationSuite, SuiteSettings, attack_specs, evaluate_models
from pipeline.progress import ProgressCallback, tqdm_progress
from pipeline.store import RunRecord, load_model, resolve_run, update_status
from pipeline.units import format_epsilon, parse_epsilons

#: Seconds between two progress writes to a job's status.json.
STATUS_INTERVAL_S = 1.0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        help="robustness of saved runs: reference table, strength checks, HTML report",
        description="Evaluate saved runs on their own held-out scans under strong attacks. Epsilons accept "
        "fractions like 4/255 or decimals like 0.0157 (image scale [0, 1]).",
        epilog="example: python -m pipeline evaluate --run runs/resnet50-standard --run runs/resnet50-pgd "
        "--attacks fgsm,pgd,cw --eps 2/255,4/255",
    )
    parser.add_argument(
        "--run",
        action="append",
        required=True,
        metavar="RUN",
        help="a run directory or a name under --runs-dir; repeat to compare models",
    )
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs live (default: runs)")
    parser.add_argument(
        "--attacks",
        default="fgsm,pgd,cw",
        help="comma-separated: pgd, fgsm, cw (CW margin inside the L∞ ball) and any L∞ attack "
        "of the registry, e.g. apgd, mifgsm, square, autoattack (default: fgsm,pgd,cw)",
    )
    parser.add_argument(
        "--eps", default="4/255", help="comma-separated L∞ budgets, e.g. 2/255,4/255 (default 4/255)"
    )
    parser.add_argument("--split", default="test", choices=SPLIT_SIDES, help="which scans (default: test)")
    parser.add_argument("--limit", type=int, help="evaluate only this many scans, classes in turn")
    parser.add_argument("--out", type=Path, help="directory for report.json/csv/html")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--batch-size", type=int, default=32, help="scans per batch (default 32)")
    parser.add_argument("--steps", type=int, default=10, help="steps of PGD and CW (default 10)")
    parser.add_argument(
        "--strength",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the strength checks beside every figure (default: on)",
    )
    parser.add_argument(
        "--strong-steps", type=int, default=50, help="steps of the long PGD check (default 50)"
    )
    parser.add_argument("--restarts", type=int, default=3, help="restarts of the long PGD check (default 3)")
    parser.add_argument(
        "--ensemble-steps",
        type=int,
        default=20,
        help="steps of each APGD member of the AutoAttack check (default 20)",
    )
    parser.add_argument(
        "--queries",
        type=int,
        default=1000,
        help="queries of the Square attack and of AutoAttack's Square member (default 1000)",
    )
    parser.add_argument(
        "--transfer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="transfer matrix between the runs, when there are several (default: on)",
    )
    parser.add_argument(
        "--min-eps", action="store_true", help="per-scan minimal flipping epsilon (PGD bisection)"
    )
    parser.add_argument(
        "--certify",
        type=float,
        metavar="SIGMA",
        help="certify by randomized smoothing with this noise level (e.g. 0.25)",
    )
    parser.add_argument("--certify-n", type=int, default=1000, help="noise samples per scan when certifying")
    parser.add_argument(
        "--defenses",
        default="",
        help="comma-separated input defences: jpeg, bitdepth, median, "
        "shift; each reported under the naive and the adaptive (BPDA/EOT) attack",
    )
    parser.add_argument("--job-dir", type=Path, help="write status and progress there (background jobs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    tracking.add_tracking_flag(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.job_dir is None:
        suite, paths = _evaluate(args, settings, None if args.quiet else tqdm_progress("evaluating"))
    else:
        suite, paths = _as_job(args, settings)
    _print(suite, paths)
    _track(args, settings, suite, paths)
    return 0


def _settings(args: argparse.Namespace) -> SuiteSettings:
    """Validate every flag before loading anything."""
    attacks = tuple(dict.fromkeys(name.strip().lower() for name in args.attacks.split(",") if name.strip()))
    if not attacks:
        raise UserInputError("no attack given; write e.g. --attacks fgsm,pgd,cw")
    epsilons = tuple(parse_epsilons(args.eps))
    for name, value, low in (
        ("--steps", args.steps, 1),
        ("--batch-size", args.batch_size, 1),
        ("--strong-steps", args.strong_steps, 1),
        ("--restarts", args.restarts, 1),
        ("--ensemble-steps", args.ensemble_steps, 1),
        ("--queries", args.queries, 1),
        ("--certify-n", args.certify_n, 10),
    ):
        if value < low:
            raise UserInputError(f"{name} must be at least {low}, got {value}")
    for flag, folder in (("--out", args.out), ("--job-dir", args.job_dir)):
        if folder is not None:
            _check_folder(folder, flag)
    attack_specs(attacks, epsilons, args.steps)  # unknown names and bad parameters fail here
    defenses = tuple(name.strip().lower() for name in args.defenses.split(",") if name.strip())
    for name in defenses:
        make_defense(name)
    if args.certify is not None:
        check_settings(args.certify, 100, args.certify_n)
    return SuiteSettings(
        attacks=attacks,
        epsilons=epsilons,
        steps=args.steps,
        strength=args.strength,
        strength_settings=StrengthSettings(
            pgd_steps=args.steps,
            strong_steps=args.strong_steps,
            strong_restarts=args.restarts,
            square_queries=args.queries,
            ensemble_steps=args.ensemble_steps,
        ),
        transfer=args.transfer,
        minimal_epsilon=args.min_eps,
        certify_sigma=args.certify,
        certify_n=args.certify_n,
        defenses=defenses,
        batch_size=args.batch_size,
    )


def _check_folder(folder: Path, flag: str) -> None:
    """Refuse an output folder that cannot be one before the evaluation spends minutes on attacks:
    an existing file, a path under a file, or a place without write permission."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"lies under the file {existing}"
        raise UserInputError(
            f"{flag} {folder} {where}, not a folder; give a folder for the reports (created if missing)"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserInputError(f"{flag} {folder}: no permission to write in {existing}; choose another folder")


def _evaluate(
    args: argparse.Namespace, settings: SuiteSettings, progress: Optional[ProgressCallback]
) -> tuple[EvaluationSuite, dict[str, Path]]:
    run_dirs = [resolve_run(args.runs_dir, run) for run in args.run]
    if len(set(map(Path.resolve, run_dirs))) != len(run_dirs):
        raise UserInputError("the same run was given twice; give each --run once")
    loaded = [load_model(run_dir) for run_dir in run_dirs]
    for _, record in loaded[1:]:
        _check_same_data(loaded[0][1], record, args.split)
    models: dict[str, Any] = {}
    info: dict[str, dict[str, Any]] = {}
    for run_dir, (model, record) in zip(run_dirs, loaded):
        name = _unique(record.name, models)
        models[name] = model
        info[name] = {
            "run_dir": str(run_dir),
            **{key: record.config.get(key) for key in ("arch", "strategy", "epochs")},
            "training_eps": format_epsilon(record.config.get("eps")),
        }
    dataset, split = run_data(loaded[0][1])
    indices = split_indices(split, args.split, dataset.labels, limit=args.limit)
    suite = evaluate_models(
        models, dataset, indices, settings, split=args.split, info=info, device=args.device, progress=progress
    )
    out = args.out or args.job_dir or _default_out(run_dirs[0])
    return suite, save_report(suite, out)


def _check_same_data(first: RunRecord, other: RunRecord, side: str) -> None:
    """Side-by-side figures are only fair on the same held-out scans."""
    a, b = first.config, other.config
    fingerprints = (a.get("dataset", {}).get("fingerprint"), b.get("dataset", {}).get("fingerprint"))
    if fingerprints[0] != fingerprints[1] or first.data.image_size != other.data.image_size:
        raise UserInputError(
            f"runs {first.name} and {other.name} were trained on different data or image sizes; evaluate "
            "them separately (one --run each)"
        )
    if a.get("split") != b.get("split"):
        raise UserInputError(
            f"runs {first.name} and {other.name} split the data differently (split seed or fractions), so "
            f"one model's {side} scans may be the other's training scans; evaluate them separately"
        )


def _unique(name: str, taken: dict[str, Any]) -> str:
    candidate, number = name, 2
    while candidate in taken:
        candidate, number = f"{name} ({number})", number + 1
    return candidate


def _default_out(run_dir: Path) -> Path:
    base = run_dir / "evaluations" / time.strftime("%Y%m%d-%H%M%S")
    candidate, number = base, 2
    while candidate.exists():
        candidate, number = base.with_name(f"{base.name}-{number}"), number + 1
    return candidate


def _as_job(args: argparse.Namespace, settings: SuiteSettings) -> tuple[EvaluationSuite, dict[str, Path]]:
    """Run as a background job: status.json in the job directory, cancellable between batches."""
    job_dir = args.job_dir
    job_dir.mkdir(parents=True, exist_ok=True)
    jobs.raise_on_sigterm()
    jobs.register_self(job_dir)
    started = time.time()
    update_status(
        job_dir,
        {
            "phase": "running",
            "kind": "evaluation",
            "message": "loading runs",
            "progress": 0.0,
            "started_at": started,
            "error": None,
        },
    )
    bar = None if args.quiet else tqdm_progress("evaluating")
    last = [0.0]

    def progress(done: int, total: int, message: str) -> None:
        if bar is not None:
            bar(done, total, message)
        if jobs.cancel_requested(job_dir):
            raise jobs.JobCancelled("cancelled by the user")
        now = time.time()
        if total and now - last[0] >= STATUS_INTERVAL_S:
            last[0] = now
            fraction = min(done / total, 1.0)
            eta = (now - started) * (1 - fraction) / fraction if fraction > 0 else None
            update_status(
                job_dir,
                {
                    "progress": round(fraction, 4),
                    "message": message,
                    "eta_s": round(eta, 1) if eta is not None else None,
                },
            )

    try:
        suite, paths = _evaluate(args, settings, progress)
    except (jobs.JobCancelled, KeyboardInterrupt):
        update_status(
            job_dir, {"phase": "cancelled", "message": "cancelled", "finished_at": time.time(), "eta_s": None}
        )
        raise UserInputError("the evaluation was cancelled; nothing was written") from None
    except BaseException as error:
        text = str(error) if isinstance(error, UserInputError) else f"{type(error).__name__}: {error}"
        update_status(job_dir, {"phase": "failed", "error": text, "finished_at": time.time(), "eta_s": None})
        raise
    update_status(
        job_dir,
        {
            "phase": "done",
            "progress": 1.0,
            "message": "evaluation finished",
            "finished_at": time.time(),
            "eta_s": None,
            "outputs": {kind: str(path) for kind, path in paths.items()},
        },
    )
    return suite, paths


def _print(suite: EvaluationSuite, paths: dict[str, Path]) -> None:
    if suite.synthetic:
        print(SYNTHETIC_BANNER.upper())
    for table in suite.tables:
        print(table.format())
        print()
    for model in suite.models:
        print(f"{model.name}: clean {model.report.clean.accuracy:.1%} on {model.report.size} scans")
        for result in model.report.attacks:
            size = result.size_summary()
            print(
                f"  {result.label:<28} accuracy {result.accuracy:6.1%}   success "
                f"{_shown(result.success_rate, '6.1%')}   median L∞ "
                f"{_shown(size['linf_median'] * 255, '5.2f')}/255   PSNR {_shown(size['psnr_mean'], '5.1f')} "
                f"dB   {result.seconds:7.1f} s"
            )
        for defense in model.defenses:
            print(
                f"  defence {defense.defense}: clean {defense.naive.clean.accuracy:.1%}, naive attack "
                f"{defense.naive.attacks[0].accuracy:.1%}, adaptive attack "
                f"{defense.adaptive.attacks[0].accuracy:.1%}"
            )
    for kind, path in paths.items():
        print(f"{kind}: {path}")


def _track(
    args: argparse.Namespace, settings: SuiteSettings, suite: EvaluationSuite, paths: dict[str, Path]
) -> None:
    """The finished evaluation as an MLflow run in the store of its first run's runs folder."""
    runs_dir = Path(suite.models[0].info["run_dir"]).parent
    name = "evaluation of " + ", ".join(model.name for model in suite.models)
    entry = tracking.log_evaluation(
        runs_dir, suite, settings.to_dict(), paths.values(), name=name[:250], flag=args.track
    )
    if entry:
        print(tracking.describe(entry))
        if args.job_dir is not None:
            update_status(args.job_dir, {"tracking": entry})


def _shown(value: float, spec: str) -> str:
    """``value`` formatted, or a dash when nothing was measured (no scan attacked or fooled)."""
    return format(value, spec) if math.isfinite(value) else "—".rjust(int(spec.split(".")[0] or 1))


def start_evaluation_job(
    run_dirs: Sequence[Path | str],
    *,
    attacks: Sequence[str] = ("fgsm", "pgd", "cw"),
    epsilons: Sequence[float] = (4 / 255,),
    split: str = "test",
    limit: Optional[int] = None,
    strength: bool = True,
    minimal_epsilon: bool = False,
    certify_sigma: Optional[float] = None,
    transfer: bool = True,
    device: str = "auto",
) -> Path:
    """Start ``python -m pipeline evaluate`` in the background; return its job directory at once.

    ``minimal_epsilon``, ``certify_sigma`` and ``transfer`` switch on the same extra studies as
    ``--min-eps``, ``--certify SIGMA`` and ``--transfer``; the sigma is checked here, before a
    process starts, so a bad value is a message on the page rather than a failed job.

    The job directory is ``<first run>/evaluations/<timestamp>/``; the reports land there and
    :func:`pipeline.jobs.job_state` follows it (``status["outputs"]`` names the files when done).
    """
    if not run_dirs:
        raise UserInputError("choose at least one run to evaluate")
    if certify_sigma is not None:
        check_settings(certify_sigma, 100, 1000)
    job_dir = _default_out(Path(run_dirs[0]))
    args = [arg for run_dir in run_dirs for arg in ("--run", str(run_dir))]
    args += [
        "--attacks",
        ",".join(attacks),
        "--eps",
        ",".join(repr(float(eps)) for eps in epsilons),
        "--split",
        split,
        "--device",
        device,
        "--strength" if strength else "--no-strength",
        "--job-dir",
        str(job_dir),
        "--quiet",
    ]
    if limit is not None:
        args += ["--limit", str(limit)]
    if minimal_epsilon:
        args.append("--min-eps")
    if certify_sigma is not None:
        args += ["--certify", repr(float(certify_sigma))]
    args.append("--transfer" if transfer else "--no-transfer")
    jobs.launch(job_dir, ["evaluate", *args])
    return job_dir
