""""Not a trained classifier: no robustness to measure": the one judgment, and every place it shows.

The cases come from the issue: the demo model that answered malignant for 7 of 9 test scans and
never benign while the strength check said "variety: ok", and a cancelled run answering one class
for every scan whose PGD accuracy equalled its clean accuracy with an empty problem column.
Synthetic test data only.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dashboard.ui.captions import shift_sentence
from dashboard.ui.run_table import run_row
from pipeline.constants import CLASSES
from pipeline.errors import CheckpointError
from pipeline.evaluation import StrengthSettings, SuiteSettings, evaluate_models, strength_checks
from pipeline.evaluation.degenerate import NOT_TRAINED, check_answers, check_epoch
from pipeline.evaluation.profile import PROFILE, validation_profile
from pipeline.evaluation.report import report_csv, report_html
from pipeline.jobs import job_state
from pipeline.models import build_model
from pipeline.store import METRICS, MODEL, atomic_write_json, load_model, read_record, save_model
from pipeline.training import TrainConfig, train
from tests.dashboard_helpers import TINY
from tests.evaluation_helpers import nodule_dataset, one_thread  # noqa: F401 (autouse fixture)
from tests.models_fixture import trained_model

BENIGN, MALIGNANT, NORMAL = range(3)


class OneAnswer(nn.Module):
    """Answers ``answer`` for every scan, whatever it shows (its input still reaches the output)."""

    def __init__(self, answer: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.answer = answer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 3, device=x.device)
        logits[:, self.answer] = 5.0
        return logits + self.weight * x.flatten(1).mean(1, keepdim=True)


def test_the_demo_model_that_never_answers_benign_is_flagged() -> None:
    labels = [BENIGN] * 3 + [MALIGNANT] * 3 + [NORMAL] * 3
    answers = [MALIGNANT] * 3 + [MALIGNANT] * 3 + [NORMAL, NORMAL, MALIGNANT]
    check = check_answers(answers, labels)
    assert check.answers == (0, 7, 2) and check.flagged
    assert check.never_answered == ["benign"]
    assert check.reason.startswith(NOT_TRAINED) and "never answers benign" in check.reason


def test_one_answer_for_every_scan_and_chance_accuracy_are_flagged_a_skilled_model_is_not() -> None:
    labels = np.array([BENIGN] * 20 + [MALIGNANT] * 92 + [NORMAL] * 68)
    constant = check_answers(np.full(180, MALIGNANT), labels)
    assert constant.flagged and constant.never_answered == ["benign", "normal"]
    assert constant.accuracy == pytest.approx(constant.majority_rate)
    # Uses every class, but 55% is inside the interval of always answering malignant (51%, up to 58%).
    rng = np.random.default_rng(0)
    guessing = labels.copy()
    wrong = rng.choice(180, 81, replace=False)
    guessing[wrong] = (guessing[wrong] + 1) % 3
    chance = check_answers(guessing, labels)
    assert not chance.never_answered and chance.no_skill and chance.flagged
    assert "no better than chance" in chance.reason
    skilled = labels.copy()
    skilled[wrong[:50]] = (skilled[wrong[:50]] + 1) % 3  # 72% correct, every class answered
    assert not check_answers(skilled, labels).flagged


def test_strength_checks_call_a_one_answer_model_not_a_trained_classifier() -> None:
    dataset = nodule_dataset(12)
    quick = StrengthSettings(pgd_steps=2, strong_steps=3, strong_restarts=2, square_queries=5,
                             ensemble_steps=2, ladder=())
    report = strength_checks(OneAnswer(MALIGNANT), dataset, None, 4 / 255, settings=quick)
    assert report.degenerate and report.verdict.startswith(NOT_TRAINED.upper())
    trained = next(check for check in report.checks if check.key == "trained")
    assert trained.flagged and "never answers benign or normal" in trained.detail
    assert json.loads(json.dumps(report.to_dict()))["degenerate"] is True


def test_the_evaluation_report_flags_it_beside_its_figures_and_not_a_trained_one() -> None:
    settings = SuiteSettings(attacks=("fgsm",), epsilons=(4 / 255,), steps=2, strength=False, transfer=False,
                             batch_size=12)
    suite = evaluate_models({"one answer": OneAnswer(NORMAL), "trained": trained_model().model},
                            nodule_dataset(12), None, settings)
    constant, trained = (model.report.trained for model in suite.models)
    assert constant.flagged and not trained.flagged
    page = report_html(suite)
    assert page.count(NOT_TRAINED.capitalize()) == 1  # above the model's own figures
    assert NOT_TRAINED in page.split("Model: one answer")[0]  # and in the table's row
    rows = list(csv.DictReader(io.StringIO(report_csv(suite))))
    assert {row["trained_classifier"] for row in rows if row["model"] == "one answer"} == {constant.reason}
    assert {row["trained_classifier"] for row in rows if row["model"] == "trained"} == {"yes"}
    data = json.loads(json.dumps(suite.to_dict()))
    assert data["models"][0]["report"]["trained_classifier"]["flagged"] is True
    assert data["reference_tables"][0]["rows"][1]["trained_classifier"]["flagged"] is False


def test_runs_table_flags_a_cancelled_run_that_answers_one_class(tmp_path: Path) -> None:
    """Two epochs, then cancelled; it answered malignant for every validation scan, so its PGD accuracy
    equals its clean accuracy. The problem column must say why that is no robustness."""
    run_dir = tmp_path / "20260101-000000-resnet18-standard"
    run_dir.mkdir()
    atomic_write_json(run_dir / "status.json", {"phase": "cancelled"})
    atomic_write_json(run_dir / "request.json", {"arch": "resnet18", "epochs": 10, "classes": list(CLASSES)})
    lines = [
        {"epoch": epoch, "val_acc": 0.51, "val_robust_acc": 0.51, "val_answers": [0, 92, 0],
         "val_labels": [20, 92, 68], "best": epoch == 1}
        for epoch in (1, 2)
    ]
    (run_dir / METRICS).write_text("".join(json.dumps(line) + "\n" for line in lines))
    record = read_record(run_dir)
    row = run_row(record, job_state(run_dir))
    assert row["val. acc. under PGD"] == row["clean val. acc."] == 0.51
    assert row["problem"].startswith(NOT_TRAINED) and "never answers benign or normal" in row["problem"]
    assert check_epoch({"val_acc": 0.51}) is None  # epochs written before answers were stored: not judged


def no_data(*args: object, **kwargs: object) -> None:
    raise AssertionError("loaded the data")


def test_validation_answers_are_stored_and_profiled_once_per_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    run_dir = train(TrainConfig.from_dict({**TINY, "image_size": 32}), tmp_path / "runs")
    line = read_record(run_dir).best
    validation = len(read_record(run_dir).config["split"]["val"])
    assert sum(line["val_answers"]) == sum(line["val_labels"]) == validation
    model, _ = load_model(run_dir)
    first = validation_profile(run_dir, model)
    assert (run_dir / PROFILE).is_file()
    assert first.trained.answers == tuple(line["val_answers"])  # the same judgment as the runs table
    assert first.detector.validation_scans == sum(line["val_labels"])
    again = validation_profile(run_dir, model, load=no_data)  # read back from beside the run
    assert again.detector.threshold == first.detector.threshold
    torch.testing.assert_close(again.detector.precision, first.detector.precision)
    save_model(run_dir / MODEL, build_model("resnet18"))  # a new checkpoint: profiled anew
    with pytest.raises(AssertionError, match="loaded the data"):
        validation_profile(run_dir, model, load=no_data)
    (run_dir / PROFILE).write_bytes(b"damaged")
    assert validation_profile(run_dir, model).detector.validation_scans == first.detector.validation_scans
    imported = tmp_path / "imported"
    imported.mkdir()
    save_model(imported / MODEL, build_model("resnet18"))
    config = read_record(run_dir).config
    without_split = {key: value for key, value in config.items() if key != "split"}
    atomic_write_json(imported / "config.json", without_split)
    with pytest.raises(CheckpointError):
        validation_profile(imported, model)


def test_the_shift_sentence_follows_from_all_three_measures() -> None:
    """CT_small.dcm under FGSM at 4/255: correlation 0.86, hottest-10% overlap 0%, centre moved 4.5 px:
    the old caption said "barely moved" from the correlation alone."""
    disagreeing = shift_sentence({"pearson": 0.86, "top_iou": 0.0, "centre_shift": 4.5}, 64)
    assert "barely moved" not in disagreeing.split("(")[0] and disagreeing.startswith("The measures disagree")
    assert "correlation 0.86: barely moved" in disagreeing
    assert "overlap of the hottest 10% 0%: moved to a different place" in disagreeing
    agreeing = shift_sentence({"pearson": 0.95, "top_iou": 0.8, "centre_shift": 1.0}, 64)
    assert agreeing.startswith("Where the model looks barely moved")
    assert "all three measures agree" in agreeing
    moved = shift_sentence({"pearson": 0.1, "top_iou": 0.05, "centre_shift": 20.0}, 64)
    assert moved.startswith("Where the model looks moved to a different place")
