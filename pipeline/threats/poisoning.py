"""The backdoor experiment: a poisoned twin of a clean run, how well its trigger works, and whether the
poisoned training scans can be found.

The question a hospital asks: could a few tampered training scans make the model read any scan that
carries a small mark as, say, normal? (BadNets, Gu et al. 2017, https://arxiv.org/abs/1708.06733;
clean-label, Turner et al. 2019, https://people.csail.mit.edu/madry/lab/cleanlabel.pdf; the trigger
and the two ways to poison are in :mod:`pipeline.data.poison`.) :func:`run_backdoor` answers it in
three steps:

1. **The poisoned twin**: the clean run's own settings (data, split, seed, recipe) plus a
   :class:`~pipeline.data.poison.PoisonSpec`, trained by :func:`pipeline.training.train` like any run;
   its folder ends in ``-poisoned`` and its ``config.json`` records exactly how it was poisoned. An
   existing poisoned run may be given instead.
2. **The trigger** (:func:`measure_backdoor`), on the held-out test split of both models: clean
   accuracy; the *trigger success rate*, the share of test scans of the other classes that the model
   reads as the target class once the trigger is stamped on them (all such scans, as BadNets counts);
   and the share it reads as the target without the trigger, the base rate that success is measured
   against. Each with its 95% interval (groups of related scans resampled where the split is grouped),
   and a paired comparison of the two models on the same triggered scans.
3. **The detection**: spectral signatures (:mod:`pipeline.threats.spectral`) on the poisoned run's
   training split as it was trained, with precision and recall against the scans really poisoned.

The results are ``backdoor.json`` and ``backdoor.html`` (:mod:`pipeline.threats.poisoning_report`) in a
job folder under ``<runs>/threats/poisoning/``, and one MLflow run of kind ``backdoor``.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Final, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from pipeline import jobs, tracking
from pipeline.data import split_groups
from pipeline.data.poison import POISON_FLAT_NAMES, PoisonSpec, draw_trigger, poison_split, stamp_trigger
from pipeline.device import select_device
from pipeline.errors import CheckpointError, UserInputError
from pipeline.evaluation.batches import predict, probabilities
from pipeline.evaluation.data import run_data
from pipeline.evaluation.intervals import Interval, PairedComparison, paired_comparison, proportion_interval
from pipeline.evaluation.report import jsonable, png_base64
from pipeline.explain import explain, matching_layer
from pipeline.json_object import parse_json_object
from pipeline.params import from_mapping, setting, under_flat_names, validate_fields
from pipeline.progress import ProgressCallback, report, staged
from pipeline.store import (
    REQUEST,
    RunRecord,
    atomic_write_bytes,
    load_model,
    new_run_dir,
    read_record,
    read_settings,
    read_status,
    resolve_run,
    write_request,
)
from pipeline.threats.poisoning_report import report_html, share_text
from pipeline.threats.spectral import REMOVAL, Detection, spectral_signatures
from pipeline.training import TrainConfig, train

#: Where the experiments' job folders go, under the runs folder.
POISONING_DIR: Final[Path] = Path("threats") / "poisoning"
RESULT: Final[str] = "backdoor.json"
REPORT: Final[str] = "backdoor.html"
#: The ``kind`` of the experiment's job status and of its MLflow run.
KIND: Final[str] = "backdoor"
BATCH: Final[int] = 64
CLEAN, POISONED = "clean", "poisoned"


def poisoning_root(runs_dir: Path | str) -> Path:
    """The folder holding one job folder per backdoor experiment of the runs in ``runs_dir``."""
    return Path(runs_dir) / POISONING_DIR


# ------------------------------------------------------------------------------------ request
@dataclass(frozen=True)
class BackdoorRequest:
    """One backdoor experiment: the clean run, and the poisoning to plant (or a run already poisoned).

    Raises :class:`UserInputError` for a missing clean run, for both or neither of ``poison`` and
    ``poisoned_run``, and for out-of-range values.
    """

    clean_run: Optional[str] = setting(None, help="the unpoisoned run: the reference, and the recipe of its twin")
    poisoned_run: Optional[str] = setting(
        None, help="a run already poisoned (its record says how); without it a poisoned twin is trained"
    )
    poison: Optional[PoisonSpec] = None
    runs_dir: str = setting("runs", help="the runs folder")
    removal: float = setting(
        REMOVAL, low=0.5, high=10.0, help="the detection flags this many times the number of poisoned scans"
    )
    device: str = setting("auto", help="auto, cpu, cuda, cuda:N or mps")
    track: Optional[bool] = setting(None, kind=bool, help="MLflow tracking on or off (None: the usual settings)")

    def __post_init__(self) -> None:
        if self.poison is not None:
            poison = self.poison
            object.__setattr__(
                self, "poison", under_flat_names(lambda: PoisonSpec.from_dict(poison), POISON_FLAT_NAMES)
            )
        validate_fields(self)
        if not self.clean_run:
            raise UserInputError("name the clean run: the unpoisoned model the poisoned one is compared with")
        if (self.poison is None) == (self.poisoned_run is None):
            raise UserInputError(
                "give the poisoning settings to train a poisoned twin of the clean run, or a run already "
                "poisoned (which records its own settings), not both and not neither"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "clean_run": self.clean_run,
            "poisoned_run": self.poisoned_run,
            "poison": None if self.poison is None else self.poison.to_dict(),
            "runs_dir": self.runs_dir,
            "removal": self.removal,
            "device": self.device,
            "track": self.track,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> BackdoorRequest:
        return from_mapping(cls, values, what="backdoor experiment")


def poisoned_twin(clean: Path | str, poison: PoisonSpec, *, device: Optional[str] = None) -> TrainConfig:
    """The clean run's training settings with ``poison`` planted: same data, split, seed and recipe, so
    that the poisoning is the only difference. Raises :class:`UserInputError` for a clean run that is
    itself poisoned."""
    settings = dict(read_settings(Path(clean)))
    if settings.get("poison"):
        raise UserInputError(f"run {Path(clean).name} is itself poisoned; choose an unpoisoned run as the reference")
    settings["poison"] = poison.to_dict()
    if device is not None:
        settings["device"] = device
    return TrainConfig.from_dict(settings)


# ------------------------------------------------------------------------------------- result
@dataclass(frozen=True)
class ModelOutcome:
    """One model on the test split, clean and with the trigger stamped on the other classes' scans.

    ``clean_accuracy`` over every test scan; ``trigger_success`` the share of the other classes' test
    scans read as the target with the trigger; ``target_without_trigger`` the share of the same scans
    read as the target without it (the base rate). ``hits`` bool ``[M]``: which of those M triggered
    scans were read as the target.
    """

    run: str
    run_dir: str
    poisoned: bool
    clean_accuracy: Interval
    trigger_success: Interval
    target_without_trigger: Interval
    hits: np.ndarray
    correct: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "run_dir": self.run_dir,
            "poisoned": self.poisoned,
            "clean_accuracy": self.clean_accuracy.to_dict(),
            "trigger_success": self.trigger_success.to_dict(),
            "target_without_trigger": self.target_without_trigger.to_dict(),
        }


@dataclass(frozen=True)
class BackdoorResult:
    """Everything one backdoor experiment measured; :meth:`to_dict` is ``backdoor.json``."""

    poison: PoisonSpec
    trigger: dict[str, Any]
    dataset: str
    synthetic: bool
    image_size: int
    classes: tuple[str, ...]
    test_scans: int
    other_scans: int
    groups: Optional[int]
    clean: ModelOutcome
    poisoned: ModelOutcome
    trigger_comparison: PairedComparison
    accuracy_comparison: PairedComparison
    detection: Detection
    poisoned_scans: list[int]
    example: dict[str, Any]
    device: str
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))
    seconds: float = 0.0

    @property
    def summary(self) -> str:
        """The outcome in two sentences."""
        poisoned, clean, detection = self.poisoned, self.clean, self.detection
        return (
            f"The trigger makes the poisoned model read {share_text(poisoned.trigger_success)} of the other classes' "
            f"test scans as {self.poison.target} (the clean model: {share_text(clean.trigger_success)}); clean "
            f"accuracy {share_text(poisoned.clean_accuracy)} against {share_text(clean.clean_accuracy)}. "
            f"Spectral signatures flag {int(detection.flagged.sum())} of {detection.flagged.size} training "
            f"scans: precision {share_text(detection.precision)} (chance {100 * detection.chance_precision:.0f}%), "
            f"recall {share_text(detection.recall)} (chance {100 * detection.chance_recall:.0f}%)."
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "poison": self.poison.to_dict(),
            "poison_text": self.poison.describe(),
            "trigger": self.trigger,
            "dataset": self.dataset,
            "synthetic": self.synthetic,
            "image_size": self.image_size,
            "classes": list(self.classes),
            "test_scans": self.test_scans,
            "other_scans": self.other_scans,
            "groups": self.groups,
            "models": {CLEAN: self.clean.to_dict(), POISONED: self.poisoned.to_dict()},
            "trigger_comparison": self.trigger_comparison.to_dict(),
            "accuracy_comparison": self.accuracy_comparison.to_dict(),
            "detection": self.detection.to_dict(),
            "poisoned_scans": self.poisoned_scans,
            "example": self.example,
            "summary": self.summary,
            "device": self.device,
            "created": self.created,
            "seconds": self.seconds,
        }


# ------------------------------------------------------------------------------------ measuring
def check_pair(clean: RunRecord, poisoned: RunRecord) -> PoisonSpec:
    """The poisoned run's :class:`PoisonSpec`, once the two runs are shown to be comparable: finished
    models, one of them poisoned, the same classes, data and test scans. Raises UserInputError."""
    for record in (clean, poisoned):
        if record.error:
            raise UserInputError(f"run {record.name} cannot be read: {record.error}")
        if not record.has_model:
            raise UserInputError(f"run {record.name} has no trained model yet; let it finish an epoch first")
    if clean.config.get("poison"):
        raise UserInputError(f"run {clean.name} is poisoned; the reference must be an unpoisoned run")
    if not poisoned.config.get("poison"):
        raise UserInputError(
            f"run {poisoned.name} was not poisoned; train a poisoned twin (give the poisoning settings) instead"
        )
    if clean.classes != poisoned.classes or clean.data != poisoned.data:
        raise UserInputError(
            f"runs {clean.name} and {poisoned.name} were trained on different data or classes; compare a "
            "poisoned run with the clean run of the same data (its twin)"
        )
    if clean.config.get("split", {}).get("test") != poisoned.config.get("split", {}).get("test"):
        raise UserInputError(
            f"runs {clean.name} and {poisoned.name} hold out different test scans; compare runs with one split"
        )
    return PoisonSpec.from_dict(poisoned.config["poison"])


def _answers(model: nn.Module, x: torch.Tensor, device: torch.device) -> np.ndarray:
    """Predicted classes (int ``[N]``) of scans ``x`` in batches."""
    found = [predict(model, chunk.to(device)).cpu() for chunk in x.split(BATCH)]
    return torch.cat(found).numpy() if found else np.zeros(0, dtype=np.int64)


def measure_backdoor(
    clean_run: Path | str,
    poisoned_run: Path | str,
    *,
    removal: float = REMOVAL,
    device: str = "auto",
    progress: Optional[ProgressCallback] = None,
) -> BackdoorResult:
    """Measure a poisoned run against its clean twin (run directories): see the module's steps 2 and 3."""
    started = time.monotonic()
    clean_record, poisoned_record = read_record(Path(clean_run)), read_record(Path(poisoned_run))
    spec = check_pair(clean_record, poisoned_record)
    target = select_device(device)
    window = poisoned_record.data.window
    dataset, split = run_data(poisoned_record, progress=staged(progress, 0, 4, "data"))
    if len(split.test) == 0:
        raise UserInputError(
            "the runs hold out no test scans (test fraction 0); the trigger is measured on held-out scans"
        )
    x, y = dataset.tensors()
    test = np.asarray(split.test)
    x_test, y_test = x[test], y[test].numpy()
    other = y_test != spec.target_index
    if not other.any():
        raise UserInputError(f"every test scan is {spec.target}: there is no scan the trigger could move")
    x_triggered = stamp_trigger(x_test[torch.from_numpy(other)], spec, window)
    all_groups = split_groups(dataset, split)
    groups = None if all_groups is None else all_groups[test]
    other_groups = None if groups is None else groups[other]

    outcomes = {}
    models: dict[str, nn.Module] = {}
    for number, (role, record) in enumerate(((CLEAN, clean_record), (POISONED, poisoned_record))):
        report(progress, 1 + number, 4, f"{role} model: test scans, clean and with the trigger")
        model, _ = load_model(record.run_dir, device=target)
        models[role] = model
        answers = _answers(model, x_test, target)
        triggered = _answers(model, x_triggered, target)
        hits = triggered == spec.target_index
        correct = answers == y_test
        outcomes[role] = ModelOutcome(
            run=record.name,
            run_dir=str(record.run_dir),
            poisoned=role == POISONED,
            clean_accuracy=proportion_interval(correct, groups),
            trigger_success=proportion_interval(hits, other_groups),
            target_without_trigger=proportion_interval(answers[other] == spec.target_index, other_groups),
            hits=hits,
            correct=correct,
        )
    clean, poisoned = outcomes[CLEAN], outcomes[POISONED]
    # second minus first: how much more often the trigger works, and how much accuracy poisoning costs
    names = (clean.run, poisoned.run)
    trigger_comparison = paired_comparison(
        clean.hits, poisoned.hits, names=names, condition="the trigger", groups=other_groups
    )
    accuracy_comparison = paired_comparison(clean.correct, poisoned.correct, names=names, groups=groups)

    report(progress, 3, 4, "spectral signatures of the poisoned training split")
    train_index = torch.as_tensor(np.asarray(split.train))
    seed = int(poisoned_record.config.get("seed", 0))
    x_train, y_train, chosen = poison_split(x[train_index], y[train_index], spec, seed=seed, window=window)
    truth = np.zeros(len(train_index), dtype=bool)
    truth[chosen] = True
    detection = spectral_signatures(models[POISONED], x_train, y_train, truth, removal=removal)
    report(progress, 4, 4, "done")
    trigger = draw_trigger(spec, dataset.image_size, window)
    return BackdoorResult(
        poison=spec,
        trigger={"size_px": trigger.size_px, "size_mm": trigger.size_mm, "grey": trigger.grey, "window": window},
        dataset=dataset.name,
        synthetic=bool(dataset.is_synthetic),
        image_size=dataset.image_size,
        classes=tuple(poisoned_record.classes),
        test_scans=int(test.size),
        other_scans=int(other.sum()),
        groups=None if groups is None else int(np.unique(groups).size),
        clean=clean,
        poisoned=poisoned,
        trigger_comparison=trigger_comparison,
        accuracy_comparison=accuracy_comparison,
        detection=detection,
        poisoned_scans=[int(index) for index in np.asarray(split.train)[chosen]],
        example=_example(models, x_test[torch.from_numpy(other)], x_triggered, test[other], y_test[other],
                         poisoned.hits, spec.target_index, target),
        device=f"{target} ({platform.machine()})",
        seconds=round(time.monotonic() - started, 2),
    )


