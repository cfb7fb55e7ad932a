"""The demo: a shrunk recipe prepared through the real command line, its record, and its story scan.

The full CPU recipe takes minutes (``bench/demo.py`` measures it); here the same code runs a recipe
shrunk to a small phantom, which must still learn (a trained classifier, above the majority rate).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from pipeline.__main__ import main
from pipeline.constants import CLASSES
from dashboard.ui.session import RUN_KEY
from pipeline.demo import DEMO_FILE, RECIPES, DemoRecipe, default_recipe, read_demo
from pipeline.demo.background import demo_job_dir
from pipeline.demo.core import STORY_CLASS
from pipeline.data import DataSpec, preprocess_image, same_data
from pipeline.data.dataset import PHANTOM_RENDER_SIZE
from pipeline.data.phantom import PHANTOM_VERSION, render_slice
from pipeline.demo.core import held_out_attacks, measure_pair, verdicts
from pipeline.demo.shipped import (
    MANIFEST,
    SHIPPED_DIR,
    SHIPPED_RECIPE,
    StaleShippedDemo,
    install_shipped,
    ship,
    verify_shipped,
)
from pipeline.evaluation.profile import validation_profile
from pipeline.errors import CheckpointError
from pipeline.evaluation.data import run_data
from pipeline.evaluation.robustness import evaluate
from pipeline.jobs import cancel_job, job_state
from pipeline.store import MODEL, load_model, load_tensors, read_record
from tests.dashboard_helpers import run_until

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")

#: The CPU recipe shrunk: 64 px, 600 scans, a few epochs, PGD-1 fine-tuning, PGD-3 to check.
SHRUNK = DemoRecipe(
    name="shrunk",
    preset="quick",
    standard={
        "image_size": 64, "count": 600, "val_fraction": 0.15, "test_fraction": 0.15, "epochs": 6,
        "batch_size": 16, "lr": 2e-3, "schedule": "cosine", "augment": False, "val_steps": 1, "eval_size": 16,
    },
    robust={"strategy": "pgd", "eps": 2 / 255, "steps": 1, "alpha": 2.5 / 255, "epochs": 1, "lr": 2e-4,
            "val_steps": 1},
    minutes=2.0,
    machine="one CPU core",
    shares=(0.5, 0.2, 0.3),
    eval_steps=3,
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The shrunk demo prepared once through ``python -m pipeline demo``; returns its runs and output."""
    runs = tmp_path_factory.mktemp("demo") / "runs"
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(RECIPES, SHRUNK.name, SHRUNK)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(["demo", "--train", "--runs-dir", str(runs), "--recipe", SHRUNK.name, "--quiet"]) == 0
    return runs, printed.getvalue()


@pytest.mark.slow
def test_the_command_trains_two_runs_and_prints_them(prepared: tuple[Path, str]) -> None:
    runs, printed = prepared
    demo = read_demo(runs)
    assert demo is not None and demo.recipe == SHRUNK.name
    standard, robust = (read_record(model.run_dir) for model in demo.models)
    assert standard.config["strategy"] == "standard"
    assert robust.config["strategy"] == "pgd" and robust.config["init_from"] == str(demo.standard.run_dir)
    assert standard.config["split"] == robust.config["split"]  # one held-out split for both
    assert str(demo.standard.run_dir) in printed and str(demo.robust.run_dir) in printed
    assert "| standard |" in printed and "| robust |" in printed and "not medical results" in printed
    assert "PGD-3 2/255" in printed and "PGD-3 8/255" in printed


@pytest.mark.slow
def test_the_shrunk_recipe_learns(prepared: tuple[Path, str]) -> None:
    demo = read_demo(prepared[0])
    assert demo is not None
    standard = demo.standard
    assert standard.trained, standard.verdict  # above the majority-class rate's interval, every class given
    # a standard model has nothing to hold at 8/255; the large budget flips nearly every scan
    assert standard.robust[8 / 255] < standard.clean / 2
    # whatever the one-epoch fine-tuning gives, the record says whether it is a trained classifier
    robust = demo.robust
    assert robust.trained == ("not a trained classifier" not in robust.verdict)


