"""Adversarial-example detectors and their adaptive attack (issue 24.3).

Mahalanobis on the penultimate features and feature squeezing, fitted on the fixture's tiny CNN:
each flags about 5% of clean held-out scans, nearly all of PGD's successful scans, and far fewer
of the attack that optimises the classifier's loss and the detector's score together; the share
of wrong answers that pass unflagged rises accordingly. At 16/255, as the distillation tests: at
8/255 the fixture's faint blobs cannot be turned into another class's within the detectors'
bounds, and both detectors hold (measured; see pipeline/attacks/adaptive.py).
Synthetic test data only; nothing here is a medical result.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.attacks.adaptive import DetectorAwarePGD
from pipeline import tracking
from pipeline.errors import AttackParameterError, UserInputError
from pipeline.evaluation import EvaluationSuite, SuiteSettings, evaluate_models
from pipeline.evaluation.detectors import (
    FALSE_POSITIVE_RATE,
    DetectorResult,
    Scored,
    detection_sentence,
    detector_names,
    detector_table,
    fit,
)
from pipeline.evaluation.report import report_csv, report_html, report_json
from pipeline.evaluation.verdict import verdict_table
from tests.evaluation_helpers import one_thread, scan_dataset  # noqa: F401  (autouse fixture)
from tests.models_fixture import nodule_images, trained_model

EPS = 16 / 255
NAMES = ("mahalanobis", "squeeze")


@pytest.fixture(scope="module")
def fitted() -> dict[str, object]:
    """Both detectors for the fixture's tiny CNN: fitted on its training images, thresholded on 60
    clean validation images it never saw."""
    model = trained_model().model
    x_train, y_train = nodule_images(150, seed=0)
    x_val, _ = nodule_images(60, seed=5)
    return {name: fit(name, model, x_train, y_train, x_val) for name in NAMES}


#: The evaluation's dataset: the fixture's training images, 60 validation and 24 held-out ones.
PARTS = {"train": (150, 0), "val": (60, 5), "test": (24, 7)}


@pytest.fixture(scope="module")
def suite() -> EvaluationSuite:
    """The whole evaluation with both detectors, fitted on the training part and thresholded on the
    validation part of one dataset, measured on its held-out part."""
    images = [nodule_images(count, seed=seed) for count, seed in PARTS.values()]
    dataset = scan_dataset(torch.cat([x for x, _ in images]), torch.cat([y for _, y in images]))
    ends = np.cumsum([0, *(count for count, _ in PARTS.values())])
    train, val, test = (np.arange(start, end) for start, end in zip(ends[:-1], ends[1:]))
    settings = SuiteSettings(attacks=("pgd",), epsilons=(EPS,), curve_epsilons="", steps=10, strength=False,
                             calibration=False, faithfulness_scans=0, transfer=False,
                             detectors="mahalanobis,squeeze")
    return evaluate_models({"tiny": trained_model().model}, dataset, test, settings, detector_scans=(train, val))


@pytest.fixture(scope="module")
def results(suite) -> dict[str, DetectorResult]:
    return {result.detector["detector"]: result for result in suite.models[0].detectors}


@pytest.mark.parametrize("name", NAMES)
def test_the_threshold_flags_about_five_percent_of_clean_held_out_scans(fitted, name) -> None:
    model = trained_model().model
    x_clean, _ = nodule_images(240, seed=11)  # neither training nor validation images
    rate = float(fitted[name].flags(model, x_clean).float().mean())
    assert fitted[name].false_positive_rate == FALSE_POSITIVE_RATE and fitted[name].validation_scans == 60
    assert 0.0 < rate < 0.15, f"{name}: {rate:.1%} of clean scans flagged for a 5% target"


@pytest.mark.parametrize("name", NAMES)
def test_detection_falls_under_the_adaptive_attack_and_wrong_answers_get_through(results, name) -> None:
    result = results[name]
    pgd, adaptive = result.detection("pgd"), result.detection("adaptive")
    assert result.fooled("pgd").sum() >= 20  # PGD fools nearly every scan ...
    assert pgd.estimate >= 0.8  # ... and the detector flags nearly all of them
    assert adaptive.estimate < pgd.estimate - 0.5, (pgd.format(), adaptive.format())
    before, after = result.missed("pgd").estimate, result.missed("adaptive").estimate
    assert after > before + 0.5, (before, after)
    assert result.accuracy("adaptive") < result.accuracy("pgd")
    saved = result.to_dict()
    assert saved["detector"] == name and set(saved["detection"]) == {"pgd", "adaptive"}
    assert "rise from" in detection_sentence(saved)


def test_each_detector_has_a_verdict_row_beside_its_adaptive_attack(suite) -> None:
    baseline, *detected = suite.verdicts
    assert baseline.defense is None and [v.defense.split(":")[0] for v in detected] == ["detector"] * 2
    for verdict in detected:
        assert verdict.adaptive < verdict.naive - 0.3 and verdict.masking and verdict.believe.startswith("Believe")
        assert "right or flagged" in verdict.adaptive_attack and "of clean scans" in verdict.flags[0]
    saved = json.loads(json.dumps(suite.to_dict()))
    shown = verdict_table(saved["defence_verdicts"])
    assert shown[1]["defence"].startswith("detector: Mahalanobis")
    rows = detector_table(saved["models"])
    assert [row["model"] for row in rows] == ["tiny", "tiny"]
    assert "Xu et al. 2018" in rows[1]["detector"] and "fooled" in rows[1]["detected: PGD"]
    assert "target 5% on 60 validation scans" in rows[0]["false positives (clean)"]


def test_the_detectors_are_in_the_html_and_csv_reports_and_mlflow(suite, tmp_path, monkeypatch) -> None:
    html = report_html(suite)
    assert "Adversarial-example detectors at ε=16/255" in html and "rise from" in html
    lines = [line for line in report_csv(suite).splitlines() if ",detector," in line]
    assert len(lines) == 2 * 5 and sum("detection rate" in line for line in lines) == 4
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "LUNGLAB_TRACKING"):
        monkeypatch.delenv(name, raising=False)
    entry = tracking.log_evaluation(tmp_path, suite, suite.settings.to_dict(), [], name="detectors", flag=True)
    metrics = MlflowClient(tracking.tracking_uri(tmp_path)).get_run(entry["run_id"]).data.metrics
    squeeze = suite.models[0].detectors[1]
    assert metrics["tiny/detector squeeze/detection_rate_adaptive"] == squeeze.detection("adaptive").estimate
    assert metrics["tiny/detector mahalanobis/missed_pgd"] >= 0.0


def test_the_evaluate_page_shows_the_detectors_and_their_verdicts(suite, tmp_path) -> None:
    """The Evaluate page's drawing of a saved report (dashboard.ui.report_views) shows both tables."""
    from streamlit.testing.v1 import AppTest

    saved = tmp_path / "report.json"
    saved.write_text(report_json(suite))

    def page(path: str) -> None:
        from dashboard.ui.report_views import defence_verdicts, detectors
        from pipeline.evaluation.report import read_report

        report = read_report(path)
        defence_verdicts(report)
        detectors(report)

    at = AppTest.from_function(page, args=(str(saved),)).run(timeout=60)
    assert not at.exception
    assert any("Adversarial-example detectors at ε = 16/255" in item.value for item in at.markdown)
    verdicts, table = (item.value for item in at.table)
    assert list(verdicts["defence"])[1:] == [f"detector: {r.name}" for r in suite.models[0].detectors]
    results = suite.models[0].detectors
    assert [shown.startswith(result.name) for shown, result in zip(table["detector"], results)] == [True, True]
    assert sum("rise from" in item.value for item in at.markdown) == 2