def _example(
    models: Mapping[str, nn.Module],
    x: torch.Tensor,
    x_triggered: torch.Tensor,
    indices: np.ndarray,
    labels: np.ndarray,
    hits: np.ndarray,
    target: int,
    device: torch.device,
) -> dict[str, Any]:
    """One test scan of another class, with and without the trigger (the first whose answer the trigger
    changes to ``target`` on the poisoned model, else the first), with both models' answers: the report's
    picture."""
    moved = np.flatnonzero(hits & (_answers(models[POISONED], x, device) != target))
    chosen = int(moved[0]) if moved.size else 0
    pair = torch.stack([x[chosen], x_triggered[chosen]]).to(device)
    answers = {
        role: [int(value) for value in predict(model, pair).cpu()] for role, model in models.items()
    }
    return {
        "index": int(indices[chosen]),
        "label": int(labels[chosen]),
        "clean_png": png_base64(x[chosen, 0].numpy()),
        "triggered_png": png_base64(x_triggered[chosen, 0].numpy()),
        "answers": answers,
    }


# ------------------------------------------------------------------------------------ the job
def run_backdoor(
    request: BackdoorRequest,
    out_dir: Path | str,
    *,
    progress: Optional[ProgressCallback] = None,
    cancelled: Optional[Callable[[], bool]] = None,
) -> tuple[BackdoorResult, dict[str, Path]]:
    """Train the poisoned twin (unless ``request`` names a poisoned run), measure it against the clean
    run, and save ``backdoor.json`` and ``backdoor.html`` into ``out_dir``; returns the result and the
    files. ``cancelled()`` (optional) says whether the job was asked to stop, checked after the training
    (whose own cancel keeps its last finished epoch, resumable).
    """
    runs_dir = Path(request.runs_dir)
    clean_dir = resolve_run(runs_dir, str(request.clean_run))
    if request.poisoned_run is not None:
        poisoned_dir = resolve_run(runs_dir, request.poisoned_run)
        stages = [0.0, 1.0]
    else:
        assert request.poison is not None  # the request's own check
        config = poisoned_twin(clean_dir, request.poison, device=request.device)
        poisoned_dir = train(config, runs_dir, progress=staged(progress, 0, [5.0, 1.0], "poisoned twin"),
                             track=request.track)
        if cancelled is not None and cancelled():
            raise jobs.JobCancelled("cancelled while the poisoned twin trained (it keeps its last epoch)")
        phase = read_status(poisoned_dir).get("phase")
        if phase != "done":
            raise UserInputError(
                f"the poisoned twin {poisoned_dir.name} stopped before its end ({phase}); resume it (Train page "
                f"or python -m pipeline train --resume) and measure it with --poisoned-run {poisoned_dir.name}"
            )
        stages = [5.0, 1.0]
    result = measure_backdoor(
        clean_dir, poisoned_dir, removal=request.removal, device=request.device,
        progress=staged(progress, 1, stages, "measuring"),
    )
    paths = save_result(result, Path(out_dir))
    return result, paths


