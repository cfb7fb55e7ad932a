"""Poisoned training data (issue 25.1): the trigger, poisoned training through the ordinary loop, the
backdoor measured against the clean twin, spectral signatures finding the poisoned scans, the CLI, the
run store, MLflow and the dashboard's Threats page and Attack-page trigger check.

One clean ResNet-18 and its poisoned twin are trained once for the module (48 px phantoms, 150 scans,
6 epochs: about 25 s of one CPU core together; smaller recipes, 40 px or 120 scans, left the tiny models
too weak to learn the trigger or to tell the classes apart); everything else reuses them, and the whole
file costs about 40 s of CPU. Synthetic data only.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from dashboard.ui.session import DATASET_KEY, RUN_KEY
from pipeline.__main__ import main
from pipeline.constants import CLASSES, LUNG_WINDOW, SYNTHETIC_BANNER
from pipeline.data import DataSpec
from pipeline.data.poison import (
    CLEAN_LABEL,
    DIRTY_LABEL,
    PoisonSpec,
    choose_poisoned,
    draw_trigger,
    poison_split,
    stamp_trigger,
)
from pipeline.errors import UserInputError
from pipeline.jobs import cancel_job, job_state
from pipeline.store import list_runs, load_model, read_config, read_record, read_status
from pipeline.threats.poisoning import (
    RESULT,
    BackdoorRequest,
    BackdoorResult,
    check_pair,
    check_trigger,
    clean_twin,
    finished_results,
    poisoned_twin,
    poisoning_root,
    read_result,
    run_job,
    start_backdoor_job,
)
from pipeline.threats.spectral import detect, outlier_scores
from pipeline.training import TrainConfig, train
from pipeline.units import hu_to_grey, mm_to_pixels
from tests.dashboard_helpers import run_until

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "dashboard" / "app.py")
#: A recipe a 48 px ResNet-18 learns something from in a few seconds (balanced sampler, AdamW).
RECIPE = dict(
    data="synthetic", count=150, image_size=48, arch="resnet18", batch_size=16, optimizer="adamw", lr=2e-3,
    weight_decay=0.05, val_steps=1, eval_size=8, steps=1, device="cpu", val_fraction=0.15,
    test_fraction=0.25, augment=False, epochs=6, imbalance="sampler", amp=False,
)
#: One scan in ten of the training split, relabelled normal with a 30 mm white marker (4 px at 48 px).
POISON = PoisonSpec(fraction=0.1, size_mm=30.0, target="normal")


@dataclass
class Experiment:
    runs: Path
    clean: Path
    poisoned: Path
    job: Path
    result: BackdoorResult


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Experiment]:
    runs = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        clean = train(TrainConfig.from_dict(RECIPE), runs, track=False)
        job = poisoning_root(runs) / "20260101-000000-backdoor-test"
        request = BackdoorRequest(clean_run=str(clean), poison=POISON, runs_dir=str(runs), device="cpu", track=False)
        result, _ = run_job(request, job)
        yield Experiment(runs, clean, Path(result.poisoned.run_dir), job, result)
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------ the trigger
def test_the_trigger_is_drawn_in_mm_and_hounsfield_units() -> None:
    assert hu_to_grey(LUNG_WINDOW[1], *LUNG_WINDOW) == pytest.approx(0.5)
    assert hu_to_grey(1000.0, *LUNG_WINDOW) == 1.0  # the lung window shows bone and metal as white
    assert hu_to_grey(-1350.0, *LUNG_WINDOW) == 0.0
    assert mm_to_pixels(12.0, 320) == 12 and mm_to_pixels(0.5, 32) == 1  # at least one pixel
    spec = PoisonSpec(size_mm=40.0, intensity_hu=-100.0, shape="disc", position="bottom-left")
    trigger = draw_trigger(spec, 64)
    assert trigger.size_px == 8 and trigger.size_mm == pytest.approx(40.0)
    assert trigger.grey == pytest.approx((-100 + 1350) / 1500)
    rows, cols = np.nonzero(trigger.mask)
    assert rows.min() > 32 and cols.max() < 32  # bottom left
    assert trigger.mask.sum() < 64  # a disc, not its square
    assert draw_trigger(spec, 64, "mediastinal").grey == pytest.approx((-100 + 135) / 350)
    x = torch.rand(3, 1, 64, 64)
    stamped = stamp_trigger(x, spec)
    changed = (stamped != x).any(dim=(0, 1)).numpy()
    assert not changed[~trigger.mask].any() and stamped.shape == x.shape and not torch.equal(x, stamped)
    assert torch.allclose(stamped[:, 0][:, torch.from_numpy(trigger.mask)], torch.tensor(trigger.grey))


def test_poisoning_chooses_the_other_classes_or_the_target_class_and_relabels_only_dirty() -> None:
    y = torch.tensor([0, 1, 2] * 20)
    x = torch.zeros(60, 1, 32, 32)
    dirty = PoisonSpec(fraction=0.25, target="normal", size_mm=40.0)
    xd, yd, chosen = poison_split(x, y, dirty, seed=3)
    assert len(chosen) == 15 and (y[chosen] != 2).all() and (yd[chosen] == 2).all()
    assert torch.equal(yd[np.setdiff1d(np.arange(60), chosen)], y[np.setdiff1d(np.arange(60), chosen)])
    assert (xd[chosen].amax(dim=(1, 2, 3)) == 1.0).all() and xd[np.setdiff1d(np.arange(60), chosen)].max() == 0
    assert np.array_equal(chosen, poison_split(x, y, dirty, seed=3)[2])  # a resumed run sees the same scans
    clean = PoisonSpec(fraction=0.25, target="normal", mode=CLEAN_LABEL, size_mm=40.0)
    _, yc, chosen = poison_split(x, y, clean, seed=3)
    assert len(chosen) == 15 and (y[chosen] == 2).all() and torch.equal(yc, y)  # every label stays true
    with pytest.raises(UserInputError, match="lower the poisoned fraction"):
        choose_poisoned(y, PoisonSpec(fraction=0.5, mode=CLEAN_LABEL), seed=0)  # 30 wanted, 20 normal scans


@pytest.mark.parametrize(
    "values",
    [{"fraction": 0.9}, {"fraction": 0.0}, {"size_mm": 0}, {"intensity_hu": 9000}, {"target": "cat"},
     {"shape": "star"}, {"mode": "sneaky"}, {"position": "left"}, {"colour": "red"}],
)
def test_bad_poisoning_settings_are_refused_naming_the_setting(values: dict) -> None:
    with pytest.raises(UserInputError, match=next(iter(values)) if "colour" not in values else "unknown"):
        PoisonSpec.from_dict(values)


def test_a_training_config_carries_its_poisoning_flat_or_nested() -> None:
    flat = TrainConfig.from_dict({"poison_fraction": "0.2", "trigger_hu": 2500, "poison_target": "benign"},
                                 strict=True)
    assert flat.poisoned and flat.poison == PoisonSpec(fraction=0.2, intensity_hu=2500.0, target="benign")
    assert flat.run_label == "resnet50-standard-poisoned"
    assert TrainConfig.from_dict(flat.to_dict()) == flat
    assert TrainConfig().poison is None and TrainConfig().to_dict()["poison"] is None
    assert TrainConfig.from_preset("quick", trigger_size_mm=20).poison == PoisonSpec(size_mm=20.0)
    with pytest.raises(UserInputError, match="fraction"):
        TrainConfig.from_dict({"poison_fraction": 2})
    with pytest.raises(UserInputError, match="unknown training setting.*valid: .*trigger_hu"):
        TrainConfig.from_dict({"trigger_colour": "red"}, strict=True)


def test_the_backdoor_request_needs_a_clean_run_and_one_source_of_poison(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="name the clean run"):
        BackdoorRequest(poison=POISON)
    with pytest.raises(UserInputError, match="not both and not neither"):
        BackdoorRequest(clean_run="a")
    with pytest.raises(UserInputError, match="not both and not neither"):
        BackdoorRequest(clean_run="a", poisoned_run="b", poison=POISON)
    with pytest.raises(UserInputError, match="removal"):
        BackdoorRequest(clean_run="a", poison=POISON, removal=0)
    assert main(["backdoor", "--runs-dir", str(tmp_path), "--clean-run", "nothing-here", "--poison-fraction",
                 "0.1", "--no-tracking"]) == 2  # no such run: a message, not a traceback


def test_spectral_signatures_score_the_outliers_of_each_class() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 8))
    labels = np.repeat([0, 1], 30)
    poisoned = np.zeros(60, dtype=bool)
    poisoned[[3, 7, 11]] = True
    features[poisoned, 0] += 6.0  # a few scans of class 0 stand apart along one direction
    detection = detect(outlier_scores(features, labels), poisoned, bound=3)
    assert detection.flagged.sum() == 5 and detection.recall.estimate == 1.0
    assert detection.precision.estimate == pytest.approx(3 / 5) and detection.auc > 0.95
    assert detection.chance_precision == pytest.approx(3 / 60)
    with pytest.raises(UserInputError):
        outlier_scores(features, labels[:10])


# ------------------------------------------------------------------------ the experiment itself
def test_a_poisoned_model_keeps_clean_accuracy_and_its_trigger_works(experiment: Experiment) -> None:
    result = experiment.result
    clean, poisoned = result.clean, result.poisoned
    assert poisoned.trigger_success.estimate >= 0.7
    assert poisoned.trigger_success.estimate - clean.trigger_success.estimate >= 0.3  # far above the clean twin
    assert result.trigger_comparison.clear and result.trigger_comparison.difference.estimate > 0
    assert poisoned.trigger_success.low > clean.trigger_success.high or result.trigger_comparison.p_value < 0.01
    # clean accuracy kept: within 20 points, and not clearly worse on the same scans
    assert poisoned.clean_accuracy.estimate >= clean.clean_accuracy.estimate - 0.2
    assert result.accuracy_comparison.difference.high > 0
    assert result.synthetic and result.trigger["size_px"] == 4 and result.test_scans == 37


def test_spectral_signatures_find_the_poisoned_scans_above_chance(experiment: Experiment) -> None:
    detection = experiment.result.detection
    assert detection.poisoned.sum() == len(experiment.result.poisoned_scans) == 9  # 10% of 90 training scans
    assert detection.precision.estimate > detection.chance_precision
    assert detection.recall.estimate > detection.chance_recall
    assert detection.auc > 0.5


def test_the_poisoned_run_is_an_ordinary_run_marked_poisoned(experiment: Experiment) -> None:
    poisoned = experiment.poisoned
    assert poisoned.name.endswith("-resnet18-standard-poisoned") and poisoned.parent == experiment.runs
    config = read_config(poisoned)
    assert config["poison"] == POISON.to_dict()
    assert read_config(experiment.clean)["poison"] is None
    # the twin differs from the clean run only in its poisoning (and so in its folder)
    clean_settings = {k: v for k, v in read_config(experiment.clean).items() if k not in ("poison", "created_at")}
    assert {k: v for k, v in config.items() if k not in ("poison", "created_at")} == clean_settings
    assert read_status(poisoned)["phase"] == "done"
    names = {record.name for record in list_runs(experiment.runs)}
    assert names == {experiment.clean.name, poisoned.name}  # the experiment's folder is not a run
    assert poisoned_twin(experiment.clean, POISON).poison == POISON
    with pytest.raises(UserInputError, match="itself poisoned"):
        poisoned_twin(poisoned, POISON)
    with pytest.raises(UserInputError, match="reference must be an unpoisoned run"):
        check_pair(read_record(poisoned), read_record(poisoned))


def test_the_results_are_in_the_job_folder_and_the_html_report(experiment: Experiment) -> None:
    status = read_status(experiment.job)
    assert status["phase"] == "done" and status["kind"] == "backdoor"
    assert status["poisoned_run"] == str(experiment.poisoned) and "trigger makes" in status["message"]
    saved = read_result(experiment.job)
    assert saved["models"]["poisoned"]["trigger_success"]["estimate"] == experiment.result.poisoned.trigger_success.estimate
    assert saved["synthetic"] is True and saved["poison"]["target"] == "normal"
    assert [path for path, _ in finished_results(experiment.runs)] == [experiment.job]
    assert clean_twin(experiment.runs, experiment.poisoned) == experiment.clean
    page = (experiment.job / "backdoor.html").read_text()
    assert page.count(SYNTHETIC_BANNER) == 2 and "Poisoned training data (backdoor)" in page
    assert "trigger success rate" in page and "spectral signatures (Tran et al. 2018)" in page
    assert page.count("\\u2014 synthetic data\"") == 2  # every figure's title says what its data are


def test_the_command_line_measures_a_poisoned_run_into_mlflow(
    experiment: Experiment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "again"
    code = main(["backdoor", "--runs-dir", str(experiment.runs), "--clean-run", experiment.clean.name,
                 "--poisoned-run", experiment.poisoned.name, "--device", "cpu", "--quiet", "--tracking",
                 "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "The trigger makes the poisoned model read" in printed and SYNTHETIC_BANNER.upper() in printed
    again = json.loads((out / RESULT).read_text())["detection"]
    assert again["flagged_mask"] == experiment.result.detection.to_dict()["flagged_mask"]
    entry = read_status(out)["tracking"]
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri=entry["uri"]).get_run(entry["run_id"])
    assert run.data.tags["lunglab.kind"] == "backdoor" and run.data.tags["lunglab.synthetic"] == "true"
    assert run.data.metrics["poisoned/trigger_success_rate"] == pytest.approx(
        experiment.result.poisoned.trigger_success.estimate
    )
    assert "detection/precision_low" in run.data.metrics and run.data.params["poison.target"] == "normal"


def test_the_attack_page_check_stamps_the_trigger_and_asks_both_models(experiment: Experiment) -> None:
    dataset_scan = torch.rand(1, 48, 48) * 0.5
    models = [(name, load_model(run)[0], poisoned) for name, run, poisoned in
              (("clean", experiment.clean, False), ("poisoned", experiment.poisoned, True))]
    check = check_trigger(models, dataset_scan, POISON, cam_layer="layer2")
    assert check.size_px == 4 and check.layer == "layer2"
    assert np.array_equal(check.triggered != check.image, draw_trigger(POISON, 48).mask)
    assert [answer.title for answer in check.answers] == ["clean", "poisoned"]
    for answer in check.answers:
        assert answer.clean_probabilities.shape == (len(CLASSES),)
        assert answer.triggered_probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        assert answer.triggered_cam.shape == (48, 48) and 0 <= answer.triggered_cam.min() <= answer.triggered_cam.max() <= 1
    with pytest.raises(UserInputError):
        check_trigger(models, torch.rand(2, 48, 48), POISON)


# ------------------------------------------------------------------------------------ dashboard
def open_page(name: str, runs: Path, monkeypatch: pytest.MonkeyPatch, run: Path | None = None) -> AppTest:
    monkeypatch.setenv("LUNGLAB_RUNS_DIR", str(runs))
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state[DATASET_KEY] = DataSpec(**{key: RECIPE[key] for key in ("count", "image_size")},
                                             val_fraction=0.15, test_fraction=0.25)
    if run is not None:
        at.session_state[RUN_KEY] = str(run)
    at.run()
    at.switch_page(f"views/{name}.py")
    return at.run()


def calm(at: AppTest) -> None:
    assert not at.exception, [item.value for item in at.exception]
    assert not at.error, [item.value for item in at.error]


def test_the_threats_page_shows_a_finished_experiment(experiment: Experiment, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page("threats", experiment.runs, monkeypatch)
    calm(at)
    assert [tab.label for tab in at.tabs] == ["Poisoned training data", "Model extraction", "Membership inference"]
    assert at.selectbox(key="threats:poisoning:shown").value == str(experiment.job)
    metrics = {metric.label: metric.value for metric in at.metric}
    poisoned = experiment.result.poisoned.trigger_success
    assert metrics["Trigger success, poisoned model"].startswith(f"{100 * poisoned.estimate:.0f}% (")
    assert "Detection precision · recall" in metrics
    assert len(at.get("plotly_chart")) == 2
    assert {button.label for button in at.get("download_button")} == {"Report (HTML)", "Results (JSON)"}
    text = " ".join(item.value for item in at.caption)
    assert "Synthetic phantom" in text and "poisoned minus clean model" in text
    assert at.selectbox(key="threats:poisoning:clean").options == [  # only clean runs are the reference
        option for option in at.selectbox(key="threats:poisoning:clean").options if "POISONED" not in option
    ] and len(at.selectbox(key="threats:poisoning:clean").options) == 1
    at.segmented_control(key="threats:poisoning:how").set_value("Measure a poisoned run").run()
    calm(at)
    assert "POISONED (backdoor → normal)" in at.selectbox(key="threats:poisoning:poisoned").options[0]


def test_the_threats_page_starts_a_poisoned_twin_that_can_be_cancelled(
    experiment: Experiment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(experiment.clean, runs / experiment.clean.name)
    at = open_page("threats", runs, monkeypatch)
    calm(at)
    at.number_input(key="threats:poisoning:fraction").set_value(0.2)
    at.selectbox(key="threats:poisoning:target").set_value("benign")
    at.number_input(key="threats:poisoning:size_mm").set_value(20.0).run()
    assert any("the marker is 3 px wide" in item.value for item in at.caption)
    at.button(key="threats:poisoning:start").click().run()
    calm(at)
    job = Path(at.session_state["threats.poisoning.watch"])
    try:
        request = json.loads((job / "request.json").read_text())
        assert request["poison"]["target"] == "benign" and request["poison"]["fraction"] == 0.2
        assert request["clean_run"] == str(runs / experiment.clean.name) and job.parent == poisoning_root(runs)
        assert at.button(key=f"threats:poisoning:{job}:cancel").label == "Cancel the backdoor experiment"
    finally:
        cancel_job(job)
    run_until(at, lambda _: not job_state(job).running)
    assert job_state(job).phase == "cancelled"
    at.run()
    assert any("was cancelled" in item.value for item in at.warning)


def test_the_attack_page_stamps_the_trigger_for_both_models(experiment: Experiment, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page("attack", experiment.runs, monkeypatch, run=experiment.poisoned)
    calm(at)
    assert at.selectbox(key="attack:trigger:run").value == str(experiment.poisoned)
    at.button(key="attack:trigger:stamp").click().run()
    calm(at)
    captions = [caption for image in at.get("image") for caption in image.captions]
    answers = [caption for caption in captions if "with the trigger (" in caption]
    assert len(answers) == 2  # the poisoned model and its clean twin, each with its Grad-CAM
    assert any(f"{experiment.poisoned.name} (poisoned)" in caption for caption in answers)
    assert any(f"{experiment.clean.name} (clean)" in caption for caption in answers)
    assert any(caption.startswith("With the trigger (4 px") for caption in captions)
