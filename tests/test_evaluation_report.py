"""Certificates, defences, the saved reports and ``python -m pipeline evaluate`` end to end.

Randomized smoothing is checked against a linear classifier whose exact L2 distance to the
decision boundary is known; defences must not look better than they are once the adaptive
(BPDA) attack runs; the HTML report must open offline and say "synthetic" when it is; the CLI
runs on two tiny runs trained in the test. Synthetic test data only.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import plotly.offline
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pipeline.__main__ import main
from pipeline.attacks import attack_class
from pipeline.data import Split
from pipeline.errors import AttackParameterError, UserInputError
from pipeline.evaluation import (
    ABSTAIN,
    BitDepthReduction,
    JPEGDefense,
    StrengthSettings,
    SuiteSettings,
    certified_accuracy_curve,
    certify,
    evaluate_defense,
    evaluate_models,
    reference_attacks,
)
from pipeline.evaluation import figures
from pipeline.evaluation.background import run_job, start_evaluation_job
from pipeline.evaluation.certify import CertifiedCurve
from pipeline.evaluation.data import split_indices
from pipeline.evaluation.reference import ATTACK_COLUMNS, COLUMN_LABELS, COLUMNS
from pipeline.evaluation.report import (
    INCOMPLETE,
    SYNTHETIC_BANNER,
    jsonable,
    read_report,
    report_csv,
    report_html,
    report_json,
    save_report,
)
from pipeline.evaluation.request import EvaluationRequest
from pipeline.evaluation.sweeps import MinimalEpsilon, SweepResult
from pipeline.evaluation.transfer import TransferResult
from pipeline.jobs import job_state
from pipeline.training import TrainConfig, train
from tests.evaluation_helpers import nodule_dataset, one_thread  # noqa: F401 (autouse fixture)
from tests.models_fixture import nodule_images, trained_model
from tests.training_helpers import REPO, TINY, wait_for

SIDE = 32


class CornerThreshold(nn.Module):
    """Class 0 when the top-left pixel is above 0.5, class 1 below: the L2 distance to the decision
    boundary is ``|pixel - 0.5|``, so a certified radius can be checked against the truth."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        margin = x[:, 0, 0, 0] - 0.5
        return torch.stack([margin, -margin, torch.full_like(margin, -1.0)], dim=1)


# ------------------------------------------------------------------------------ certification
def test_certified_radius_is_sound_and_positive_for_an_easy_scan() -> None:
    scan = torch.full((1, 1, SIDE, SIDE), 0.9)
    found = certify(CornerThreshold(), scan, sigma=0.1, n0=50, n=500, alpha=0.001, batch=250)
    assert found.prediction[0] == 0
    assert 0.1 < found.radius[0] <= 0.4  # a guarantee may be loose, never beyond the true distance 0.4


def test_heavy_noise_or_an_ambiguous_scan_abstains() -> None:
    on_the_boundary = torch.full((1, 1, SIDE, SIDE), 0.5)
    easy = torch.full((1, 1, SIDE, SIDE), 0.9)
    for scan, sigma in ((on_the_boundary, 0.1), (easy, 10.0)):
        found = certify(CornerThreshold(), scan, sigma=sigma, n0=50, n=500, batch=250)
        assert found.prediction[0] == ABSTAIN and found.radius[0] == 0.0
    with pytest.raises(UserInputError, match="sigma"):
        certify(CornerThreshold(), easy, sigma=0.0)


def test_certified_accuracy_falls_with_the_radius() -> None:
    curve = certified_accuracy_curve(
        trained_model().model, nodule_dataset(3), None, 0.12, [0.0, 0.1, 0.3, 10.0], n=60, n0=20, batch=60
    )
    assert curve.accuracy == sorted(curve.accuracy, reverse=True)
    assert curve.accuracy[0] > 0 and curve.accuracy[-1] == 0.0


# ---------------------------------------------------------------------------------- defences
@pytest.mark.parametrize("transform", [BitDepthReduction(4), JPEGDefense(60)], ids=["bit-depth", "jpeg"])
def test_the_adaptive_attack_sees_through_an_input_defence(transform: nn.Module) -> None:
    x, y = nodule_images(18, seed=7)
    result = evaluate_defense(
        trained_model().model, transform, TensorDataset(x, y), None, ("pgd", {"eps": 16 / 255, "steps": 5})
    )
    naive, adaptive = result.naive.attacks[0].accuracy, result.adaptive.attacks[0].accuracy
    assert result.naive.clean.accuracy > 0.8
    assert naive > 0.8  # the naive attack follows a zero or broken gradient: the defence looks strong
    assert adaptive < naive - 0.3  # BPDA shows it is not