@pytest.mark.slow
def test_the_story_scan_is_a_malignant_test_scan_the_page_can_find(prepared: tuple[Path, str]) -> None:
    demo = read_demo(prepared[0])
    assert demo is not None and demo.showcase is not None, demo.story
    record = read_record(demo.standard.run_dir)
    dataset, split = run_data(record)
    malignant = split.test[dataset.labels[split.test] == CLASSES.index(STORY_CLASS)]
    # the Attack page lists malignant test scans in split order; the rank points at the story scan
    assert malignant[demo.showcase_rank - 1] == demo.showcase
    assert STORY_CLASS in demo.story


@pytest.mark.slow
def test_a_damaged_or_dangling_record_is_named_not_trusted(prepared: tuple[Path, str], tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(prepared[0], runs)
    record = json.loads((runs / DEMO_FILE).read_text())

    (runs / DEMO_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="prepare the demo again"):
        read_demo(runs)

    escaping = {**record, "robust": {**record["robust"], "run": "../elsewhere"}}
    (runs / DEMO_FILE).write_text(json.dumps(escaping))
    with pytest.raises(CheckpointError, match="not a plain directory name"):
        read_demo(runs)

    (runs / DEMO_FILE).write_text(json.dumps(record))
    shutil.rmtree(runs / record["robust"]["run"])
    assert read_demo(runs) is None  # a deleted demo run leaves no pair to show


def test_an_unknown_recipe_is_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["demo", "--train", "--runs-dir", str(tmp_path), "--recipe", "laptop"])
    assert stopped.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_every_recipe_describes_what_it_trains() -> None:
    for recipe in RECIPES.values():
        text = recipe.describe()
        standard, robust = recipe.configs()
        assert f"{standard.data.count:,} synthetic phantom scans" in text
        assert f"{standard.epochs} epochs" in text and f"for {robust.epochs} epochs" in text
        assert np.isclose(sum(recipe.shares), 1.0)


