"""Experiment tracking in MLflow: every training and evaluation as an MLflow run, best effort.

A training logs its settings as parameters, each finished epoch's metrics (step = epoch), the
kept model's location (tag ``lunglab.model``) and its ``config.json`` / ``metrics.jsonl``; an
evaluation logs its settings, every accuracy and attack success rate it measured, and its report
files (``report.json``, ``report.csv``, ``report.html``). Runs on synthetic data are tagged
``lunglab.synthetic=true`` and say so in their description.

Where: ``MLFLOW_TRACKING_URI`` when set (a server such as ``http://host:5000``, or any store
MLflow knows); otherwise MLflow's own default kind of local store, SQLite, beside the runs:
``<runs>/mlflow/mlflow.db`` with artifacts under ``<runs>/mlflow/artifacts/``, created once under a
file lock (:func:`store_lock`) so that any number of jobs may start together on a fresh folder. MLflow's file
store is in maintenance mode since MLflow 3 and refuses to start without an opt-in, so it is not
used. The experiment is ``MLFLOW_EXPERIMENT_NAME`` or ``lung-ct-robustness-lab``.

Whether: on by default; off through, highest first, the command line (``--no-tracking``), the
environment (``LUNGLAB_TRACKING=off``) or the dashboard's switch, which is saved for a runs
folder in ``<runs>/mlflow/settings.json``.

Never fatal: a tracker that cannot be reached (or an MLflow that is not installed) gives one
:class:`TrackingWarning` and the run goes on untracked; the reason is kept in the run's
``status.json`` under ``tracking`` so the dashboard can say why there is no link. HTTP requests
to a server are retried once with a 10 s timeout unless MLflow's own ``MLFLOW_HTTP_REQUEST_*``
variables say otherwise, so an unreachable server costs seconds, not minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Iterable, Iterator, Mapping, Optional

if TYPE_CHECKING:
    from mlflow import MlflowClient

#: Environment variable that turns tracking on or off (``on``/``off``, ``1``/``0``, ...).
ENV: Final[str] = "LUNGLAB_TRACKING"
#: The local store's folder beside the runs.
STORE_DIR: Final[str] = "mlflow"
SETTINGS_FILE: Final[str] = "settings.json"
DEFAULT_EXPERIMENT: Final[str] = "lung-ct-robustness-lab"
#: Where ``mlflow ui`` serves by default; ``LUNGLAB_MLFLOW_UI`` names another address.
DEFAULT_UI: Final[str] = "http://127.0.0.1:5000"
#: MLflow's HTTP settings used unless the environment sets them: fail fast on a dead server.
HTTP_DEFAULTS: Final[dict[str, str]] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
#: How long a job waits for another to finish creating the SQLite store (migrations take seconds).
LOCK_TIMEOUT_S: Final[float] = 300.0
SYNTHETIC_NOTE: Final[str] = "Trained or evaluated on the synthetic phantom: not a medical result."

_ON, _OFF = frozenset({"1", "on", "true", "yes"}), frozenset({"0", "off", "false", "no"})
#: Characters MLflow accepts in metric and parameter names; anything else becomes ``_``.
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. :/]+")
_MAX_PARAM_CHARS = 6000


class TrackingWarning(UserWarning):
    """The tracker could not be used; the run itself goes on."""


# --------------------------------------------------------------------------------- settings
def store_dir(runs_dir: Path | str) -> Path:
    """The local store of ``runs_dir``: ``<runs>/mlflow`` (absolute)."""
    return Path(runs_dir).expanduser().resolve() / STORE_DIR


def tracking_uri(runs_dir: Path | str) -> str:
    """``MLFLOW_TRACKING_URI``, or the SQLite store beside the runs."""
    configured = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return configured or f"sqlite:///{(store_dir(runs_dir) / 'mlflow.db').as_posix()}"


def is_local(uri: str) -> bool:
    """A store on this machine's disk (SQLite, or a file store given as a path or file: URI)."""
    return uri.startswith(("sqlite:", "file:", "/", "."))


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or DEFAULT_EXPERIMENT


