"""The Evaluate page for a newcomer (issue 22, point 7), through Streamlit's AppTest on real tiny runs.

After the demo the form starts from both demo models; before any model exists the page points to
the demo; when the evaluation this session started finishes, that one is shown, not an earlier
failed one still selected. Synthetic phantom data only.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import torch
from streamlit.testing.v1 import AppTest
from streamlit.util import calc_hash

from dashboard.ui.session import DATASET_KEY
from pipeline.__main__ import build_parser
from pipeline.data import DataSpec
from pipeline.demo import DEMO_FILE, Demo
from pipeline.demo.core import DemoModel
from pipeline.evaluation import SuiteSettings, evaluate_models
from pipeline.evaluation.data import run_data
from pipeline.evaluation.report import FILES, INCOMPLETE, save_report
from pipeline.store import load_model, update_status
from pipeline.training import TrainConfig, train
from pipeline.units import parse_epsilons
from tests.dashboard_helpers import TINY

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
WATCH = "evaluate.watch"
SHOWN = "evaluate:shown"
DEMO_CREATED = 1.0
#: The Attack page, where every test opens first, sets itself up on a new demo once (its standard model
#: chosen in the sidebar); a session that has already done so keeps the model it chose.
DEMO_APPLIED = {"demo.applied": DEMO_CREATED}


@dataclass
class Store:
    runs: Path
    standard: Path
    robust: Path
    report: Path  #: a finished report.json of both runs


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    runs = tmp_path_factory.mktemp("runs")
    config = {**TINY, "image_size": 32}
    torch.manual_seed(0)
    robust = train(TrainConfig.from_dict({**config, "seed": 1}), runs)
    standard = train(TrainConfig.from_dict(config), runs)
    models = {load_model(path)[1].name: load_model(path)[0] for path in (standard, robust)}
    dataset, split = run_data(load_model(standard)[1])
    # The default budgets of the curve: PGD at 1, 2 and 8/255 beside the table's 4/255.
    settings = SuiteSettings(
        attacks=("fgsm", "pgd"), steps=1, strength=False, faithfulness_scans=0, transfer=False
    )
    folder = tmp_path_factory.mktemp("report")
    paths = save_report(evaluate_models(models, dataset, split.test, settings), folder)
    yield Store(runs, standard, robust, paths["json"])


def page(runs: Path, monkeypatch: pytest.MonkeyPatch, state: dict | None = None) -> AppTest:
    monkeypatch.setenv("LUNGLAB_RUNS_DIR", str(runs))
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state[DATASET_KEY] = DataSpec(image_size=32, count=36)
    for key, value in (state or {}).items():
        at.session_state[key] = value
    at.run()
    at.switch_page("views/evaluate.py")
    return at.run()


def calm(at: AppTest) -> None:
    assert not at.exception, [item.value for item in at.exception]
    assert not at.error, [item.value for item in at.error]


def copy_runs(store: Store, to: Path) -> tuple[Path, Path]:
    """Both runs in a store of their own (without their evaluations)."""
    copies = tuple(
        Path(shutil.copytree(path, to / path.name, ignore=shutil.ignore_patterns("evaluations")))
        for path in (store.standard, store.robust)
    )
    return copies  # type: ignore[return-value]


def write_demo(runs: Path, standard: Path, robust: Path) -> None:
    """The record ``python -m pipeline demo`` writes, naming these two runs (figures made up)."""
    models = [
        DemoModel(role, path, 1.0, 0.9, (0.9, 0.9, 0.9), {2 / 255: 0.5}, 9, True, "a trained classifier")
        for role, path in (("standard", standard), ("robust", robust))
    ]
    demo = Demo("cpu", models[0], models[1], None, None, "no scan", created_at=DEMO_CREATED)
    (runs / DEMO_FILE).write_text(json.dumps(demo.to_dict()))


def test_after_the_demo_the_form_starts_from_both_demo_models(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    standard, robust = copy_runs(store, tmp_path)
    without = page(tmp_path, monkeypatch)
    calm(without)
    assert len(without.multiselect(key="evaluate:runs").value) == 1  # no demo: the sidebar's model alone
    write_demo(tmp_path, standard, robust)
    at = page(tmp_path, monkeypatch)
    calm(at)
    assert at.multiselect(key="evaluate:runs").value == [str(standard), str(robust)]
    (form,) = [block for block in at.get("form") if block.proto.form.form_id == "evaluate:form"]
    assert not form.proto.form.enter_to_submit  # Enter in a number box starts nothing; the button does
    # Another model chosen in the sidebar is what the person wants evaluated: the demo steps aside.
    other = Path(shutil.copytree(standard, tmp_path / "another-run"))  # a run is named by its folder
    at = page(tmp_path, monkeypatch, {**DEMO_APPLIED, "lunglab.run": str(other)})
    calm(at)
    assert at.multiselect(key="evaluate:runs").value == [str(other)]


def test_before_any_model_the_page_offers_the_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = page(tmp_path, monkeypatch)
    calm(at)
    text = " ".join(item.value for item in at.markdown)
    assert "No trained model yet" in text and "The demo prepares a standard and an adversarially" in text
    (link,) = at.get("page_link")
    assert link.proto.label == "Prepare the demo on the Attack page"
    assert link.proto.page_script_hash == calc_hash("attack")  # how st.Page names views/attack.py
    assert "train one on the Train page" not in text


def test_a_finished_evaluation_is_shown_not_an_earlier_failed_one(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    standard, _ = copy_runs(store, tmp_path)
    folders = {}
    for number, (name, phase) in enumerate((("20260101-000000", "failed"), ("20260102-000000", "done"))):
        folder = standard / "evaluations" / name
        folder.mkdir(parents=True)
        report = json.loads(store.report.read_text())
        report["complete"] = phase == "done"  # a failed evaluation keeps its finished sections
        (folder / FILES["json"]).write_text(json.dumps(report))
        update_status(folder, {"phase": phase, "error": "out of memory" if phase == "failed" else None})
        os.utime(folder / FILES["json"], (1_000_000 + number, 1_000_000 + number))
        folders[phase] = str(folder)
    # The person was reading the failed one when the evaluation they had started (watched) ended.
    at = page(tmp_path, monkeypatch, {SHOWN: folders["failed"], WATCH: folders["done"]})
    assert not at.exception, [item.value for item in at.exception]
    assert at.selectbox(key=SHOWN).value == folders["done"]
    assert not any(INCOMPLETE in item.value for item in at.warning)
    # Its robustness curve is a curve: PGD at ε = 0 (clean), 1, 2, 4 and 8/255 for both models.
    figures = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    traces = [trace for figure in figures for trace in figure["data"]]
    pgd = [trace for trace in traces if trace.get("name", "").endswith(": PGD (L∞)")]
    assert len(pgd) == 2 and all(trace["x"] == pytest.approx([0, 1, 2, 4, 8]) for trace in pgd)
    # The form offers the curve's budgets as the command line's defaults.
    flags = build_parser().parse_args(["evaluate", "--run", "any"])
    assert parse_epsilons(at.text_input(key="evaluate:curve").value) == parse_epsilons(flags.curve_eps)
    # Once shown, the choice is the person's again.
    at.selectbox(key=SHOWN).set_value(folders["failed"]).run()
    assert at.selectbox(key=SHOWN).value == folders["failed"]
    assert any(INCOMPLETE in item.value for item in at.warning)