# ------------------------------------------------------------------------------- the dashboard
def attack_page(runs: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """The app on its default page, the Attack page, over the run store ``runs``."""
    monkeypatch.setenv("LUNGLAB_RUNS_DIR", str(runs))
    return AppTest.from_file(APP, default_timeout=120).run()


def test_the_no_model_card_offers_the_shipped_demo_and_retraining(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = attack_page(tmp_path, monkeypatch)  # LUNGLAB_DEMO=off (conftest): the store stays empty
    assert not at.exception and not at.error
    recipe = RECIPES[default_recipe()]
    assert at.button(key="demo:install").label == "Open the demo (ready in seconds)"
    assert at.button(key="demo:start").label == (
        f"Retrain the demo yourself (about {recipe.minutes:.0f} minutes on {recipe.machine}; longer on a busy "
        "machine)"
    )
    card = " ".join(item.value for item in at.caption)
    assert "ship with the lab" in card and "synthetic phantom" in card and "not medical models" in card
    at.button(key="demo:install").click().run()  # the real shipped files, copied in seconds
    assert not at.exception and not at.error
    demo = read_demo(tmp_path)
    assert demo is not None and demo.recipe == SHIPPED_RECIPE
    assert at.session_state[RUN_KEY] == str(demo.standard.run_dir)
    assert not job_state(demo_job_dir(tmp_path)).running and job_state(demo_job_dir(tmp_path)).phase != "queued"


@pytest.mark.slow
def test_the_card_prepares_the_demo_as_one_background_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = attack_page(tmp_path, monkeypatch)
    at.button(key="demo:start").click().run()
    job = demo_job_dir(tmp_path)
    try:
        assert job_state(job).running or job_state(job).phase == "queued"
        run_until(at, lambda app: job_state(job).running)
        at.run()
        assert any("two models are being trained" in item.value for item in at.info)
        assert at.button(key="demo:job:cancel").label == "Cancel the demo preparation"
    finally:
        cancel_job(job)
    run_until(at, lambda app: not job_state(job).running)
    assert job_state(job).phase == "cancelled"
    assert not (tmp_path / DEMO_FILE).exists()  # nothing half-made is offered as the demo


@pytest.mark.slow
def test_a_ready_demo_opens_the_attack_page_on_its_story(
    prepared: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(prepared[0], runs)
    demo = read_demo(runs)
    assert demo is not None and demo.showcase_rank is not None
    at = attack_page(runs, monkeypatch)
    assert not at.exception and not at.error
    # both models side by side, on the story scan, with PGD at 2/255: one click from the story
    assert at.session_state[RUN_KEY] == str(demo.standard.run_dir)
    assert at.selectbox(key="attack:compare").value == str(demo.robust.run_dir)
    assert at.selectbox(key="attack:class").value == STORY_CLASS
    assert at.slider(key="attack:position").value == demo.showcase_rank
    assert at.selectbox(key="attack:name").value == "pgd"
    assert at.slider(key="attack:pgd:eps").value == pytest.approx(2.0)
    assert at.number_input(key="attack:pgd:steps").value == demo.eval_steps
    # a run that draws other widgets (here the Data page's) makes Streamlit forget the attack's; coming back,
    # the story's attack is still chosen, as a setting the person chose would be
    at.switch_page("views/data.py").run()
    at.switch_page("views/attack.py").run()
    assert not at.exception and at.selectbox(key="attack:name").value == "pgd"
    assert at.slider(key="attack:pgd:eps").value == pytest.approx(2.0)
    assert at.number_input(key="attack:pgd:steps").value == demo.eval_steps
    # the story and the two models' held-out figures, labelled synthetic
    panel = at.expander[0]
    assert panel.label.startswith("The demo: a standard and a robust model")
    shown = " ".join(item.value for item in panel.markdown)
    assert demo.story in shown and demo.robust.run_dir.name in shown and "PGD-" in shown
    assert "not a medical result" in " ".join(item.value for item in panel.caption)
    at.button(key="attack:run").click().run()
    run_until(at, lambda app: "attack.task" not in app.session_state
              and "attack.result" in app.session_state)
    assert not at.exception and not at.error
    _, reports = at.session_state["attack.result"]
    assert [title for title, _ in reports] == [demo.standard.run_dir.name, demo.robust.run_dir.name]
    malignant = CLASSES.index(STORY_CLASS)
    assert all(report.label == malignant and report.label_known for _, report in reports)
    assert int(np.argmax(reports[0][1].probs_clean)) == malignant  # the standard model reads it correctly
    # a second visit keeps what the person chose since: the story is set up once per demo
    at.selectbox(key="attack:name").set_value("fgsm").run()
    assert at.selectbox(key="attack:name").value == "fgsm"


# ------------------------------------------------------------------------- the shipped demo
@pytest.fixture(scope="module")
def shipped(prepared: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shrunk demo written as shipped files (half-precision weights, profiles, scans, manifest)."""
    dest = tmp_path_factory.mktemp("shipping") / "shipped"
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(RECIPES, SHRUNK.name, SHRUNK)
        ship(prepared[0], dest)
    return dest


@pytest.fixture
def shrunk_known(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shrunk recipe is one this code has (as ``cpu`` is for the real shipped files)."""
    monkeypatch.setitem(RECIPES, SHRUNK.name, SHRUNK)


def _no_loading(*args: object, **kwargs: object) -> None:
    raise AssertionError("the shipped profile should have been used, not computed from the scans")


@pytest.mark.slow
def test_shipped_files_install_as_runs_that_need_no_fitting(
    shipped: Path, shrunk_known: None, tmp_path: Path
) -> None:
    manifest = json.loads((shipped / MANIFEST).read_text())
    assert manifest["synthetic"] is True and manifest["phantom_version"] == PHANTOM_VERSION
    assert manifest["precision"] == "float16" and manifest["recipe"] == SHRUNK.name
    assert manifest["trained_at_commit"] != "" and set(manifest["runs"]) == {"standard", "robust"}
    tensors, _ = load_tensors(shipped / "standard" / MODEL)
    assert {tensor.dtype for tensor in tensors.values() if tensor.is_floating_point()} == {torch.float16}
    status = json.loads((shipped / "robust" / "status.json").read_text())
    assert "job" not in status and "tracking" not in status  # nothing of the machine that trained it
    assert json.loads((shipped / "robust" / "config.json").read_text())["init_from"] == manifest["runs"]["standard"]

    demo = install_shipped(tmp_path, shipped)
    assert read_demo(tmp_path) == demo and demo.to_dict() == manifest["demo"]
    for role, model_entry in zip(("standard", "robust"), demo.models):
        assert model_entry.run_dir == tmp_path / manifest["runs"][role]
        model, record = load_model(model_entry.run_dir)  # widened to float32 on load
        assert next(model.parameters()).dtype == torch.float32 and record.config["data"] == manifest["data"]
        validation_profile(model_entry.run_dir, model, load=_no_loading)  # precomputed: nothing is fitted
    assert install_shipped(tmp_path, shipped) == demo  # installing again reuses the same runs


@pytest.mark.slow
def test_shipped_figures_are_measured_on_the_stored_weights(
    shipped: Path, shrunk_known: None, tmp_path: Path
) -> None:
    demo = install_shipped(tmp_path, shipped)
    again = measure_pair(demo.standard.run_dir, demo.robust.run_dir, recipe=SHRUNK.name,
                         seconds=(demo.standard.seconds, demo.robust.seconds), device="cpu")
    for shipped_model, measured in zip(demo.models, again.models):
        assert measured.clean == shipped_model.clean and measured.recall == shipped_model.recall
        for eps, accuracy in shipped_model.robust.items():
            assert abs(measured.robust[eps] - accuracy) <= 1 / shipped_model.test_scans + 1e-9
            recorded, found = shipped_model.outcomes[eps], measured.outcomes[eps]  # kept scan by scan
            assert len(recorded) == shipped_model.test_scans and sum(a != b for a, b in zip(recorded, found)) <= 1
    assert again.showcase_rank is not None


@pytest.mark.slow
def test_a_damaged_missing_or_stale_shipped_demo_is_named_and_installs_nothing(
    shipped: Path, shrunk_known: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "shipped"
    shutil.copytree(shipped, broken)
    runs = tmp_path / "runs"
    weights = broken / "robust" / MODEL
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"robust/model\.safetensors is damaged.*retrain the demo"):
        install_shipped(runs, broken)
    weights.unlink()
    with pytest.raises(CheckpointError, match=r"robust/model\.safetensors is missing"):
        install_shipped(runs, broken)
    assert not runs.exists() or not any(runs.iterdir())  # nothing half-installed

    shutil.rmtree(broken)
    shutil.copytree(shipped, broken)
    manifest = json.loads((broken / MANIFEST).read_text())
    (broken / MANIFEST).write_text(json.dumps({**manifest, "phantom_version": PHANTOM_VERSION - 1}))
    with pytest.raises(StaleShippedDemo, match=f"phantom version {PHANTOM_VERSION - 1}"):
        install_shipped(runs, broken)
    (broken / MANIFEST).write_text(json.dumps(manifest))
    monkeypatch.setitem(RECIPES, SHRUNK.name, dataclasses.replace(SHRUNK, standard={**SHRUNK.standard, "epochs": 9}))
    with pytest.raises(StaleShippedDemo, match=r"recipe changed.*standard\.epochs"):
        verify_shipped(broken)
    (broken / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="the shipped demo is missing"):
        install_shipped(runs, broken)
    assert not runs.exists() or not any(runs.iterdir())


# -------------------------------------------------------------- the files that really ship
def test_the_shipped_demo_is_current_complete_and_small() -> None:
    """Fails when the phantom version or the cpu recipe changed and the shipped files were not regenerated
    (python -m pipeline demo --ship), or when a shipped file is missing or damaged."""
    manifest = verify_shipped()
    assert manifest["recipe"] == SHIPPED_RECIPE and manifest["synthetic"] is True
    weights = sum((SHIPPED_DIR / role / MODEL).stat().st_size for role in ("standard", "robust"))
    assert weights <= 50 * 2**20
    demo = manifest["demo"]
    assert demo["showcase"] is not None, demo["story"]  # the story scan exists


def test_the_shipped_scans_are_the_ones_the_phantom_renders() -> None:
    manifest = verify_shipped()
    spec = DataSpec.from_dict(manifest["data"])
    with np.load(SHIPPED_DIR / "scans.npz", allow_pickle=False) as arrays:
        images, labels = arrays["images"], arrays["labels"]
    assert images.shape == (spec.count, spec.image_size, spec.image_size)
    for index in (0, 1, 2, 997, spec.count - 1):
        rendered = render_slice(int(labels[index]), np.random.default_rng([spec.seed, index]), PHANTOM_RENDER_SIZE)
        assert np.array_equal(preprocess_image(rendered, spec.image_size), images[index]), index


#: Held-out scans on which PGD is re-run against the manifest's per-scan verdicts: the split's first
#: batch, batched as the manifest's measurement batched it (so with the same random starts).
RECHECKED_SCANS = 32


@pytest.mark.slow
def test_the_shipped_models_reproduce_their_manifest(tmp_path: Path) -> None:
    """Clean figures exactly on every held-out scan; PGD scan by scan on the first batch, within one
    scan, and every PGD figure is the share of its recorded per-scan verdicts."""
    demo = install_shipped(tmp_path)
    for shipped in demo.models:
        model, record = load_model(shipped.run_dir, device="cpu")
        dataset, split = run_data(record)
        clean = evaluate(model, dataset, split.test, [])
        assert clean.clean.accuracy == shipped.clean  # exactly: the same weights on the same scans
        assert tuple(clean.clean.recall) == shipped.recall and not clean.trained.flagged and shipped.trained
        again = evaluate(model, dataset, split.test[:RECHECKED_SCANS], held_out_attacks(demo.eval_steps))
        for (eps, accuracy), attack in zip(shipped.robust.items(), again.attacks):
            recorded = shipped.outcomes[eps]
            assert len(recorded) == shipped.test_scans and recorded.count("1") == round(accuracy * len(recorded))
            measured = verdicts(attack.outcome.correct)
            assert sum(a != b for a, b in zip(measured, recorded)) <= 1, (shipped.role, eps, measured, recorded)


def test_installed_demo_runs_know_their_scans_by_identity_not_by_this_cache(tmp_path: Path) -> None:
    """The shipped records name their scans by the shipped pixels' fingerprint alone. Installed, they also
    carry the phantom set's identity, so the phantom rendered anew (a cleared cache, another cache folder;
    on another CPU a few pixels differ by a grey level) is still their data."""
    runs = tmp_path / "runs"
    demo = install_shipped(runs)
    dataset, _ = run_data(read_record(demo.standard.run_dir))
    rendered_elsewhere = {**dataset.record(), "fingerprint": "another CPU's pixels"}
    for model in demo.models:
        shipped = json.loads((SHIPPED_DIR / model.role / "config.json").read_text())["dataset"]
        stored = read_record(model.run_dir).config["dataset"]
        assert "identity" not in shipped and stored == {**shipped, "identity": dataset.identity}
        assert same_data(stored, rendered_elsewhere) and not same_data(shipped, rendered_elsewhere)
    # a demo installed before this fix keeps its runs; installing again gives their records the identity
    (demo.robust.run_dir / "config.json").write_text((SHIPPED_DIR / "robust" / "config.json").read_text())
    assert install_shipped(runs) == demo
    assert same_data(read_record(demo.robust.run_dir).config["dataset"], rendered_elsewhere)


def test_the_command_installs_the_shipped_demo_without_training(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["demo", "--runs-dir", str(tmp_path), "--quiet"]) == 0
    printed = capsys.readouterr().out
    demo = read_demo(tmp_path)
    assert demo is not None and "nothing was trained now" in printed and "| standard |" in printed
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [DEMO_FILE, demo.standard.run_dir.name, demo.robust.run_dir.name]
    )
