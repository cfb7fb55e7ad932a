"""The demo models that travel with the repository, so that a newcomer's first start trains nothing.

``python -m pipeline demo --ship`` trains the two demo models with the ``cpu`` recipe (or, with
``--from-runs``, takes a demo already prepared that way) and writes :data:`SHIPPED_DIR`:

- ``standard/`` and ``robust/``: two ordinary run directories (record, metrics, status), their kept
  weights at half precision (``model.safetensors``, widened to float32 on load) and the validation
  profile the first attack needs (the out-of-distribution detector's statistics and the model's
  answers on its validation scans, ``validation.safetensors``);
- ``scans.npz`` + ``scans.json``: the phantom scans the models were trained and tested on, so the
  first start need not render 2,000 scans;
- ``manifest.json``: the recipe (both full training configurations), the phantom version, the
  DataSpec, the commit that trained the models, the SHA-256 of every file, and the held-out figures
  measured on the stored half-precision weights (the demo record the dashboard reads).

:func:`install_shipped` checks all of that and copies the runs into a run store, where they are runs
like any other. Everything here is the synthetic phantom: an engineering check, never a medical result.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Final, Optional

import numpy as np
import torch

from pipeline.data import DataSpec, adopt_synthetic_scans, export_synthetic_scans
from pipeline.data.dataset import SCANS_ARRAYS, SCANS_RECORD, phantom_identity
from pipeline.data.phantom import PHANTOM_VERSION
from pipeline.demo.core import DEMO_FILE, RECIPES, Demo, DemoRecipe, measure_pair, read_demo
from pipeline.errors import CheckpointError, UserInputError
from pipeline.evaluation.profile import PROFILE, validation_profile
from pipeline.json_object import parse_json_object
from pipeline.progress import ProgressCallback, report, staged
from pipeline.store import (
    CONFIG,
    METRICS,
    MODEL,
    STATUS,
    atomic_write_json,
    file_sha256,
    load_model,
    read_config,
    read_status,
    save_model,
)
from pipeline.training import TrainConfig

#: Where the shipped demo lives in the repository.
SHIPPED_DIR: Final[Path] = Path(__file__).resolve().parent / "shipped"
MANIFEST: Final[str] = "manifest.json"
MANIFEST_FORMAT: Final[str] = "lunglab-shipped-demo"
#: The only recipe that ships: the one every machine can reproduce.
SHIPPED_RECIPE: Final[str] = "cpu"
#: The weights are stored at this precision (half the size of float32).
PRECISION: Final[torch.dtype] = torch.float16
ROLES: Final[tuple[str, str]] = ("standard", "robust")
#: The files of a shipped run, in the order they are copied.
RUN_FILES: Final[tuple[str, ...]] = (CONFIG, METRICS, STATUS, MODEL, PROFILE)
#: What a run's status says about the machine and process that trained it: not shipped.
MACHINE_STATUS: Final[frozenset[str]] = frozenset({"job", "worker_pid", "tracking", "log"})
RETRAIN_HINT: Final[str] = (
    "retrain the demo yourself (the Attack page's 'Retrain the demo' button, or "
    "python -m pipeline demo --train)"
)


class StaleShippedDemo(UserInputError):
    """The shipped models were made by another recipe or phantom version than this code's."""


def recipe_settings(recipe: DemoRecipe) -> dict[str, Any]:
    """Both training configurations of ``recipe`` as JSON, device-independent: what the shipped
    models must have been trained with (the robust one's ``init_from`` is the standard run)."""
    standard, robust = recipe.configs("auto")
    return {"standard": standard.to_dict(), "robust": robust.to_dict(), "eval_steps": recipe.eval_steps}


def staleness(manifest: dict[str, Any]) -> Optional[str]:
    """Why the shipped files no longer match this code (phantom version, recipe), or None when they do."""
    if manifest.get("phantom_version") != PHANTOM_VERSION:
        return (f"the shipped demo models were trained on phantom version {manifest.get('phantom_version')}, "
                f"and this code renders version {PHANTOM_VERSION}")
    recipe = RECIPES.get(str(manifest.get("recipe")))
    if recipe is None:
        return f"the shipped demo names a recipe this code does not have ({manifest.get('recipe')!r})"
    wanted = recipe_settings(recipe)
    given = manifest.get("recipe_settings") or {}
    changed = [f"{role}.{name}" for role in ROLES
               for name in changed_settings(wanted[role], given.get(role) or {})]
    if wanted["eval_steps"] != given.get("eval_steps"):
        changed.append("eval_steps")
    if changed:
        return f"the demo recipe changed since the shipped models were trained ({', '.join(changed[:6])})"
    return None