def test_detectors_need_the_training_and_validation_scans() -> None:
    with pytest.raises(UserInputError, match="training and validation scans"):
        evaluate_models({"tiny": trained_model().model}, scan_dataset(*nodule_images(6, seed=7)), None,
                        SuiteSettings(attacks=("pgd",), detectors="squeeze"))
    with pytest.raises(UserInputError, match="unknown detector"):
        SuiteSettings(detectors="lid")


def test_scored_model_and_adaptive_attack_keep_the_attack_contract(fitted) -> None:
    tiny = trained_model()
    x, y = tiny.x[:6], tiny.y[:6]
    scored = Scored(tiny.model, fitted["mahalanobis"])
    logits = scored(x)
    assert scored.relative_score.shape == (6, 3)  # one distance per class mean
    flagged = fitted["mahalanobis"].flags(tiny.model, x)
    assert torch.equal(scored.relative_score.detach().amin(1) > 1.0, flagged)
    assert torch.allclose(logits, tiny.model(x))
    before = x.clone()
    x_adv = DetectorAwarePGD(eps=EPS, steps=3, weights=(1.0,))(scored, x, y)
    assert torch.equal(x, before) and x_adv.shape == x.shape
    assert float((x_adv - x).abs().max()) <= EPS + 1e-6
    assert 0.0 <= float(x_adv.min()) <= float(x_adv.max()) <= 1.0
    with pytest.raises(AttackParameterError, match="wrapped with its detector"):
        DetectorAwarePGD(eps=EPS, steps=2)(tiny.model, x, y)


def test_the_scan_report_says_whether_each_detector_flags_the_attacked_scan(fitted) -> None:
    """What the Attack page shows: the profile's detectors on the original and the attacked scan."""
    from pipeline.constants import CLASSES
    from pipeline.evaluation.degenerate import check_answers
    from pipeline.evaluation.profile import ValidationProfile
    from pipeline.scan_report import analyse_scan

    tiny = trained_model()
    mahalanobis, squeezing = fitted["mahalanobis"], fitted["squeeze"]
    profile = ValidationProfile(check_answers(tiny.y, tiny.y), mahalanobis.fitted, squeezing)
    report = analyse_scan(tiny.model, tiny.x[0], "pgd", {"eps": EPS, "steps": 10}, label=int(tiny.y[0]),
                          classes=CLASSES, profile=profile)
    assert report.success and [d.flagged_attacked for d in report.detections] == [True, True]
    assert not any(d.flagged_clean for d in report.detections)
    assert "flags the attacked scan" in report.detections[0].text and "Lee et al. 2018" in report.detections[0].text
    saved = json.loads(json.dumps(report.to_dict()))["detectors"]
    assert [d["flagged_attacked"] for d in saved] == [True, True] and saved[1]["validation_scans"] == 60


def test_bad_detector_settings_say_what_to_do() -> None:
    assert detector_names("Squeeze, mahalanobis,") == ("squeeze", "mahalanobis")
    with pytest.raises(UserInputError, match="choose from mahalanobis, squeeze"):
        detector_names("lid")
    x, y = nodule_images(6, seed=1)
    with pytest.raises(UserInputError, match="false-positive rate"):
        fit("squeeze", trained_model().model, x, y, x, false_positive_rate=0.9)
    with pytest.raises(UserInputError, match="validation scans"):
        fit("squeeze", trained_model().model, x, y, x[:0])