def log_backdoor(
    runs_dir: Path | str, result: BackdoorResult, files: Iterable[Path], *, flag: Optional[bool] = None
) -> dict[str, Any]:
    """Log a result as one MLflow run of kind ``backdoor``; returns its ``tracking`` entry (empty when
    tracking is off). Metrics per model (``clean/…``, ``poisoned/…``): ``clean_accuracy``,
    ``trigger_success_rate``, ``target_without_trigger``, each with ``_low`` and ``_high``; the detection's
    ``precision``, ``recall`` (with intervals), their chance levels and ``auc``."""
    run = tracking.start(
        runs_dir,
        name=f"backdoor {result.poisoned.run}",
        kind=KIND,
        params={"poison": result.poison.to_dict(), "clean_run": result.clean.run_dir,
                "poisoned_run": result.poisoned.run_dir, "removal": result.detection.removal,
                "test_scans": result.test_scans},
        synthetic=result.synthetic,
        tags={"lunglab.poisoned_run": result.poisoned.run_dir, "lunglab.clean_run": result.clean.run_dir},
        flag=flag,
    )
    values: dict[str, float] = {}

    def interval(prefix: str, value: Interval) -> None:
        values[prefix], values[f"{prefix}_low"], values[f"{prefix}_high"] = value.estimate, value.low, value.high

    for role, outcome in ((CLEAN, result.clean), (POISONED, result.poisoned)):
        interval(f"{role}/clean_accuracy", outcome.clean_accuracy)
        interval(f"{role}/trigger_success_rate", outcome.trigger_success)
        interval(f"{role}/target_without_trigger", outcome.target_without_trigger)
    interval("detection/precision", result.detection.precision)
    interval("detection/recall", result.detection.recall)
    values["detection/chance_precision"] = result.detection.chance_precision
    values["detection/chance_recall"] = result.detection.chance_recall
    values["detection/auc"] = result.detection.auc
    run.log_metrics(values, step=0)
    run.log_files(files, "reports")
    run.finish("FINISHED")
    return run.entry