def changed_settings(wanted: dict[str, Any], trained: dict[str, Any]) -> list[str]:
    """The training settings (``data.x`` for the data's) in which ``trained`` differs from ``wanted``.

    A setting the trained record lacks was added to the code since: it changed nothing when ``wanted``
    holds its default (a new option off by default), and counts as changed otherwise. Settings only
    the record has (since removed) are not compared: ``wanted`` cannot say what they should be.
    """
    defaults = TrainConfig().to_dict()
    changed = []
    for name, value in wanted.items():
        if isinstance(value, dict):
            inner = trained.get(name) if isinstance(trained.get(name), dict) else {}
            nested = {key: item for key, item in value.items()
                      if key in inner or item != (defaults.get(name) or {}).get(key)}
            changed += [f"{name}.{key}" for key, item in nested.items() if inner.get(key) != item]
        elif name in trained:
            if trained[name] != value:
                changed.append(name)
        elif value != defaults.get(name):
            changed.append(name)
    return sorted(changed)


def read_manifest(source: Path = SHIPPED_DIR) -> dict[str, Any]:
    """The shipped demo's manifest. Raises CheckpointError naming the file when it is missing or damaged."""
    path = source / MANIFEST
    try:
        manifest = parse_json_object(path.read_bytes(), f"{MANIFEST} of the shipped demo")
    except FileNotFoundError:
        raise CheckpointError(f"the shipped demo is missing ({path} does not exist); {RETRAIN_HINT}") from None
    except (OSError, UserInputError) as error:
        raise CheckpointError(f"the shipped demo's {path} is damaged ({error}); {RETRAIN_HINT}") from None
    if manifest.get("format") != MANIFEST_FORMAT or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{path} is not a shipped-demo manifest of this lab; {RETRAIN_HINT}")
    return manifest


def verify_shipped(source: Path = SHIPPED_DIR) -> dict[str, Any]:
    """Check the shipped demo: manifest readable, every file present with its recorded SHA-256, made by
    this code's recipe and phantom version. Returns the manifest.

    Raises CheckpointError naming the first missing or damaged file, StaleShippedDemo when the recipe
    or the phantom changed since the files were made.
    """
    manifest = read_manifest(source)
    for name, digest in manifest["files"].items():
        path = source / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise CheckpointError(f"{source / MANIFEST} names a file outside the shipped demo: {name!r}")
        if not path.is_file():
            raise CheckpointError(f"the shipped demo file {path} is missing; {RETRAIN_HINT}")
        if file_sha256(path) != digest:
            raise CheckpointError(
                f"the shipped demo file {path} is damaged (its SHA-256 differs from the manifest's); {RETRAIN_HINT}"
            )
    why = staleness(manifest)
    if why is not None:
        raise StaleShippedDemo(f"{why}; {RETRAIN_HINT}, then regenerate the shipped files with "
                               "python -m pipeline demo --ship")
    return manifest


def install_shipped(runs_dir: Path | str, source: Path = SHIPPED_DIR) -> Demo:
    """Copy the shipped demo into ``runs_dir`` as two ordinary runs and record it as the demo there.

    Seconds, not minutes: the weights, their validation profiles and the phantom scans are all
    shipped (the scans go to this machine's dataset cache). A run of the same name whose weights are
    the shipped ones is reused; ``demo.json`` is (re)written. Raises CheckpointError or
    StaleShippedDemo (see :func:`verify_shipped`) before anything is written.
    """
    runs_dir = Path(runs_dir)
    manifest = verify_shipped(source)
    spec = DataSpec.from_dict(manifest["data"])
    adopt_synthetic_scans(spec, source)  # a miss only costs rendering time
    with np.load(source / SCANS_ARRAYS, allow_pickle=False) as arrays:
        identity = phantom_identity(spec.image_size, spec.seed, arrays["labels"])
    runs_dir.mkdir(parents=True, exist_ok=True)
    for role in ROLES:
        _install_run(source / role, runs_dir / manifest["runs"][role], manifest["files"][f"{role}/{MODEL}"],
                     identity)
    atomic_write_json(runs_dir / DEMO_FILE, manifest["demo"])
    demo = read_demo(runs_dir)
    if demo is None:  # cannot happen after the copies above, unless the folder vanished under us
        raise CheckpointError(f"the demo could not be installed in {runs_dir}")
    return demo


