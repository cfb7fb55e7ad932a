"""The demo: a shrunk recipe prepared through the real command line, its record, and its story scan.

The full CPU recipe takes minutes (``bench/demo.py`` measures it); here the same code runs a recipe
shrunk to a small phantom, which must still learn (a trained classifier, above the majority rate).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from pipeline.__main__ import main
from pipeline.constants import CLASSES
from dashboard.ui.session import RUN_KEY
from pipeline.demo import DEMO_FILE, RECIPES, DemoRecipe, default_recipe, read_demo
from pipeline.demo.background import demo_job_dir
from pipeline.demo.core import STORY_CLASS
from pipeline.errors import CheckpointError
from pipeline.evaluation.data import run_data
from pipeline.jobs import cancel_job, job_state
from pipeline.store import read_record
from tests.dashboard_helpers import run_until

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")

#: The CPU recipe shrunk: 64 px, 600 scans, a few epochs, PGD-1 fine-tuning, PGD-3 to check.
SHRUNK = DemoRecipe(
    name="shrunk",
    preset="quick",
    standard={
        "image_size": 64, "count": 600, "val_fraction": 0.15, "test_fraction": 0.15, "epochs": 8,
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
            assert main(["demo", "--runs-dir", str(runs), "--recipe", SHRUNK.name, "--quiet"]) == 0
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
        main(["demo", "--runs-dir", str(tmp_path), "--recipe", "laptop"])
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


def test_the_first_start_card_offers_the_demo_and_says_what_it_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = attack_page(tmp_path, monkeypatch)
    assert not at.exception and not at.error
    recipe = RECIPES[default_recipe()]
    assert at.button(key="demo:start").label == (
        f"Prepare the demo (two models, about {recipe.minutes:.0f} minutes)"
    )
    card = " ".join(item.value for item in at.caption)
    assert recipe.describe() in card and "synthetic phantom" in card and "not medical models" in card


@pytest.mark.slow
def test_the_card_prepares_the_demo_as_one_background_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = attack_page(tmp_path, monkeypatch)
    at.button(key="demo:start").click().run()
    job = demo_job_dir(tmp_path)
    try:
        assert job_state(job).running or job_state(job).phase == "queued"
        run_until(at, lambda app: job_state(job).running)
        at.run()
        assert any("demo is being prepared" in item.value for item in at.info)
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
