"""The demo: a standard and an adversarially fine-tuned model on the synthetic phantom, in one call.

A clinician is shown the story in two models: the standard one reads a malignant scan correctly and
an invisible PGD perturbation flips its answer; the robust one holds. :func:`prepare_demo` trains
both through the ordinary training loop (so they are two normal runs under ``runs_dir``), measures
them on their held-out test split under PGD-20, picks the test scan that tells the story, and
records the pair in ``runs_dir/demo.json``, which the dashboard reads to open the Attack page on it.

Every figure comes from the synthetic phantom: an engineering check of the method, never a
medical result. Recipes and their measured times are in ``bench/RESULTS.md`` (``bench/demo.py``).
"""

from __future__ import annotations

import math
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Mapping, Optional

import numpy as np

from pipeline.constants import CLASSES
from pipeline.device import select_device
from pipeline.errors import CheckpointError, UserInputError
from pipeline.evaluation import AttackSpec, RobustnessReport, evaluate
from pipeline.evaluation.data import run_data
from pipeline.evaluation.degenerate import NOT_TRAINED
from pipeline.json_object import parse_json_object
from pipeline.models import arch_title
from pipeline.progress import Phase, ProgressCallback, report, staged
from pipeline.store import atomic_write_json, load_model
from pipeline.training import TrainConfig, finished_run, planned_phases, train
from pipeline.units import format_epsilon

DEMO_FILE: Final[str] = "demo.json"
DEMO_FORMAT: Final[str] = "lunglab-demo"
#: The held-out check: PGD-20 (Madry et al. 2018, https://arxiv.org/abs/1706.06083) at a budget the
#: robust model is trained for and at a large one no small model survives.
EVAL_EPSILONS: Final[tuple[float, ...]] = (2 / 255, 8 / 255)
EVAL_STEPS: Final[int] = 20
STORY_EPSILON: Final[float] = 2 / 255
STORY_CLASS: Final[str] = "malignant"


@dataclass(frozen=True)
class DemoRecipe:
    """How the two demo models are trained: settings on top of a training preset.

    ``standard`` trains from scratch; ``robust`` fine-tunes the standard model with PGD-AT
    (``init_from`` is filled in by :func:`prepare_demo`). ``shares`` is the measured share of the
    wall time spent on each stage (standard, robust, evaluation), which turns stage progress into
    an honest overall progress and ETA; ``minutes`` is the measured total on ``machine``.
    """

    name: str
    preset: str
    standard: Mapping[str, Any]
    robust: Mapping[str, Any]
    minutes: float
    machine: str
    shares: tuple[float, float, float]
    eval_steps: int = EVAL_STEPS

    def configs(self, device: str = "auto") -> tuple[TrainConfig, TrainConfig]:
        """The two training configurations; the robust one still lacks its ``init_from``."""
        standard = TrainConfig.from_preset(self.preset, **self.standard, device=device)
        robust = TrainConfig.from_preset(self.preset, **{**self.standard, **self.robust}, device=device)
        return standard, robust

    def describe(self) -> str:
        """What the recipe trains, in words a card or ``--help`` can show."""
        standard, robust = self.configs()
        data = standard.data
        return (
            f"two {arch_title(standard.arch)} models on {data.count:,} synthetic phantom scans of "
            f"{data.image_size}×{data.image_size} pixels: a standard one trained from scratch for "
            f"{standard.epochs} epochs, then a robust one fine-tuned from it with PGD adversarial training "
            f"({robust.steps} steps, budget {format_epsilon(robust.eps)}) for {robust.epochs} epochs; "
            f"both are then attacked with PGD-{self.eval_steps} on their held-out test scans. "
            f"About {self.minutes:.0f} minutes on {self.machine}."
        )