def read_result(job_dir: Path | str) -> dict[str, Any]:
    """A saved ``backdoor.json``; UserInputError when it is missing or damaged."""
    path = Path(job_dir) / RESULT
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserInputError(f"no backdoor result in {path.parent} ({error.strerror or error})") from None
    return parse_json_object(data, f"{RESULT} in {path.parent}", error=UserInputError)


def save_result(result: BackdoorResult, out_dir: Path) -> dict[str, Path]:
    """Write ``backdoor.json`` (plain JSON, NaN as null) and ``backdoor.html`` into ``out_dir`` (created);
    returns their paths by kind (``json``, ``html``)."""
    data = jsonable(result.to_dict())
    paths = {"json": out_dir / RESULT, "html": out_dir / REPORT}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(data, indent=1, allow_nan=False, ensure_ascii=False) + "\n"
        atomic_write_bytes(paths["json"], text.encode())
        atomic_write_bytes(paths["html"], report_html(data).encode())
        for path in paths.values():
            path.chmod(0o644)  # results are for reading and sharing, like the evaluation's reports
    except OSError as error:
        raise UserInputError(
            f"cannot write the backdoor results to {out_dir} ({error.strerror or error}); choose a folder you "
            "can write to"
        ) from error
    return paths


def finished_results(runs_dir: Path | str) -> list[tuple[Path, dict[str, Any]]]:
    """Every finished experiment's folder and result, newest first (damaged ones left out)."""
    found = []
    for job_dir, state in jobs.list_jobs(poisoning_root(runs_dir)):
        if state.phase == "done":
            try:
                found.append((job_dir, read_result(job_dir)))
            except UserInputError:
                continue
    return found


