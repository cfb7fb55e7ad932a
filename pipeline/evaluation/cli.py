"""``python -m pipeline evaluate``: the reference table with strength checks, and the report files.

The flags (or ``--config-json``, an :class:`EvaluationRequest` as JSON) say which runs to
evaluate and how; :func:`pipeline.evaluation.request.evaluate_runs` loads each run's model and the
scans it was never trained on, runs the suite and writes the reports; this prints the table.
With ``--job-dir`` it also keeps ``status.json`` there up to date for the dashboard and stops
when the job is cancelled. Under ``torchrun --nproc-per-node N -m pipeline evaluate ...`` the N
processes share the scans and rank 0 writes the one report (:mod:`.shards`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from pipeline import tracking
from pipeline.attacks import transfer_attacks
from pipeline.constants import SYNTHETIC_BANNER
from pipeline.errors import UserInputError
from pipeline.evaluation.background import run_job
from pipeline.evaluation.calibration import CONFIDENT
from pipeline.evaluation.data import SPLIT_SIDES
from pipeline.evaluation.ensemble import COMBINE_RULES, GRADIENTS, EnsembleResult
from pipeline.evaluation.report import interval_note, strength_note
from pipeline.evaluation.request import EvaluationRequest, evaluate_runs
from pipeline.evaluation.strength import FULL_STRENGTH, QUICK_STRENGTH, STRENGTH_LEVELS
from pipeline.evaluation.suite import EvaluationSuite, ModelEvaluation, SuiteSettings
from pipeline.jobs import raise_on_sigterm
from pipeline.json_object import read_json_file
from pipeline.progress import tqdm_progress
from pipeline.store import update_status
from pipeline.units import format_epsilons, format_share

#: The settings' own defaults, the one set: every flag starts from them, as the Evaluate page's form does.
DEFAULTS = SuiteSettings()
#: Flags that override one setting of the chosen strength level: (flag, StrengthSettings field, what it is).
STRENGTH_FLAGS = (
    ("--strong-steps", "strong_steps", "steps of the long PGD check"),
    ("--restarts", "strong_restarts", "restarts of the long PGD check"),
    ("--ensemble-steps", "ensemble_steps", "steps of each APGD member of the AutoAttack check"),
    ("--queries", "square_queries", "queries of the Square check and of AutoAttack's Square member"),
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        help="robustness of saved runs: reference table, strength checks, HTML report",
        description="Evaluate saved runs on their own held-out scans under strong attacks. Epsilons accept "
        "fractions like 4/255 or decimals like 0.0157 (image scale [0, 1]).",
        epilog="example: python -m pipeline evaluate --run runs/resnet50-standard --run runs/resnet50-pgd "
        "--attacks fgsm,pgd,cw-linf --eps 2/255,4/255; an ensemble: python -m pipeline evaluate --ensemble "
        "runs/a,runs/b,runs/c --combine vote; on 4 GPUs (or 4 CPU processes): torchrun "
        "--nproc-per-node 4 -m pipeline evaluate runs/resnet50-standard runs/resnet50-pgd ...",
    )
    parser.add_argument(
        "runs",
        nargs="*",
        metavar="RUN",
        help="run directories or names under --runs-dir, as with --run: the form to use under torchrun, "
        "whose own parser takes --run for its --run-path",
    )
    parser.add_argument(
        "--run",
        action="append",
        metavar="RUN",
        help="a run directory or a name under --runs-dir; repeat to compare models",
    )
    parser.add_argument(
        "--ensemble",
        metavar="RUN,RUN[,RUN]",
        help="two or more runs (directories or names under --runs-dir) evaluated as one ensemble, beside "
        "any --run: attacked whole and by transfer from each member",
    )
    parser.add_argument(
        "--combine",
        choices=tuple(COMBINE_RULES),
        default="logits",
        help="how the ensemble combines its members: logits (averaged logits), probabilities (averaged "
        "softmax) or vote (majority vote, attacked through a differentiable surrogate: the soft vote; "
        "default: logits)",
    )
    parser.add_argument(
        "--config-json",
        type=Path,
        metavar="FILE",
        help="every setting as a JSON object (what background jobs are given); no other setting flags",
    )
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs live (default: runs)")
    parser.add_argument(
        "--attacks",
        default=",".join(DEFAULTS.attacks),
        help="comma-separated registry names of L∞ attacks: fgsm, pgd, cw-linf (the reference table's; "
        "CW's margin loss inside the ball) and e.g. apgd, mifgsm, square, autoattack (default: "
        f"{','.join(DEFAULTS.attacks)})",
    )
    parser.add_argument(
        "--eps",
        default=format_epsilons(DEFAULTS.epsilons),
        help=f"comma-separated L∞ budgets, e.g. 2/255,4/255 (default {format_epsilons(DEFAULTS.epsilons)})",
    )
    parser.add_argument(
        "--curve-eps",
        default=format_epsilons(DEFAULTS.curve_epsilons),
        help="more budgets for the robustness curve, where PGD alone runs (when it is among the attacks); "
        f"'' for none (default {format_epsilons(DEFAULTS.curve_epsilons)})",
    )
    parser.add_argument("--split", default="test", choices=SPLIT_SIDES, help="which scans (default: test)")
    parser.add_argument("--limit", type=int, help="evaluate only this many scans, classes in turn")
    parser.add_argument("--out", type=Path, help="directory for report.json/csv/html")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULTS.batch_size,
        help=f"scans per batch (default {DEFAULTS.batch_size})",
    )
    parser.add_argument(
        "--steps", type=int, default=DEFAULTS.steps, help=f"steps of PGD and CW (default {DEFAULTS.steps})"
    )
    _switch(parser, "--strength", "strength", "run the strength checks beside every figure")
    parser.add_argument(
        "--strength-level",
        choices=sorted(STRENGTH_LEVELS),
        default=DEFAULTS.strength_settings.level,
        help=f"quick: the checks sized for a CPU, at the largest epsilon on {QUICK_STRENGTH.scans} scans; "
        "full: the literature's settings at every epsilon on every scan (PGD-50 x3, APGD-20, Square 1,000 "
        f"queries; default {DEFAULTS.strength_settings.level})",
    )
    for flag, name, what in STRENGTH_FLAGS:
        parser.add_argument(
            flag,
            type=int,
            dest=name,
            metavar="N",
            help=f"{what} (default: the level's, quick {getattr(QUICK_STRENGTH, name)}, full "
            f"{getattr(FULL_STRENGTH, name)})",
        )
    parser.add_argument(
        "--corruptions",
        default=",".join(DEFAULTS.corruptions),
        help="CT corruptions at severities 1-5: 'ct' for all of them (low-dose, streaks, rings, "
        "motion-blur, jpeg, window-shift, downsample) or a comma-separated list (default: none; about "
        "as long as the attacks)",
    )
    parser.add_argument(
        "--faithfulness",
        type=int,
        default=DEFAULTS.faithfulness_scans,
        metavar="SCANS",
        help="score the Grad-CAM maps of this many scans by ROAD, clean and attacked (0: off; default "
        f"{DEFAULTS.faithfulness_scans})",
    )
    parser.add_argument(
        "--faithfulness-imputation",
        choices=("linear", "blur"),
        default=DEFAULTS.faithfulness_imputation,
        help="how ROAD fills removed pixels: linear (the paper's) or blur (about half the cost; default "
        f"{DEFAULTS.faithfulness_imputation})",
    )
    _switch(parser, "--early-stop", "early_stop", "stop attacking a scan once it is fooled (less time)")
    _switch(parser, "--transfer", "transfer", "transfer matrix between the runs, when there are several")
    parser.add_argument(
        "--transfer-attack",
        choices=transfer_attacks(),
        default=DEFAULTS.transfer_attack,
        help="attack the transfer matrix crafts on each run: pgd, or one made to transfer (mifgsm, difgsm, "
        f"tifgsm, nifgsm, sinifgsm, vmifgsm; default {DEFAULTS.transfer_attack})",
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
    parser.add_argument(
        "--certify-n",
        type=int,
        default=DEFAULTS.certify_n,
        help=f"noise samples per scan when certifying (default {DEFAULTS.certify_n})",
    )
    parser.add_argument(
        "--defenses",
        default="",
        help="comma-separated input defences: jpeg, bitdepth, median, "
        "shift; each reported under the naive and the adaptive (BPDA/EOT) attack",
    )
    parser.add_argument(
        "--detectors",
        default=",".join(DEFAULTS.detectors),
        help="comma-separated adversarial-example detectors: mahalanobis (Lee et al. 2018), squeeze "
        "(feature squeezing, Xu et al. 2018); each thresholded on the runs' clean validation scans and "
        "measured against PGD and an attack that knows it",
    )
    parser.add_argument(
        "--detector-fpr",
        type=float,
        default=DEFAULTS.detector_fpr,
        metavar="SHARE",
        help=f"share of clean validation scans each detector flags (default {DEFAULTS.detector_fpr})",
    )
    parser.add_argument("--job-dir", type=Path, help="write status and progress there (background jobs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    tracking.add_tracking_flag(parser)
    parser.set_defaults(func=run)
    return parser


def _switch(parser: argparse.ArgumentParser, flag: str, name: str, what: str) -> None:
    """An on/off flag (``--x`` / ``--no-x``) for the boolean setting ``name``, defaulting to its default."""
    default = getattr(DEFAULTS, name)
    parser.add_argument(
        flag,
        action=argparse.BooleanOptionalAction,
        default=default,
        help=f"{what} (default: {'on' if default else 'off'})",
    )


def run(args: argparse.Namespace) -> int:
    request = _request(args)
    # Under torchrun (``RANK`` set) only rank 0 shows progress, prints, writes and tracks.
    is_main = os.environ.get("RANK", "0") == "0"
    bar = None if args.quiet or not is_main else tqdm_progress("evaluating")
    if args.job_dir is None:
        suite, paths = evaluate_runs(request, bar)
    else:
        raise_on_sigterm()
        suite, paths = run_job(request, args.job_dir, echo=bar, writer=is_main)
    if not is_main:
        return 0
    _print(suite, paths)
    _track(args, request.suite, suite, paths)
    return 0


def _request(args: argparse.Namespace) -> EvaluationRequest:
    """Validate every flag (or the settings file) before loading anything."""
    for flag, folder in (("--out", args.out), ("--job-dir", args.job_dir)):
        if folder is not None:
            _check_folder(folder, flag)
    if args.run and args.runs:
        raise UserInputError("give the runs either as arguments or with --run, not both")
    runs = args.run or args.runs
    if args.config_json is not None:
        if runs or args.ensemble:
            raise UserInputError("give the runs in --config-json or with --run and --ensemble, not both")
        return EvaluationRequest.from_dict(read_json_file(args.config_json, "settings file"))
    if not runs and not args.ensemble:
        raise UserInputError(
            "give a run to evaluate: --run RUN (repeat it to compare models), or --ensemble RUN,RUN"
        )
    given = {name: getattr(args, name) for _, name, _ in STRENGTH_FLAGS}
    overrides = {name: value for name, value in given.items() if value is not None}
    suite = SuiteSettings(
        attacks=args.attacks,
        epsilons=args.eps,
        curve_epsilons=args.curve_eps,
        steps=args.steps,
        strength=args.strength,
        strength_settings=dataclasses.replace(
            STRENGTH_LEVELS[args.strength_level], pgd_steps=args.steps, **overrides
        ),
        corruptions=args.corruptions,
        faithfulness_scans=args.faithfulness,
        faithfulness_imputation=args.faithfulness_imputation,
        early_stop=args.early_stop,
        transfer=args.transfer,
        transfer_attack=args.transfer_attack,
        minimal_epsilon=args.min_eps,
        certify_sigma=args.certify,
        certify_n=args.certify_n,
        defenses=args.defenses,
        detectors=args.detectors,
        detector_fpr=args.detector_fpr,
        batch_size=args.batch_size,
    )
    out = args.out or args.job_dir
    return EvaluationRequest(
        runs=tuple(runs),
        ensemble=args.ensemble or (),
        combine=args.combine,
        suite=suite,
        runs_dir=str(args.runs_dir),
        split=args.split,
        limit=args.limit,
        device=args.device,
        out=None if out is None else str(out),
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


def _print(suite: EvaluationSuite, paths: dict[str, Path]) -> None:
    if suite.synthetic and not suite.tables:  # each table carries the banner itself, once
        print(SYNTHETIC_BANNER.upper())
    for table in suite.tables:
        print(table.format())
        print()
    print(interval_note(suite))
    if suite.settings.strength:
        print(strength_note(suite.settings))
    for model in suite.models:
        scans = model.report.size
        print(f"{model.name}: clean {model.report.clean.accuracy_interval.format()} on {scans} scans")
        for result in model.report.attacks:
            size = result.size_summary()
            print(
                f"  {result.label:<28} accuracy {result.outcome.accuracy_interval.format():<22} success "
                f"{result.success_interval.format():<22} median L∞ "
                f"{_shown(size['linf_median'] * 255, '5.2f')}/255   PSNR {_shown(size['psnr_mean'], '5.1f')} "
                f"dB   {result.seconds:7.1f} s"
            )
        _print_sections(model)
        for defense in model.defenses:
            print(
                f"  defence {defense.defense}: clean {format_share(defense.clean_accuracy, defense.scans)}, "
                f"naive attack {format_share(defense.naive_accuracy, defense.scans)}, adaptive attack "
                f"{format_share(defense.adaptive_accuracy, defense.scans)}"
            )
        if model.ensemble is not None:
            _print_ensemble(model.ensemble)
        for detector in model.detectors:
            print(
                f"  detector {detector.name}: false positives {detector.false_positives.format()}; "
                f"detected PGD {detector.detection('pgd').format()}, adaptive "
                f"{detector.detection('adaptive').format()}; wrong and undetected PGD "
                f"{detector.missed('pgd').format()}, adaptive {detector.missed('adaptive').format()}"
            )
    for verdict in suite.verdicts:
        print(f"verdict, {verdict.model} ({verdict.defense or 'no defence'}): {verdict.believe}")
    for comparison in suite.comparisons:
        print(comparison.sentence)
    for model in suite.models:
        parts = ", ".join(f"{part} {seconds:.0f} s" for part, seconds in model.seconds.items())
        print(f"time, {model.name}: {parts}")
    for kind, path in paths.items():
        print(f"{kind}: {path}")


def _print_ensemble(ensemble: EnsembleResult) -> None:
    """Each member's and the ensemble's robust accuracy, and how often the members fail together."""
    scans = ensemble.scans
    print(f"  ensemble under {ensemble.attack.title} on {scans} scans, {GRADIENTS[ensemble.combine]}:")
    for member, own, moved in zip(ensemble.members, ensemble.member_robust, ensemble.transfer):
        print(
            f"    member {member}: {format_share(own, scans)} under its own attack; the ensemble keeps "
            f"{format_share(moved, scans)} under the transfer from it"
        )
    print(f"    whole-ensemble attack: {format_share(ensemble.whole, scans)}. {ensemble.sentence()}")
    for shared in ensemble.shared_failures():
        print(
            f"    members fail together, {shared.condition}: all of them on "
            f"{format_share(shared.all_fail, scans)} of the scans, any of them on "
            f"{format_share(shared.any_fail, scans)}; failures shared by a pair (Jaccard) "
            f"{_shown(shared.mean_pair, '.2f')}"
        )


def _print_sections(model: ModelEvaluation) -> None:
    """Calibration, corruptions and faithfulness of one model, a line or a few each."""
    for result in model.calibration:
        print(
            f"  calibration, {result.condition:<24} ECE {result.ece:6.1%}   confidence of wrong answers "
            f"{_shown(result.wrong_confidence, '6.1%')}   wrong with ≥{CONFIDENT:.0%} confidence "
            f"{result.confidently_wrong.format()}"
        )
    if model.corruption is not None:
        corruption = model.corruption
        errors_text = "; ".join(
            f"{name} {corruption.mean_error_interval(c).format(0)}"
            for c, name in enumerate(corruption.corruptions)
        )
        print(f"  corruption error, mean of severities 1-5: {errors_text}")
    if model.corruption_errors is not None:
        errors = model.corruption_errors
        relative = errors.relative_mce.format(0)
        print(f"  mCE {errors.mce.format(0)}, relative mCE {relative} of {errors.baseline}'s")
    if model.faithfulness is not None:
        faithful = model.faithfulness
        clean, attacked = faithful.clean.mean, faithful.attacked.mean
        measured = (
            f"clean {clean.estimate:+.2f} ({clean.bounds(0)} hundredths), under "
            f"{faithful.attacked.condition} {attacked.estimate:+.2f} ({attacked.bounds(0)})"
            if clean.scans
            else f"no map could be measured: {faithful.clean.problem}"
        )
        print(f"  faithfulness (ROAD, {faithful.method} on {faithful.layer}): {measured}")
    for section, reason in model.skipped.items():
        print(f"  {section} not measured: {reason}")


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
