"""An evaluation of saved runs: what to run (:class:`EvaluationRequest`) and running it.

The request is what the command line builds from its flags, what the dashboard builds from its form,
and what a background job reads from ``request.json`` in its directory, as a training job reads its
own. :func:`evaluate_runs` loads each run's model (and the ensemble of runs asked for, as one more
model), checks that the runs share their held-out scans, evaluates them there and writes
``report.json``, ``report.csv`` and ``report.html`` (by default under the first run's
``evaluations/<timestamp>/``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from pipeline.data import same_data, split_groups
from pipeline.errors import UserInputError
from pipeline.evaluation.data import SPLIT_SIDES, run_data, split_indices
from pipeline.evaluation.ensemble import COMBINE_RULES, load_ensemble
from pipeline.evaluation.report import save_report
from pipeline.evaluation.shards import ShardFailure, Shards
from pipeline.evaluation.suite import EvaluationSuite, SuiteSettings, evaluate_models
from pipeline.params import from_mapping, setting, validate_fields
from pipeline.progress import ProgressCallback
from pipeline.store import RunRecord, load_model, resolve_run
from pipeline.training import distributed
from pipeline.units import format_epsilon

#: Where evaluations of a run are written, by background jobs and by the command line alike.
EVALUATIONS = "evaluations"


@dataclass(frozen=True)
class EvaluationRequest:
    """Which saved runs to evaluate on which of their scans, with which suite, and where to write.

    Every field is checked here, before any run is loaded; a bad value raises
    :class:`UserInputError` naming it.
    """

    #: Run directories, or run names under ``runs_dir``; several are compared on the same scans.
    runs: tuple[str, ...] = setting((), kind=str, help="a run directory or a name under runs_dir")
    #: Two or more runs evaluated as one ensemble beside ``runs`` (:mod:`.ensemble`); empty: none.
    ensemble: tuple[str, ...] = setting((), kind=str, help="runs combined as one ensemble (two or more)")
    combine: str = setting(
        "logits",
        choices=tuple(COMBINE_RULES),
        help="how the ensemble combines its members: averaged logits, averaged probabilities, or a majority "
        "vote (attacked through a differentiable surrogate, the soft vote)",
    )
    suite: SuiteSettings = field(default_factory=SuiteSettings)
    runs_dir: str = setting("runs", help="where runs given by name live")
    split: str = setting("test", choices=SPLIT_SIDES, help="which scans of the runs' stored split")
    limit: Optional[int] = setting(
        None, kind=int, low=1, help="evaluate only this many scans, classes in turn"
    )
    device: str = setting("auto", help="auto, cpu, cuda, cuda:N or mps")
    #: Folder for report.json/csv/html; by default a new one under the first run's evaluations/.
    out: Optional[str] = setting(None, kind=str, help="folder for report.json/csv/html")

    def __post_init__(self) -> None:
        for name in ("runs", "ensemble"):
            value = getattr(self, name)
            if isinstance(value, str):  # "a,b" as the command line and settings files write it
                parts = tuple(part.strip() for part in value.split(",") if part.strip())
                object.__setattr__(self, name, parts)
        if not self.runs and not self.ensemble:
            raise UserInputError("choose at least one run to evaluate, or two or more runs for an ensemble")
        if len(self.ensemble) == 1:
            raise UserInputError(
                "an ensemble needs at least two runs; give two or more, or evaluate the run alone"
            )
        validate_fields(self)
        object.__setattr__(self, "suite", SuiteSettings.from_dict(self.suite))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what a background job's ``request.json`` holds."""
        return {
            **dataclasses.asdict(self),
            "runs": list(self.runs),
            "ensemble": list(self.ensemble),
            "suite": self.suite.to_dict(),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> EvaluationRequest:
        """Build from :meth:`to_dict`'s output or a settings file; unknown names are refused."""
        return from_mapping(cls, values, what="evaluation request")


def evaluate_runs(
    request: EvaluationRequest, progress: Optional[ProgressCallback] = None
) -> tuple[EvaluationSuite, dict[str, Path]]:
    """Evaluate the requested runs on their held-out scans; return the suite and the report files.

    The reports are also written after every finished section, marked incomplete, so an
    evaluation that is cancelled or fails later keeps what it had done.
    Raises :class:`UserInputError` when a run is missing or unreadable, is given twice, or when
    the runs were trained on different data or splits (their figures would not be comparable).

    Under ``torchrun --nproc-per-node N`` the N processes share the scans (:mod:`.shards`), each on
    its own GPU where there are GPUs; rank 0 alone writes the reports (the others return no paths).
    When one process crashes or is killed, :class:`.shards.ShardFailure` names it, and the report
    keeps the sections finished before, marked incomplete with that reason.
    """
    context = distributed.setup(request.device)
    try:
        shards = Shards.join(context)
        return _evaluate_sharded(request, progress, shards, context.device)
    finally:
        distributed.teardown(context)


def _evaluate_sharded(
    request: EvaluationRequest, progress: Optional[ProgressCallback], shards: Shards, device: torch.device
) -> tuple[EvaluationSuite, dict[str, Path]]:
    """:func:`evaluate_runs` in one process of ``shards`` (the only one, without torchrun)."""
    run_dirs = [resolve_run(request.runs_dir, run) for run in request.runs]
    if len(set(map(Path.resolve, run_dirs))) != len(run_dirs):
        raise UserInputError("the same run was given twice; give each run once")
    loaded = [load_model(run_dir) for run_dir in run_dirs]
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
        if record.config.get("strategy") == "distillation":  # evaluated as a defence (its verdict row)
            info[name]["temperature"] = record.config.get("temperature")
    if request.ensemble:  # one more model, made of its members (each checked against the others)
        ensemble, members = load_ensemble(request.ensemble, request.combine, runs_dir=request.runs_dir)
        name = _unique(ensemble.name, models)
        models[name] = ensemble
        info[name] = {
            "run_dir": str(members[0].run_dir),
            "strategy": "ensemble",
            "combine": ensemble.combine,
            "members": [str(record.run_dir) for record in members],
        }
        loaded.append((ensemble, members[0]))
        run_dirs.append(members[0].run_dir)
    for _, record in loaded[1:]:
        _check_same_data(loaded[0][1], record, request.split)
    dataset, split = run_data(loaded[0][1])
    indices = split_indices(split, request.split, dataset.labels, limit=request.limit)
    out = Path(request.out) if request.out is not None else new_evaluation_dir(run_dirs[0])
    finished: list[EvaluationSuite] = []

    def keep(partial: EvaluationSuite) -> None:
        """Write the sections finished so far: kept if the rest is cancelled or fails."""
        finished[:] = [partial]
        if shards.is_main:
            save_report(partial, out)

    try:
        with shards.naming_failures():
            suite = evaluate_models(
                models,
                dataset,
                indices,
                request.suite,
                split=request.split,
                info=info,
                device=device,
                progress=progress,
                groups=split_groups(dataset, split),
                on_section=keep,
                shards=shards,
                detector_scans=(split.train, split.val),
            )
    except ShardFailure as failure:
        if not shards.is_main:
            raise
        if not finished:
            raise ShardFailure(f"{failure}; no section had finished", failure.absent) from failure
        save_report(dataclasses.replace(finished[0], stopped=str(failure)), out)
        raise ShardFailure(
            f"{failure}; the sections that had finished are in {out} (marked incomplete)", failure.absent
        ) from failure
    return suite, save_report(suite, out) if shards.is_main else {}


def new_evaluation_dir(run_dir: Path) -> Path:
    """A fresh ``<run>/evaluations/<timestamp>`` path (not created), numbered when the second is taken."""
    base = Path(run_dir) / EVALUATIONS / time.strftime("%Y%m%d-%H%M%S")
    candidate, number = base, 2
    while candidate.exists():
        candidate, number = base.with_name(f"{base.name}-{number}"), number + 1
    return candidate


def _check_same_data(first: RunRecord, other: RunRecord, side: str) -> None:
    """Side-by-side figures are only fair on the same held-out scans."""
    a, b = first.config, other.config
    same_size = first.data.image_size == other.data.image_size
    if not same_data(a.get("dataset"), b.get("dataset") or {}) or not same_size:
        raise UserInputError(
            f"runs {first.name} and {other.name} were trained on different data or image sizes; evaluate "
            "them separately (one run each)"
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