def clean_twin(runs_dir: Path | str, poisoned_run: Path | str) -> Optional[Path]:
    """The clean run a poisoned run was last measured against, if it still exists."""
    for _, result in finished_results(runs_dir):
        models = result.get("models", {})
        if Path(models.get(POISONED, {}).get("run_dir", "")) == Path(poisoned_run):
            clean = Path(models.get(CLEAN, {}).get("run_dir", ""))
            if clean.is_dir():
                return clean
    return None


# ------------------------------------------------------------------------ the Attack page's check
@dataclass(frozen=True)
class TriggerAnswer:
    """One model on one scan, without and with the trigger: probabilities float ``[C]`` and Grad-CAM maps
    float ``[H, W]`` in ``[0, 1]`` of the class it answers (``cam_ok``: whether each map can be read)."""

    title: str
    poisoned: bool
    clean_probabilities: np.ndarray
    triggered_probabilities: np.ndarray
    clean_cam: np.ndarray
    triggered_cam: np.ndarray
    cam_ok: tuple[bool, bool]

    @property
    def clean_answer(self) -> int:
        return int(self.clean_probabilities.argmax())

    @property
    def triggered_answer(self) -> int:
        return int(self.triggered_probabilities.argmax())


@dataclass(frozen=True)
class TriggerCheck:
    """A scan with a poisoned run's trigger stamped on it, and what each model answers."""

    spec: PoisonSpec
    image: np.ndarray  #: float [S, S] in [0, 1]
    triggered: np.ndarray  #: float [S, S] in [0, 1]
    size_px: int
    size_mm: float
    answers: tuple[TriggerAnswer, ...]
    layer: str