def ship(
    demo_runs_dir: Path | str,
    dest: Path = SHIPPED_DIR,
    *,
    progress: Optional[ProgressCallback] = None,
) -> Demo:
    """Write the shipped files from the demo prepared in ``demo_runs_dir`` (by :func:`prepare_demo`;
    the command line ships only the ``cpu`` recipe): half-precision weights, validation profiles, the phantom scans, and a
    manifest whose held-out figures are measured anew on the stored weights. Returns that Demo.

    Raises UserInputError when there is no demo there or it was made by another recipe,
    StaleShippedDemo when its runs were trained with other settings than this code's recipe.
    """
    demo_runs_dir = Path(demo_runs_dir)
    demo = read_demo(demo_runs_dir)
    if demo is None:
        raise UserInputError(f"{demo_runs_dir} holds no prepared demo; run python -m pipeline demo --train first")
    if demo.recipe not in RECIPES:
        raise UserInputError(f"this demo was made with a recipe this code does not have ({demo.recipe!r})")
    settings = recipe_settings(RECIPES[demo.recipe])
    for model in demo.models:
        trained = {**read_config(model.run_dir), "device": "auto"}
        changed = changed_settings({**settings[model.role], "init_from": trained.get("init_from")}, trained)
        if changed:
            raise StaleShippedDemo(f"the {model.role} run {model.run_dir.name} was not trained with this "
                                   f"code's demo recipe ({', '.join(changed[:6])}); prepare the demo again")
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".shipping-") as work:
        staging = Path(work) / "shipped"
        runs = Path(work) / "runs"
        names = {}
        for role, model in zip(ROLES, demo.models):
            names[role] = model.run_dir.name
            _export_run(model.run_dir, staging / role, standard_name=demo.standard.run_dir.name)
        data = DataSpec.from_dict(read_config(demo.standard.run_dir)["data"])
        export_synthetic_scans(data, staging, progress=staged(progress, 0, 4, "phantom scans"))
        for number, role in enumerate(ROLES, start=1):  # profiles on the stored half-precision weights
            model, _ = load_model(staging / role)
            validation_profile(staging / role, model, progress=staged(progress, number, 4, f"{role}: profile"))
        for role in ROLES:
            shutil.copytree(staging / role, runs / names[role])
        measured = measure_pair(runs / names["standard"], runs / names["robust"], recipe=demo.recipe,
                                seconds=(demo.standard.seconds, demo.robust.seconds), device="cpu",
                                progress=staged(progress, 3, 4, "held-out check"))
        measured = dataclasses.replace(measured, commit=demo.commit, created_at=time.time())
        files = sorted([f"{role}/{name}" for role in ROLES for name in RUN_FILES] + [SCANS_ARRAYS, SCANS_RECORD])
        manifest = {
            "format": MANIFEST_FORMAT, "synthetic": True, "recipe": demo.recipe,
            "recipe_settings": settings, "phantom_version": PHANTOM_VERSION, "data": data.to_dict(),
            "trained_at_commit": demo.commit, "precision": str(PRECISION).removeprefix("torch."),
            "runs": names, "demo": measured.to_dict(),
            "files": {name: file_sha256(staging / name) for name in files},
        }
        atomic_write_json(staging / MANIFEST, manifest)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    report(progress, 1, 1, "shipped")
    return measured


# ------------------------------------------------------------------------------------ helpers
def _export_run(run_dir: Path, target: Path, *, standard_name: str) -> None:
    """A run's shipped form: its record (``init_from`` reduced to the standard run's name: the path
    it was trained at means nothing elsewhere), metrics, status and half-precision weights."""
    target.mkdir(parents=True)
    config = read_config(run_dir)
    if config.get("init_from"):
        config["init_from"] = standard_name
    atomic_write_json(target / CONFIG, config)
    shutil.copyfile(run_dir / METRICS, target / METRICS)
    status = {name: value for name, value in read_status(run_dir).items() if name not in MACHINE_STATUS}
    atomic_write_json(target / STATUS, status)
    model, _ = load_model(run_dir)
    save_model(target / MODEL, model, precision=PRECISION)


def _install_run(shipped: Path, target: Path, model_digest: str, identity: str) -> None:
    """Copy one shipped run to ``target``, its record given the ``identity`` of its phantom scans; an
    existing run there with the same weights is kept, and given the identity if its record lacks one.

    The shipped records predate :attr:`ScanDataset.identity` and name their scans by the shipped
    pixels' fingerprint alone. That holds while the cache keeps the shipped scans adopted at install;
    once the cache is cleared or another cache folder is used, the phantom is rendered anew, on another
    CPU a few pixels differ by a grey level, and the runs' data would read as changed: the demo models
    could no longer be evaluated or attacked on their test scans.
    """
    if target.is_dir():
        if (target / MODEL).is_file() and file_sha256(target / MODEL) == model_digest:
            _record_identity(target, identity)
            return
        raise CheckpointError(f"{target} already exists and holds other weights than the shipped demo's; "
                              "move or delete it, then install the demo again")
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".installing-") as work:
        staging = Path(work) / target.name
        staging.mkdir()
        for name in RUN_FILES:
            shutil.copyfile(shipped / name, staging / name)
        _record_identity(staging, identity)
        os.replace(staging, target)


def _record_identity(run_dir: Path, identity: str) -> None:
    """Add ``identity`` to the dataset entry of the record in ``run_dir`` where it has none."""
    config = read_config(run_dir)
    dataset = config.get("dataset")
    if isinstance(dataset, dict) and not dataset.get("identity"):
        atomic_write_json(run_dir / CONFIG, {**config, "dataset": {**dataset, "identity": identity}})