@dataclass(frozen=True)
class Setting:
    """Whether tracking is on for a runs folder, and which setting decided it."""

    enabled: bool
    source: str  #: "command line", "environment (LUNGLAB_TRACKING)", "dashboard" or "default"


def setting(runs_dir: Path | str, flag: Optional[bool] = None) -> Setting:
    """The effective switch: ``flag`` (the command line), then ``LUNGLAB_TRACKING``, then the saved
    dashboard switch of ``runs_dir``, then on. An unreadable value is ignored with a warning."""
    if flag is not None:
        return Setting(bool(flag), "command line")
    value = os.environ.get(ENV, "").strip().lower()
    if value in _ON | _OFF:
        return Setting(value in _ON, f"environment ({ENV})")
    if value:
        warnings.warn(f"{ENV}={value!r} is neither on nor off; ignored", TrackingWarning, stacklevel=2)
    saved = _saved_switch(runs_dir)
    if saved is not None:
        return Setting(saved, "dashboard")
    return Setting(True, "default")


def save_switch(runs_dir: Path | str, enabled: bool) -> None:
    """Save the dashboard's switch for ``runs_dir`` (read by every job started on it)."""
    from pipeline.store import atomic_write_json

    folder = store_dir(runs_dir)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / SETTINGS_FILE, {"enabled": bool(enabled)})


def _saved_switch(runs_dir: Path | str) -> Optional[bool]:
    path = store_dir(runs_dir) / SETTINGS_FILE
    try:
        value = json.loads(path.read_text()).get("enabled")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, bool) else None


def add_tracking_flag(parser: argparse.ArgumentParser) -> None:
    """``--tracking/--no-tracking`` (dest ``track``), the same on every command that tracks."""
    parser.add_argument(
        "--tracking",
        dest="track",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"log to MLflow (default: on, unless {ENV}=off or the dashboard turned it off; "
        "MLFLOW_TRACKING_URI chooses the tracker, else a SQLite store in <runs-dir>/mlflow)",
    )


# ------------------------------------------------------------------------------------ links
def run_link(entry: Mapping[str, Any]) -> Optional[str]:
    """The MLflow UI address of a tracked run (``status.json``'s ``tracking`` entry), if it has one.

    A server's runs are shown by the server itself; a local store's by ``mlflow ui`` (see
    :func:`ui_command`), expected at ``LUNGLAB_MLFLOW_UI`` or http://127.0.0.1:5000.
    """
    run_id, experiment_id, uri = entry.get("run_id"), entry.get("experiment_id"), str(entry.get("uri", ""))
    if not run_id or not experiment_id:
        return None
    base = uri if uri.startswith(("http://", "https://")) else os.environ.get("LUNGLAB_MLFLOW_UI", DEFAULT_UI)
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def describe(entry: Mapping[str, Any]) -> str:
    """One line for a person: where the run is in MLflow and how to see it, or why it is not there."""
    if entry.get("error"):
        return f"MLflow: not tracked: {entry['error']}"
    text = f"MLflow: run {entry.get('run_id')} in {entry.get('uri')}"
    serve = ui_command(str(entry.get("uri", "")))
    return text + (f"; view it with `{serve}` at {run_link(entry)}" if serve else f" at {run_link(entry)}")


def ui_command(uri: str) -> Optional[str]:
    """The command that serves a local store's UI (the full ``mlflow`` package has the UI)."""
    if not is_local(uri):
        return None
    return f"mlflow ui --backend-store-uri {uri}"