RECIPES: Final[dict[str, DemoRecipe]] = {
    # bench/RESULTS.md, "The demo": from-scratch ResNet-18 at 112 px on 2,000 phantom v4 scans for 12
    # epochs, keeping the epoch with the best mean class recall (at 96 px a standard model kept 55-68%
    # of the test scans under PGD at 2/255, too robust to tell the story; at 112 px about half; more
    # scans made it more accurate on benign and more robust at 2/255 alike). Fresh scans replace
    # augmentation (the phantom is an unlimited source, and augmentation halves how fast a
    # from-scratch network learns in a CPU budget); the robust model fine-tunes the standard one with
    # PGD-2 at 4/255 (twice the 2/255 the story is told at), since PGD-AT from scratch does not learn
    # in CPU minutes.
    "cpu": DemoRecipe(
        name="cpu",
        preset="quick",
        standard={"augment": False, "image_size": 112, "epochs": 12},
        robust={
            "strategy": "pgd", "eps": 4 / 255, "steps": 2, "alpha": 3 / 255, "epochs": 5, "lr": 5e-4,
            "val_steps": 5,
        },
        minutes=10.8,
        machine="2 CPU cores",
        shares=(0.44, 0.38, 0.18),
    ),
    # The reference study's ResNet-50 at 224 px on a GPU (bf16, channels_last).
    "gpu": DemoRecipe(
        name="gpu",
        preset="full",
        standard={
            "count": 3000, "val_fraction": 0.1, "test_fraction": 0.1, "epochs": 12, "batch_size": 64,
            "augment": False, "val_steps": 1, "patience": 0,
        },
        robust={"strategy": "pgd", "eps": 2 / 255, "steps": 3, "alpha": 1 / 255, "epochs": 6, "lr": 0.01},
        minutes=6.0,
        machine="one H100/H200-class GPU (not yet measured)",
        shares=(0.35, 0.55, 0.1),
    ),
}


def default_recipe(device: str = "auto") -> str:
    """``gpu`` where ``device`` resolves to a CUDA GPU, else ``cpu``."""
    return "gpu" if select_device(device).type == "cuda" else "cpu"


@dataclass(frozen=True)
class DemoModel:
    """One trained demo model and how it fares on its held-out test scans.

    ``clean`` and ``recall`` (per class, in ``CLASSES`` order) are on clean scans; ``robust`` maps
    each budget (image scale, e.g. 2/255) to accuracy under PGD-20; all in ``[0, 1]``. ``outcomes``
    maps each budget to the per-scan verdicts behind that accuracy: one character per test scan in
    split order, ``1`` where the scan is still read correctly under the attack, ``0`` where it is not
    (empty for a record written before they were kept). They let a check re-run the attack on a few
    scans and compare scan by scan instead of re-running it on all of them.
    """

    role: str
    run_dir: Path
    seconds: float
    clean: float
    recall: tuple[float, ...]
    robust: dict[float, float]
    test_scans: int
    trained: bool  #: False: its answers do not depend on the scan (see pipeline.evaluation.degenerate)
    verdict: str  #: the judgment behind ``trained``, in words
    outcomes: dict[float, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role, "run": self.run_dir.name, "seconds": round(self.seconds, 1),
            "clean": self.clean, "recall": list(self.recall), "test_scans": self.test_scans,
            "robust": [{"eps": eps, "accuracy": accuracy, "outcomes": self.outcomes.get(eps, "")}
                       for eps, accuracy in self.robust.items()],
            "trained": self.trained, "verdict": self.verdict,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], runs_dir: Path) -> DemoModel:
        run_dir = runs_dir / _run_name(values.get("run"))
        return cls(
            role=str(values["role"]), run_dir=run_dir, seconds=float(values["seconds"]),
            clean=float(values["clean"]), recall=tuple(float(r) for r in values["recall"]),
            robust={float(item["eps"]): float(item["accuracy"]) for item in values["robust"]},
            test_scans=int(values["test_scans"]), trained=bool(values["trained"]),
            verdict=str(values["verdict"]),
            outcomes={float(item["eps"]): _outcomes(item.get("outcomes", "")) for item in values["robust"]},
        )