def check_trigger(
    models: Sequence[tuple[str, nn.Module, bool]],
    image: torch.Tensor,
    spec: PoisonSpec,
    *,
    window: str = "lung",
    cam_layer: Optional[str] = None,
) -> TriggerCheck:
    """Stamp ``spec``'s trigger on ``image`` (float ``[1, S, S]`` or ``[S, S]`` in ``[0, 1]``) and ask each
    of ``models`` (title, model, whether it is poisoned) for its answer and Grad-CAM map, with and without
    the trigger, each at its layer matching ``cam_layer`` (:func:`pipeline.explain.matching_layer`).
    Raises UserInputError for a badly shaped scan."""
    if image.dim() == 2:
        image = image[None]
    if image.dim() != 3 or image.shape[0] != 1 or image.shape[1] != image.shape[2]:
        raise UserInputError(f"the trigger is stamped on one square scan [1, S, S], got {tuple(image.shape)}")
    pair = torch.stack([image.float(), stamp_trigger(image.float(), spec, window)])
    answers = []
    layer = ""
    for title, model, poisoned in models:
        device = next(model.parameters()).device
        probs = probabilities(model, pair.to(device)).cpu().numpy()
        cams = explain(model, pair.to(device), target=None,
                       layer=matching_layer(model, cam_layer, int(image.shape[-1])))
        layer = layer or cams.layer  # the first model's: the one the layer was chosen on
        answers.append(
            TriggerAnswer(title, poisoned, probs[0], probs[1], cams.maps[0], cams.maps[1],
                          (cams.quality[0] == "ok", cams.quality[1] == "ok"))
        )
    trigger = draw_trigger(spec, int(image.shape[-1]), window)
    return TriggerCheck(spec, pair[0, 0].numpy(), pair[1, 0].numpy(), trigger.size_px, trigger.size_mm,
                        tuple(answers), layer)