# -------------------------------------------------------------------------------- tracking
@dataclass
class TrackedRun:
    """One MLflow run; every call is best effort and a no-op once the tracker has failed.

    ``entry`` is what the lab keeps about it (``uri``, ``experiment_id``, ``run_id``, ``error``).
    """

    client: Optional["MlflowClient"] = None
    entry: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.client is not None

    def log_metrics(self, values: Mapping[str, Any], step: int) -> None:
        """Log every finite number in ``values`` (booleans and text are skipped) at ``step``."""
        numbers = {
            metric_key(key): float(value)
            for key, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        }
        if numbers:
            self._call("log metrics", _log_metrics, numbers, step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self._call(f"set tag {key}", lambda c, r, k=key, v=str(value): c.set_tag(r, k, v))

    def log_files(self, paths: Iterable[Path], folder: str) -> None:
        """Copy the files that exist into the run's artifacts under ``folder``."""
        for path in paths:
            if Path(path).is_file():
                self._call(f"log {Path(path).name}", lambda c, r, p=str(path): c.log_artifact(r, p, folder))

    def finish(self, status: str) -> None:
        """Close the run as ``FINISHED``, ``FAILED`` or ``KILLED``."""
        self._call("close the run", lambda client, run_id: client.set_terminated(run_id, status))

    def _call(self, what: str, action: Any, *args: Any) -> None:
        if self.client is None:
            return
        try:
            with _quiet():
                action(self.client, self.entry["run_id"], *args)
        except Exception as error:  # noqa: BLE001 - any tracker failure is a warning, never fatal
            self._fail(f"could not {what} in MLflow at {self.entry.get('uri')}", error)

    def _fail(self, what: str, error: BaseException) -> None:
        reason = f"{what} ({type(error).__name__}: {_first_line(error)}); the run goes on untracked"
        warnings.warn(reason, TrackingWarning, stacklevel=3)
        self.entry["error"] = reason
        self.client = None


def start(
    runs_dir: Path | str,
    *,
    name: str,
    kind: str,
    params: Mapping[str, Any],
    synthetic: bool,
    tags: Optional[Mapping[str, Any]] = None,
    flag: Optional[bool] = None,
    resume: Optional[Mapping[str, Any]] = None,
) -> TrackedRun:
    """Open an MLflow run for a training or evaluation (``kind``) whose runs live in ``runs_dir``.

    ``resume`` is the ``tracking`` entry of an earlier attempt: its MLflow run continues when it
    is in the same store. Returns an inactive :class:`TrackedRun` when tracking is off, and one
    whose ``entry["error"]`` says why when the tracker cannot be used.
    """
    if not setting(runs_dir, flag).enabled:
        return TrackedRun()
    uri = tracking_uri(runs_dir)
    run = TrackedRun(entry={"uri": uri})
    try:
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        with _quiet(), store_lock(uri):
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=uri)
            experiment_id = _experiment(client, runs_dir, uri)
            run_id = _continued(client, resume, uri)
            if run_id is None:
                all_tags = {
                    "lunglab.kind": kind,
                    "lunglab.synthetic": str(bool(synthetic)).lower(),
                    **({"mlflow.note.content": SYNTHETIC_NOTE} if synthetic else {}),
                    **{key: str(value) for key, value in (tags or {}).items()},
                }
                run_id = client.create_run(experiment_id, run_name=name, tags=all_tags).info.run_id
                _log_params(client, run_id, params)
    except Exception as error:  # noqa: BLE001 - unreachable server, locked database, missing package
        run._fail(f"could not open an MLflow run at {uri}", error)
        return run
    run.client = client
    run.entry.update(experiment_id=experiment_id, run_id=run_id)
    return run


@contextlib.contextmanager
def tracked(
    runs_dir: Path | str,
    *,
    files: Iterable[Path] = (),
    cancelled: tuple[type[BaseException], ...] = (KeyboardInterrupt,),
    **options: Any,
) -> Iterator[TrackedRun]:
    """:func:`start` a run, yield it, then log ``files`` and close it as FINISHED, KILLED (on one of
    ``cancelled``) or FAILED (on any other exception, which propagates)."""
    run = start(runs_dir, **options)
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except cancelled:
        status = "KILLED"
        raise
    finally:
        run.log_files(files, "run")
        run.finish(status)