@dataclass(frozen=True)
class Demo:
    """The prepared pair. ``showcase`` is the dataset index of the test scan that tells the story
    (malignant, read correctly by both models, flipped by PGD at 2/255 on the standard model only),
    or None when no test scan does; ``showcase_rank`` is its place (from 1) among the malignant test
    scans in split order, as the Attack page lists them; ``story`` says which scan it is in words."""

    recipe: str
    standard: DemoModel
    robust: DemoModel
    showcase: Optional[int]
    showcase_rank: Optional[int]
    story: str
    eval_steps: int = EVAL_STEPS
    commit: str = "unknown"  #: the git commit of the code that trained the models
    created_at: float = field(default_factory=time.time)

    @property
    def models(self) -> tuple[DemoModel, DemoModel]:
        return self.standard, self.robust

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": DEMO_FORMAT, "recipe": self.recipe, "synthetic": True,
            "standard": self.standard.to_dict(), "robust": self.robust.to_dict(),
            "showcase": self.showcase, "showcase_rank": self.showcase_rank, "story": self.story,
            "eval_steps": self.eval_steps, "commit": self.commit, "created_at": self.created_at,
        }

    def table(self) -> str:
        """The two models side by side as a Markdown table (accuracy in %, time in seconds)."""
        budgets = [eps for eps in self.standard.robust]
        header = ["model", "run", "clean", *(f"PGD-{self.eval_steps} {format_epsilon(eps)}" for eps in budgets),
                  "lowest class recall", "time (s)", "judgment"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for model in self.models:
            cells = [model.role, model.run_dir.name, _percent(model.clean),
                     *(_percent(model.robust[eps]) for eps in budgets),
                     _percent(min(model.recall)), f"{model.seconds:.0f}",
                     "trained classifier" if model.trained else NOT_TRAINED.upper()]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def prepare_demo(
    runs_dir: Path | str,
    recipe: str | DemoRecipe = "cpu",
    *,
    device: str = "auto",
    progress: Optional[ProgressCallback] = None,
) -> Demo:
    """Train the standard and the robust demo model one after the other and record them.

    Returns the :class:`Demo` also written to ``runs_dir/demo.json``. Progress covers the three
    stages in proportion to their measured time. Raises :class:`UserInputError` for an unknown
    recipe; training errors (a full disk, a cancel) propagate, and runs already finished stay.
    """
    if isinstance(recipe, DemoRecipe):
        chosen = recipe
    elif recipe in RECIPES:
        chosen = RECIPES[recipe]
    else:
        raise UserInputError(f"unknown demo recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    runs_dir = Path(runs_dir)
    standard_config, robust_config = chosen.configs(device)
    commit = current_commit()
    # what each stage will run, for the time left: it learns each kind's cost as the stages run
    check = Phase("held-out check", _test_scans(standard_config) * len(EVAL_EPSILONS) * (chosen.eval_steps + 2 / 3))
    plans = (planned_phases(standard_config), planned_phases(robust_config), (check, check))

    def stage(index: int, name: str) -> Optional[ProgressCallback]:
        return staged(progress, index, chosen.shares, name, plans=plans)

    started = time.perf_counter()
    trained = train(standard_config, runs_dir, progress=stage(0, "standard model"))
    standard_dir = finished_run(trained, "standard")
    standard_seconds = time.perf_counter() - started

    started = time.perf_counter()
    robust_config = TrainConfig.from_dict({**robust_config.to_dict(), "init_from": str(standard_dir)})
    trained = train(robust_config, runs_dir, progress=stage(1, "robust model"))
    robust_dir = finished_run(trained, "robust")
    robust_seconds = time.perf_counter() - started

    demo = measure_pair(standard_dir, robust_dir, recipe=chosen, seconds=(standard_seconds, robust_seconds),
                        device=device, progress=stage(2, "held-out check"), commit=commit)
    atomic_write_json(runs_dir / DEMO_FILE, demo.to_dict())
    report(progress, 1, 1, "demo ready")
    return demo


def measure_pair(
    standard_dir: Path,
    robust_dir: Path,
    *,
    recipe: str | DemoRecipe,
    seconds: tuple[float, float],
    device: str = "auto",
    progress: Optional[ProgressCallback] = None,
    commit: str = "unknown",
) -> Demo:
    """Measure the two trained demo runs on their held-out test split (clean, and PGD at each of
    :data:`EVAL_EPSILONS`) and pick the story scan; ``seconds`` is how long each took to train.

    Returns the :class:`Demo` (not written anywhere). Raises CheckpointError for an unreadable run.
    """
    chosen = RECIPES[recipe] if isinstance(recipe, str) else recipe
    steps = chosen.eval_steps
    standard, standard_report = _measure("standard", standard_dir, seconds[0], device, steps,
                                         staged(progress, 0, 2, "standard model"))
    robust, robust_report = _measure("robust", robust_dir, seconds[1], device, steps,
                                     staged(progress, 1, 2, "robust model"))
    showcase, rank, story = _showcase(standard_report, robust_report)
    return Demo(recipe=chosen.name, standard=standard, robust=robust, showcase=showcase, showcase_rank=rank,
                story=story, eval_steps=steps, commit=commit)


def read_demo(runs_dir: Path | str) -> Optional[Demo]:
    """The demo recorded under ``runs_dir``, or None when there is none or one of its runs is gone.

    Raises :class:`CheckpointError` when ``demo.json`` exists but is not a demo record of this lab.
    """
    runs_dir = Path(runs_dir)
    path = runs_dir / DEMO_FILE
    if not path.is_file():
        return None
    try:
        values = parse_json_object(path.read_bytes(), f"{DEMO_FILE} in {runs_dir}")
        if values.get("format") != DEMO_FORMAT:
            raise ValueError("not a demo record")
        showcase, rank = values.get("showcase"), values.get("showcase_rank")
        demo = Demo(
            recipe=str(values["recipe"]),
            standard=DemoModel.from_dict(values["standard"], runs_dir),
            robust=DemoModel.from_dict(values["robust"], runs_dir),
            showcase=None if showcase is None else int(showcase),
            showcase_rank=None if rank is None else int(rank),
            story=str(values["story"]),
            eval_steps=int(values["eval_steps"]),
            commit=str(values.get("commit", "unknown")),
            created_at=float(values["created_at"]),
        )
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"{path} is damaged ({error}); delete it and prepare the demo again (the runs themselves stay)"
        ) from None
    if not all(model.run_dir.is_dir() for model in demo.models):
        return None  # a demo run was deleted: there is no pair to show any more
    return demo


def current_commit() -> str:
    """The git commit of this checkout (with ``+changes`` when its tracked files differ), or ``unknown``."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


# ------------------------------------------------------------------------------------ helpers
def _test_scans(config: TrainConfig) -> int:
    """The held-out test scans a demo model is checked on, as expected from its data's split fractions."""
    return max(1, round(config.data.count * config.data.test_fraction))


def _measure(role: str, run_dir: Path, seconds: float, device: str, steps: int,
             progress: Optional[ProgressCallback]) -> tuple[DemoModel, RobustnessReport]:
    """Clean accuracy, per-class recall and :func:`held_out_attacks` accuracy at each budget, with the
    per-scan verdicts, on the held-out test split."""
    model, record = load_model(run_dir, device=select_device(device))
    dataset, split = run_data(record)
    result = evaluate(model, dataset, split.test, held_out_attacks(steps), progress=progress, model_name=role)
    robust = {eps: attack.outcome.accuracy for eps, attack in zip(EVAL_EPSILONS, result.attacks)}
    outcomes = {eps: verdicts(attack.outcome.correct) for eps, attack in zip(EVAL_EPSILONS, result.attacks)}
    check = result.trained
    demo_model = DemoModel(role=role, run_dir=run_dir, seconds=seconds, clean=result.clean.accuracy,
                           recall=tuple(float(r) for r in result.clean.recall), robust=robust,
                           test_scans=len(split.test), trained=not check.flagged, verdict=check.reason,
                           outcomes=outcomes)
    return demo_model, result


def held_out_attacks(steps: int) -> list[AttackSpec]:
    """The demo's held-out check: PGD-``steps`` at each of :data:`EVAL_EPSILONS`, a scan no longer
    attacked once it is fooled (the same verdicts for less work)."""
    return [AttackSpec("pgd", {"eps": eps, "steps": steps, "early_stop": True},
                       f"PGD-{steps} {format_epsilon(eps)}") for eps in EVAL_EPSILONS]


def verdicts(correct: np.ndarray) -> str:
    """Per-scan verdicts as :attr:`DemoModel.outcomes` keeps them: ``[N]`` bool -> ``N`` characters."""
    return "".join("1" if value else "0" for value in np.asarray(correct, dtype=bool))


def _outcomes(value: Any) -> str:
    if not isinstance(value, str) or set(value) - {"0", "1"}:
        raise ValueError("per-scan outcomes must be a string of 0 and 1")
    return value


def _showcase(standard: RobustnessReport,
              robust: RobustnessReport) -> tuple[Optional[int], Optional[int], str]:
    """The first malignant test scan both models read correctly that PGD at 2/255 flips on the
    standard model and not on the robust one; failing that, one the standard model reads correctly.

    Returns its dataset index, its rank (from 1) among the malignant test scans, and the story in words.
    """
    story = EVAL_EPSILONS.index(STORY_EPSILON)
    malignant = standard.clean.labels == CLASSES.index(STORY_CLASS)
    right = malignant & standard.clean.correct & robust.clean.correct
    flips = right & ~standard.attacks[story].outcome.correct & robust.attacks[story].outcome.correct
    budget = format_epsilon(STORY_EPSILON)
    for candidates, words in (
        (flips, (f"a {STORY_CLASS} test scan both models read correctly; PGD at {budget} flips the standard "
                 "model's answer and not the robust model's")),
        (malignant & standard.clean.correct,
         (f"a {STORY_CLASS} test scan the standard model reads correctly (no test scan showed the robust "
          f"model holding where the standard one flips at {budget})")),
    ):
        positions = np.flatnonzero(candidates)
        if positions.size:
            rank = int(np.count_nonzero(malignant[: positions[0] + 1]))
            return int(standard.indices[positions[0]]), rank, words
    return None, None, f"no {STORY_CLASS} test scan is read correctly by the standard model"


def _percent(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{100 * value:.0f}%"


def _run_name(value: Any) -> str:
    """A run's directory name as stored in demo.json: one plain path component, nothing else."""
    if not isinstance(value, str) or not value or Path(value).name != value or value in (".", ".."):
        raise ValueError(f"run name {value!r} is not a plain directory name")
    return value
