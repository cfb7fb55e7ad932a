"""MLflow tracking against real stores: a local SQLite store beside the runs, and a closed port.

One tiny tracked training (and one evaluation of it) is shared by the module, since opening a new
SQLite store costs seconds; the rest reads that store back through MLflow's own client.
"""

from __future__ import annotations

import json
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from mlflow import MlflowClient
from streamlit.testing.v1 import AppTest

from pipeline import tracking
from pipeline.__main__ import main
from pipeline.store import METRICS, MODEL, read_metrics, read_status
from pipeline.training import TrainConfig, train
from tests.training_helpers import TINY

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")


@dataclass
class Tracked:
    runs: Path
    run_dir: Path
    client: MlflowClient


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracked]:
    runs = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "LUNGLAB_TRACKING"):
            patch.delenv(name, raising=False)
        run_dir = train(TrainConfig.from_dict({**TINY, "epochs": 2}), runs)  # on by default
        yield Tracked(runs, run_dir, MlflowClient(tracking.tracking_uri(runs)))


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on this machine where nothing listens: bound, so nobody else takes it, never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_training_logs_settings_epochs_kept_model_and_files(tracked: Tracked) -> None:
    entry = read_status(tracked.run_dir)["tracking"]
    assert entry["uri"] == f"sqlite:///{tracked.runs.resolve()}/mlflow/mlflow.db" and "error" not in entry
    run = tracked.client.get_run(entry["run_id"])
    assert run.info.run_name == tracked.run_dir.name and run.info.status == "FINISHED"
    assert run.data.params["arch"] == "resnet18" and run.data.params["epochs"] == "2"
    assert run.data.tags["lunglab.kind"] == "training" and run.data.tags["lunglab.synthetic"] == "true"
    assert "not a medical result" in run.data.tags["mlflow.note.content"]
    lines = read_metrics(tracked.run_dir)
    history = tracked.client.get_metric_history(entry["run_id"], "val_acc")
    assert [(m.step, m.value) for m in history] == [(line["epoch"], line["val_acc"]) for line in lines]
    kept = next(line for line in reversed(lines) if line["best"])
    assert run.data.tags["lunglab.model"] == str(tracked.run_dir / MODEL)
    assert run.data.tags["lunglab.kept_epoch"] == str(kept["epoch"])
    files = {item.path for item in tracked.client.list_artifacts(entry["run_id"], "run")}
    assert files == {"run/config.json", f"run/{METRICS}"}
    # artifacts live beside the store, not wherever the process happened to start
    assert run.info.artifact_uri.startswith((tracked.runs.resolve() / "mlflow" / "artifacts").as_uri())


def test_evaluation_logs_its_figures_and_reports(tracked: Tracked, capsys: pytest.CaptureFixture) -> None:
    out = tracked.run_dir / "evaluations" / "first"
    args = ["evaluate", "--run", str(tracked.run_dir), "--attacks", "fgsm", "--no-strength", "--limit", "6",
            "--device", "cpu", "--quiet", "--out", str(out), "--job-dir", str(out)]
    assert main(args) == 0
    entry = read_status(out)["tracking"]
    assert f"MLflow: run {entry['run_id']}" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    run = tracked.client.get_run(entry["run_id"])
    model = tracked.run_dir.name
    assert run.data.tags["lunglab.kind"] == "evaluation"
    assert run.data.metrics[f"{model}/clean/accuracy"] == report["models"][0]["report"]["clean"]["accuracy"]
    fgsm = [key for key in run.data.metrics if key.startswith(f"{model}/FGSM")]
    assert any(key.endswith("/attack_success_rate") for key in fgsm)
    interval = report["models"][0]["report"]["clean"]["accuracy_ci"]
    assert run.data.metrics[f"{model}/clean/accuracy_low"] == pytest.approx(interval["low"])
    assert run.data.metrics[f"{model}/clean/ece"] == report["models"][0]["calibration"][0]["ece"]
    assert run.data.params["settings.attacks"] == "['fgsm']"
    trained = report["models"][0]["report"]["trained_classifier"]  # a two-epoch run: judged as everywhere
    assert run.data.tags.get(tracking.metric_key(f"lunglab.not_trained.{model}")) == (
        trained["reason"] if trained["flagged"] else None
    )
    files = {item.path for item in tracked.client.list_artifacts(entry["run_id"], "reports")}
    assert files == {"reports/report.json", "reports/report.csv", "reports/report.html"}