def log_evaluation(
    runs_dir: Path | str,
    suite: Any,
    settings: Mapping[str, Any],
    reports: Iterable[Path],
    *,
    name: str,
    flag: Optional[bool] = None,
) -> dict[str, Any]:
    """Log a finished :class:`~pipeline.evaluation.suite.EvaluationSuite` as one MLflow run.

    Metrics, per model: ``<model>/clean/accuracy``; per attack ``<model>/<attack label>/accuracy``
    and ``.../attack_success_rate``; per epsilon ``<model>/worst case <eps>/accuracy``; each
    accuracy's 95% interval as ``.../accuracy_low`` and ``.../accuracy_high``; the expected
    calibration error ``<model>/<condition>/ece``; ``<model>/mCE`` against the baseline model and
    ``<model>/<condition>/road`` where they were measured; per defence (the verdict table)
    ``<model>/defence <name>/naive_accuracy`` and ``.../adaptive_accuracy``, with the sentence
    saying which to believe as a tag; for an ensemble, each member's accuracy under its own attack,
    the ensemble's under the transfer from each member and under the whole-ensemble attack, and how
    often the members fail together (``.../all_fail``, ``.../pairwise_jaccard``); per detector
    ``<model>/detector <name>/false_positive_rate``, ``.../detection_rate_pgd``,
    ``.../detection_rate_adaptive``, ``.../missed_pgd`` and ``.../missed_adaptive`` (wrong and
    undetected). Returns the run's ``tracking`` entry (empty when tracking is off).
    """
    models = {model.name: model for model in suite.models}
    run = start(
        runs_dir,
        name=name,
        kind="evaluation",
        params={"settings": settings, "models": {key: model.info for key, model in models.items()}},
        synthetic=bool(suite.synthetic),
        tags={
            "lunglab.evaluated_runs": ", ".join(str(m.info.get("run_dir", m.name)) for m in suite.models),
            # pipeline.evaluation.degenerate's judgment, beside the figures as everywhere else
            **{metric_key(f"lunglab.not_trained.{m.name}"): m.report.trained.reason for m in suite.models
               if m.report.trained.flagged},
            **{metric_key(f"lunglab.verdict.{v.model}.{v.defense or 'none'}"): v.believe
               for v in getattr(suite, "verdicts", [])},
        },
        flag=flag,
    )
    for model_name, model in models.items():
        report = model.report
        values: dict[str, float] = {}

        def accuracy(prefix: str, outcome: Any) -> None:
            interval = outcome.accuracy_interval
            values[f"{prefix}/accuracy"] = outcome.accuracy
            values[f"{prefix}/accuracy_low"], values[f"{prefix}/accuracy_high"] = interval.low, interval.high

        accuracy(f"{model_name}/clean", report.clean)
        for result in report.attacks:
            accuracy(f"{model_name}/{result.label}", result.outcome)
            values[f"{model_name}/{result.label}/attack_success_rate"] = result.success_rate
        for combined in report.combined:
            label = "all" if combined.eps is None else f"{combined.eps * 255:g}/255"
            accuracy(f"{model_name}/worst case {label}", combined.outcome)
        for calibrated in model.calibration:
            values[f"{model_name}/{calibrated.condition}/ece"] = calibrated.ece
        if model.corruption_errors is not None:
            values[f"{model_name}/mCE"] = model.corruption_errors.mce.estimate
        if model.faithfulness is not None:
            for side in (model.faithfulness.clean, model.faithfulness.attacked):
                values[f"{model_name}/{side.condition}/road"] = side.mean.estimate
        ensemble = getattr(model, "ensemble", None)
        if ensemble is not None:  # each member's robust accuracy, each transfer, the whole, shared failures
            for member, own, transferred in zip(ensemble.members, ensemble.member_robust, ensemble.transfer):
                values[f"{model_name}/member {member}/own_attack_accuracy"] = own
                values[f"{model_name}/transfer from {member}/accuracy"] = transferred
            values[f"{model_name}/whole-ensemble attack/accuracy"] = ensemble.whole
            for shared in ensemble.shared_failures():
                key = f"{model_name}/shared failures, {shared.condition}"
                values[f"{key}/all_fail"] = shared.all_fail
                values[f"{key}/pairwise_jaccard"] = shared.mean_pair
        for verdict in getattr(suite, "verdicts", []):
            if verdict.model == model_name and verdict.defense is not None:
                values[f"{model_name}/defence {verdict.defense}/naive_accuracy"] = verdict.naive
                values[f"{model_name}/defence {verdict.defense}/adaptive_accuracy"] = verdict.adaptive
        for detector in getattr(model, "detectors", []):
            prefix = f"{model_name}/detector {detector.detector['detector']}"
            values[f"{prefix}/false_positive_rate"] = detector.false_positives.estimate
            for condition in ("pgd", "adaptive"):
                values[f"{prefix}/detection_rate_{condition}"] = detector.detection(condition).estimate
                values[f"{prefix}/missed_{condition}"] = detector.missed(condition).estimate
        run.log_metrics(values, step=0)
    run.log_files(reports, "reports")
    run.finish("FINISHED")
    return run.entry