# ------------------------------------------------------------------------------------ reports
@pytest.fixture(scope="module")
def suite():
    model = trained_model().model
    settings = SuiteSettings(
        epsilons=(2 / 255, 8 / 255),
        curve_epsilons=(),  # the figures counted below are the table's
        steps=3,
        batch_size=12,
        defenses=("bitdepth",),
        strength_settings=StrengthSettings(
            pgd_steps=3, strong_steps=3, strong_restarts=1, square_queries=10, ensemble_steps=2, ladder=()
        ),
        minimal_epsilon=False,
        certify_sigma=0.12,
        certify_n=50,
    )
    return evaluate_models({"tiny": model, "tiny copy": model}, nodule_dataset(12), None, settings)


def test_html_report_is_self_contained_and_marked_synthetic(suite, tmp_path: Path) -> None:
    paths = save_report(suite, tmp_path / "out")
    assert {path.name for path in paths.values()} == {"report.json", "report.csv", "report.html"}
    page = paths["html"].read_text()
    library = plotly.offline.get_plotlyjs()
    assert page.count(library) == 1  # plotly.js inlined once, not per figure
    ours = page.replace(library, "")  # the library's own code mentions map tile servers it never loads here
    assert not re.search(r"<script[^>]+src=", ours), "every script must be inline"
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", ours), "nothing may load from the network"
    assert "Plotly.newPlot" in ours
    assert SYNTHETIC_BANNER in page
    assert page.count("data:image/png;base64,") >= 3  # clean, attacked and perturbation of an example
    assert "reported by the reference study, weak attacks" in page
    assert "adaptive attack" in page and "Randomized smoothing" in page
    data = json.loads(paths["json"].read_text(), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert data["synthetic"] and data["notice"] and len(data["reference_tables"]) == 2
    assert data["transfer"]["models"] == ["tiny", "tiny copy"]
    (tmp_path / "a-file").write_text("not a folder\n")
    with pytest.raises(UserInputError, match="cannot write the reports to .*a-file"):
        save_report(suite, tmp_path / "a-file")


def test_html_has_no_banner_for_real_data() -> None:
    settings = SuiteSettings(attacks=("fgsm",), strength=False, transfer=False)
    real = evaluate_models(
        {"tiny": trained_model().model}, nodule_dataset(6, synthetic=False), None, settings
    )
    assert SYNTHETIC_BANNER not in report_html(real)


def test_csv_has_one_row_per_figure_and_labels_the_study(suite) -> None:
    rows = list(csv.DictReader(io.StringIO(report_csv(suite))))
    ours = [row for row in rows if row["source"] == "this evaluation"]
    # clean, 3 attacks x 2 eps, worst case per eps, and the strength checks' worst case at the largest eps
    per_model = 1 + 6 + 2 + 1
    figures = [row for row in ours if row["section"] == "robustness"]
    assert len(figures) == 2 * per_model
    for row in figures:  # every figure carries its interval
        assert float(row["accuracy_low"]) <= float(row["accuracy"]) <= float(row["accuracy_high"])
        assert row["interval_method"] == "Wilson"
    attacked = [row for row in figures if row["success_rate"]]
    assert attacked and all(row["success_rate_low"] and row["success_rate_high"] for row in attacked)
    # Calibration of each of the 9 answer sets (clean, 6 attacks, 2 worst cases), four figures each.
    assert len([row for row in ours if row["section"] == "calibration"]) == 2 * 9 * 4
    comparisons = [row for row in ours if row["section"] == "comparison"]
    assert len(comparisons) == 9 and all(row["p_value"] for row in comparisons)
    study = [row for row in rows if row["source"] == "reported by the reference study, weak attacks"]
    assert len(study) == 10 and {row["eps_label"] for row in study} == {"not stated"}
    assert all(row["synthetic"] == "True" for row in ours)


# ------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs_dir = tmp_path_factory.mktemp("runs")
    for strategy in ("standard", "pgd"):
        train(TrainConfig.from_dict({**TINY, "epochs": 1, "strategy": strategy}), runs_dir)
    return runs_dir


def test_cli_prints_the_table_and_writes_three_reports(runs: Path, capsys: pytest.CaptureFixture) -> None:
    names = sorted(path.name for path in runs.iterdir())
    code = main(
        [
            "evaluate",
            "--runs-dir",
            str(runs),
            "--run",
            names[0],
            "--run",
            names[1],
            "--attacks",
            "fgsm,pgd,cw-linf",
            "--eps",
            "2/255,0.0314",
            "--limit",
            "6",
            "--steps",
            "2",
            "--strong-steps",
            "2",
            "--restarts",
            "1",
            "--queries",
            "10",
            "--ensemble-steps",
            "2",
            "--corruptions",
            "jpeg,rings",
            "--faithfulness",
            "2",
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "Reference table at ε=2/255" in out and "Reference table at ε=0.0314" in out
    # at the quick level the strength checks stand under every model's row at the largest epsilon
    assert len(re.findall(r"^\s+(ok|!!) AutoAttack vs PGD", out, re.M)) == 2
    assert out.count("worst case over all") == 2
    assert "Strength checks at the custom level" in out and "--strength-level full" in out
    # every accuracy with its interval, calibration, the paired comparison and where the time went
    assert re.search(r"clean \d+% \(95% CI \d+–\d+\) on 6 scans", out)  # whole percent on 6 scans
    assert "calibration, clean" in out and "ECE" in out
    assert re.search(r"(holds more scans|no clear difference)", out) and "McNemar" in out
    assert out.count("time, ") == 2
    assert out.count("corruption error, mean of severities 1-5: jpeg") == 2 and "mCE" in out
    assert out.count("faithfulness (ROAD") + out.count("faithfulness not measured") == 2
    assert "reported by the reference study, weak attacks" in out
    assert out.count(SYNTHETIC_BANNER.upper()) == 2  # once per table, never a second time above it
    html = Path(re.search(r"^html: (.+)$", out, re.M).group(1))
    assert html.parent.parent == runs / names[0] / "evaluations"
    assert {path.name for path in html.parent.iterdir()} == {"report.json", "report.csv", "report.html"}
    assert json.loads((html.parent / "report.json").read_text())["scans"] == 6


def test_cli_refuses_absurd_input_with_a_clear_message(runs: Path, capsys: pytest.CaptureFixture) -> None:
    name = next(runs.iterdir()).name
    for args, message in (
        (["--eps", "4"], "write 4/255"),
        (["--eps", "200/255"], "largest supported"),
        (["--attacks", "nonsense"], "unknown attack"),
        (["--attacks", "cw-l2"], "unknown attack"),
        (["--attacks", "gaussian-noise"], "no epsilon budget"),
        (["--limit", "0"], "at least 1"),
        (["--defenses", "tinfoil"], "unknown defence"),
        (["--certify", "0"], "sigma"),
        (["--corruptions", "pgd"], "not a corruption"),
        (["--faithfulness", "-1"], "faithfulness_scans must lie in [0,"),
        (["--strong-steps", "0"], "strong_steps must lie in [1,"),
    ):
        assert main(["evaluate", "--runs-dir", str(runs), "--run", name, "--quiet", *args]) == 2
        assert message in capsys.readouterr().err
    assert main(["evaluate", "--runs-dir", str(runs), "--run", "no-such-run", "--quiet"]) == 2
    assert "no run" in capsys.readouterr().err


def test_cli_refuses_bad_flags_before_loading_any_run(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # the run does not exist: a refusal that names the flag, not the run, came before any loading
    (tmp_path / "a-file").write_text("not a folder\n")
    for args, message in (
        (["--out", str(tmp_path / "a-file")], "a-file is a file"),
        (["--out", str(tmp_path / "a-file" / "reports")], "lies under the file"),
        (["--job-dir", str(tmp_path / "a-file")], "a-file is a file"),
        (["--certify", "-1"], "sigma"),
        (["--defenses", "bogus"], "unknown defence 'bogus'"),
        (["--detectors", "mahalanobis,lid"], "unknown detector lid; choose from mahalanobis, squeeze"),
        (["--detectors", "squeeze", "--detector-fpr", "0.9"], "detector_fpr"),
    ):
        assert main(["evaluate", "--runs-dir", str(runs), "--run", "no-such-run", "--quiet", *args]) == 2
        assert message in capsys.readouterr().err
    assert (tmp_path / "a-file").read_text() == "not a folder\n"


@pytest.mark.parametrize("test_side", [[7, 10**9], [-3, -1]])
def test_cli_refuses_a_run_whose_stored_split_was_tampered_with(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture, test_side: list[int]
) -> None:
    source = sorted(runs.iterdir())[0]
    run_dir = shutil.copytree(source, tmp_path / "tampered", ignore=shutil.ignore_patterns("evaluations"))
    config = json.loads((run_dir / "config.json").read_text())
    config["split"]["test"] = test_side
    (run_dir / "config.json").write_text(json.dumps(config))
    assert main(["evaluate", "--run", str(run_dir), "--attacks", "fgsm", "--no-strength", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "stored split of run tampered is damaged" in error and "re-train" in error
    assert not (run_dir / "evaluations").exists()


def test_runs_with_different_splits_are_not_compared(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    other = train(TrainConfig.from_dict({**TINY, "epochs": 1, "split_seed": 1}), tmp_path)
    code = main(["evaluate", "--run", str(sorted(runs.iterdir())[0]), "--run", str(other), "--quiet"])
    assert code == 2 and "split the data differently" in capsys.readouterr().err


def test_a_limit_takes_the_classes_in_turn() -> None:
    split = Split(
        train=np.arange(0, 4),
        val=np.arange(4, 6),
        test=np.arange(6, 16),
        strategy="grouped",
        leaky=False,
        seed=0,
    )
    labels = np.array([0] * 6 + [1] * 6 + [2] * 2 + [0] * 2)  # test: 1 1 1 1 1 1 2 2 0 0
    chosen = split_indices(split, "test", labels, limit=5)
    assert sorted(labels[chosen].tolist()) == [0, 0, 1, 1, 2]
    assert split_indices(split, "all", labels).tolist() == list(range(16))
    with pytest.raises(UserInputError, match="unknown split"):
        split_indices(split, "holdout", labels)


def test_background_job_reports_progress_and_outputs(runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the job's process inherits it
    run_dir = sorted(runs.iterdir())[0]
    suite = SuiteSettings(attacks=("fgsm",), epsilons=(4 / 255,), strength=False)
    request = EvaluationRequest(runs=(str(run_dir),), suite=suite, limit=3, device="cpu")
    job_dir = start_evaluation_job(request)
    assert EvaluationRequest.from_dict(json.loads((job_dir / "request.json").read_text())) == (
        dataclasses.replace(request, out=str(job_dir))
    )  # the job's settings travel as JSON, not as command-line strings
    wait_for(lambda: not job_state(job_dir).running, timeout=180, interval=0.5)
    state = job_state(job_dir)
    assert state.phase == "done", state.error or state.log_tail
    assert state.progress == 1.0
    outputs = state.status["outputs"]
    assert all(Path(path).is_file() and Path(path).parent == job_dir for path in outputs.values())
    assert np.isclose(json.loads(Path(outputs["json"]).read_text())["settings"]["epsilons"][0], 4 / 255)


def test_background_job_refuses_an_absurd_certification_noise_before_starting(runs: Path) -> None:
    run_dir = sorted(runs.iterdir())[0]
    before = set((run_dir / "evaluations").glob("*")) if (run_dir / "evaluations").exists() else set()
    with pytest.raises(UserInputError, match="sigma must lie in"):
        start_evaluation_job(
            EvaluationRequest(runs=(str(run_dir),), suite=SuiteSettings(attacks=("fgsm",), certify_sigma=-1.0))
        )
    after = set((run_dir / "evaluations").glob("*")) if (run_dir / "evaluations").exists() else set()
    assert after == before  # no job directory, no process


def test_each_attack_name_means_one_attack_everywhere(suite, tmp_path: Path) -> None:
    """The table's columns are registry names and say which CW they ran; "cw" is always CW-L2."""
    assert [spec.name for spec in reference_attacks(4 / 255)] == list(ATTACK_COLUMNS)
    assert all(attack_class(column).norm == "linf" for column in ATTACK_COLUMNS)
    assert attack_class("cw").norm is None and "L2" in attack_class("cw").title
    assert COLUMN_LABELS["cw-linf"] == "CW-L∞" and COLUMN_LABELS["cw"] == "CW-L2"  # ours, and the study's
    with pytest.raises(AttackParameterError, match="cw-linf"):
        SuiteSettings(attacks=("cw",))  # CW-L2 has no L∞ budget to state
    ours, study = suite.tables[0].format().split("For comparison")
    assert "CW-L∞" in ours and "CW-L2" not in ours and "CW-L2" in study.splitlines()[1]
    page = report_html(suite)
    assert "<th>CW-L∞</th>" in page and "<th>CW-L2</th>" in page

    older = json.loads(report_json(suite))  # as written before: our CW-L∞ column was named "cw"
    for table in older["reference_tables"]:
        table["columns"] = ["cw" if column == "cw-linf" else column for column in table["columns"]]
        for row in table["rows"]:
            row["cw"] = row.pop("cw-linf")
    (tmp_path / "report.json").write_text(json.dumps(older))
    table = read_report(tmp_path / "report.json")["reference_tables"][0]
    assert table["columns"] == list(COLUMNS) and "cw" not in table["rows"][0]
    assert table["rows"][0]["cw-linf"] == suite.tables[0].rows[0].values["cw-linf"]


def test_the_dashboard_draws_the_reports_own_figures(suite) -> None:
    """The figures rebuilt from report.json are the HTML report's, point for point, in one palette."""
    saved = json.loads(report_json(suite))
    by_name = {model["name"]: model for model in saved["models"]}
    pairs = [
        (figures.epsilon_curves, [m.sweep for m in suite.models],
         [SweepResult.from_dict(by_name[m.name]["sweep"]) for m in suite.models]),
        (figures.transfer_heatmap, suite.transfer, TransferResult.from_dict(saved["transfer"])),
        (figures.certified_curves, [(m.name, m.certified) for m in suite.models],
         [(m.name, CertifiedCurve.from_dict(by_name[m.name]["certified"])) for m in suite.models]),
    ]
    for draw, typed, rebuilt in pairs:
        assert draw(rebuilt).to_json() == draw(typed).to_json(), draw.__name__
    minimal = MinimalEpsilon("tiny", "pgd", np.array([0.0, 2 / 255, np.inf]), np.array([0, 1, 2]),
                             np.array([False, True, True]))
    again = MinimalEpsilon.from_dict(json.loads(json.dumps(jsonable(minimal.to_dict()))))
    histogram = figures.minimal_epsilon_histogram
    assert histogram([again]).to_json() == histogram([minimal]).to_json()
    dashboard_figures = (REPO / "dashboard" / "ui" / "figures.py").read_text()
    assert not re.search(r"#[0-9a-fA-F]{6}", dashboard_figures), "colours come from pipeline.evaluation.figures"


def test_a_cancelled_evaluation_keeps_the_sections_that_finished(runs: Path, tmp_path: Path) -> None:
    """Cancelled while its strength checks run: the attacks that had finished stay, marked incomplete."""
    run_dir = sorted(runs.iterdir())[0]
    job_dir = tmp_path / "job"
    strength = StrengthSettings(
        pgd_steps=2, strong_steps=2, strong_restarts=1, square_queries=10, ensemble_steps=2
    )
    suite = SuiteSettings(
        attacks=("fgsm", "pgd"), epsilons=(4 / 255,), curve_epsilons=(), steps=2, strength_settings=strength
    )
    request = EvaluationRequest(runs=(str(run_dir),), suite=suite, limit=4, device="cpu", out=str(job_dir))

    def cancel_in_the_strength_checks(done: int, total: int, message: str) -> None:
        if "strength checks" in message:
            (job_dir / "cancel").write_bytes(b"cancel requested\n")  # as the Cancel button does

    with pytest.raises(UserInputError, match="sections that had finished"):
        run_job(request, job_dir, echo=cancel_in_the_strength_checks)
    assert job_state(job_dir).phase == "cancelled"
    kept = read_report(job_dir / "report.json")
    assert kept["complete"] is False and kept["scans"] == 4
    assert [attack["attack"]["name"] for attack in kept["models"][0]["report"]["attacks"]] == ["fgsm", "pgd"]
    assert kept["models"][0]["strength"] == []  # the section it was cancelled in is not half-kept
    assert INCOMPLETE in (job_dir / "report.html").read_text()