# ------------------------------------------------------------------------------- background job
def start_backdoor_job(request: BackdoorRequest) -> Path:
    """Start the experiment in a separate process; return its job folder at once.

    What can be checked without data is checked here, so a bad choice is a message for the caller, never a
    failed job: the runs exist, the clean one is not poisoned, and a given poisoned run fits it.
    """
    runs_dir = Path(request.runs_dir)
    clean_dir = resolve_run(runs_dir, str(request.clean_run))
    if request.poisoned_run is not None:
        check_pair(read_record(clean_dir), read_record(resolve_run(runs_dir, request.poisoned_run)))
    else:
        assert request.poison is not None  # the request's own check
        poisoned_twin(clean_dir, request.poison)
        if not read_record(clean_dir).has_model:
            raise UserInputError(f"run {clean_dir.name} has no trained model yet; let it finish first")
    job_dir = new_run_dir(poisoning_root(runs_dir), f"{KIND}-{clean_dir.name}")
    write_request(job_dir, request.to_dict())
    jobs.launch(job_dir, ["backdoor", "--quiet", "--config-json", str(job_dir / REQUEST), "--job-dir", str(job_dir)])
    return job_dir


def run_job(
    request: BackdoorRequest, job_dir: Path | str, *, echo: Optional[ProgressCallback] = None
) -> tuple[BackdoorResult, dict[str, Path]]:
    """In the job's process: the experiment with status, progress and cancel in ``job_dir``, its result
    logged to MLflow. Raises :class:`UserInputError` when it was cancelled (recorded as such)."""
    job_dir = Path(job_dir)
    with jobs.JobContext(job_dir, kind=KIND, echo=echo, cancelled_message="cancelled") as job:
        job.status(phase="running", message="starting", progress=0.0)
        result, paths = run_backdoor(request, job_dir, progress=job.progress(), cancelled=job.cancel_requested)
        entry = log_backdoor(request.runs_dir, result, paths.values(), flag=request.track)
        job.finish(
            message=result.summary,
            outputs={kind: str(path) for kind, path in paths.items()},
            poisoned_run=result.poisoned.run_dir,
            clean_run=result.clean.run_dir,
            tracking=entry,
        )
        return result, paths
    raise UserInputError(f"the backdoor experiment was cancelled; its job folder is {job_dir}")