def metric_key(text: str) -> str:
    """``text`` with the characters MLflow refuses in names replaced (ε, ∞, =, +, ...)."""
    readable = text.replace("ε", "eps").replace("∞", "inf").replace("=", " ")
    return _UNSAFE.sub("_", readable).strip()[:250] or "_"


# --------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def store_lock(uri: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an inter-process lock beside a SQLite store while a job opens it; no-op for other stores.

    MLflow creates a SQLite store's tables and runs its Alembic migrations in whichever process
    opens it first, with nothing to stop a second process doing the same at once: jobs started
    together on a fresh runs folder failed with "duplicate column name: step", or left the store
    broken for good ("table _alembic_tmp_tags already exists"). Under this lock (a ``filelock``
    file ``<store>.lock``, released by the OS if the holder dies) the first job creates the store
    whole and the others find it made; creating the experiment and the run happen under it too.
    Raises ``filelock.Timeout`` after ``timeout`` seconds (then the job goes on untracked).
    """
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        yield
        return
    from filelock import FileLock

    database = Path(uri[len("sqlite:///"):])
    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(database) + ".lock", timeout=timeout):
        yield


def _experiment(client: "MlflowClient", runs_dir: Path | str, uri: str) -> str:
    """The experiment's id, created on first use (artifacts beside a local store)."""
    from mlflow.exceptions import MlflowException

    name = experiment_name()
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if is_local(uri):
        location = (store_dir(runs_dir) / "artifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # another job created it a moment ago
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _continued(client: "MlflowClient", resume: Optional[Mapping[str, Any]], uri: str) -> Optional[str]:
    """The earlier attempt's run id, reopened, when it lives in this store."""
    if not resume or resume.get("uri") != uri or not resume.get("run_id"):
        return None
    from mlflow.exceptions import MlflowException

    try:
        client.update_run(resume["run_id"], status="RUNNING")
    except MlflowException:  # deleted from the tracker meanwhile: start afresh
        return None
    return str(resume["run_id"])


def _log_params(client: "MlflowClient", run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    flat = _flatten(params)
    items = [Param(metric_key(key), str(value)[:_MAX_PARAM_CHARS]) for key, value in flat.items()]
    for start_at in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
        client.log_batch(run_id, params=items[start_at : start_at + 100])


def _log_metrics(client: "MlflowClient", run_id: str, values: Mapping[str, float], step: int) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, step) for key, value in values.items()]
    for start_at in range(0, len(metrics), 1000):  # MLflow takes at most 1,000 metrics per batch
        client.log_batch(run_id, metrics=metrics[start_at : start_at + 1000])


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        elif value is not None:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide the deprecation chatter of MLflow's database layer (SQLAlchemy 2.1 deprecates what it uses)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else "no message"