def test_a_resumed_run_continues_its_mlflow_run(tracked: Tracked) -> None:
    entry = read_status(tracked.run_dir)["tracking"]
    options = dict(name="resumed", kind="training", params={}, synthetic=True, flag=True)
    again = tracking.start(tracked.runs, resume=entry, **options)
    assert again.entry["run_id"] == entry["run_id"]
    assert tracked.client.get_run(entry["run_id"]).info.status == "RUNNING"
    again.finish("FINISHED")
    elsewhere = tracking.start(tracked.runs, resume={**entry, "uri": "sqlite:////elsewhere.db"}, **options)
    assert elsewhere.entry["run_id"] != entry["run_id"]  # another store's run cannot be continued here
    elsewhere.finish("FINISHED")


def test_an_unreachable_tracker_is_a_warning_and_the_run_completes(
    tmp_path: Path, closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"http://127.0.0.1:{closed_port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.warns(tracking.TrackingWarning, match=f"could not open an MLflow run at {uri}"):
        run_dir = train(TrainConfig.from_dict({**TINY, "epochs": 1}), tmp_path, track=True)
    status = read_status(run_dir)
    assert status["phase"] == "done" and len(read_metrics(run_dir)) == 1
    assert status["tracking"]["uri"] == uri and "goes on untracked" in status["tracking"]["error"]
    assert tracking.run_link(status["tracking"]) is None
    assert not (tmp_path / "mlflow").exists()


def test_switch_precedence_flag_then_environment_then_dashboard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(tracking.ENV, raising=False)
    assert tracking.setting(tmp_path) == tracking.Setting(True, "default")
    tracking.save_switch(tmp_path, False)
    assert tracking.setting(tmp_path) == tracking.Setting(False, "dashboard")
    monkeypatch.setenv(tracking.ENV, "on")
    assert tracking.setting(tmp_path) == tracking.Setting(True, f"environment ({tracking.ENV})")
    assert tracking.setting(tmp_path, flag=False) == tracking.Setting(False, "command line")
    monkeypatch.setenv(tracking.ENV, "maybe")
    with pytest.warns(tracking.TrackingWarning, match="neither on nor off"):
        assert tracking.setting(tmp_path) == tracking.Setting(False, "dashboard")


def test_off_touches_no_store(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = tracking.start(tmp_path, name="x", kind="training", params={}, synthetic=True, flag=False)
    assert not run.active and run.entry == {}
    run.log_metrics({"val_acc": 1.0}, step=1)  # a no-op, not an error
    assert not (tmp_path / "mlflow").exists()


def test_metric_names_keep_to_what_mlflow_accepts() -> None:
    assert tracking.metric_key("m/PGD-10 ε=4/255 (L∞)/accuracy") == "m/PGD-10 eps 4/255 _Linf_/accuracy"


def test_models_page_links_runs_and_switches_tracking(
    tracked: Tracked, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LUNGLAB_RUNS_DIR", str(tracked.runs))
    monkeypatch.delenv(tracking.ENV, raising=False)
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("views/models.py").run()
    assert not at.exception
    entry = read_status(tracked.run_dir)["tracking"]
    link = tracking.run_link(entry)
    assert link and link.endswith(f"/#/experiments/{entry['experiment_id']}/runs/{entry['run_id']}")
    table = at.dataframe[0].value
    assert table.loc[table["run"] == tracked.run_dir.name, "MLflow"].tolist() == [link]
    buttons = [element.proto for element in at.get("link_button")]
    assert [(button.label, button.url) for button in buttons] == [("Open in MLflow", link)]
    at.toggle(key="models:tracking").set_value(False).run()
    assert tracking.setting(tracked.runs) == tracking.Setting(False, "dashboard")
