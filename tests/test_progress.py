"""One progress model for every bar: time left from the measured recent rate, counted down between
reports, and honest about work that has gone quiet (never a frozen "about 17 min left")."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from dashboard.ui.job_view import job_time_left
from pipeline.evaluation.robustness import AttackSpec, evaluate
from pipeline.jobs import JobContext, JobState
from pipeline.models import build_model
from pipeline.progress import STAGE_STEPS, TimeLeft, staged, time_left_words
from pipeline.store import read_status


def test_time_left_follows_the_recent_rate_not_the_average() -> None:
    timer = TimeLeft(window_s=30.0)
    for second in range(6):  # a fast stage: half the work in 5 s
        timer.update(second / 10, now=float(second))
    assert timer.seconds(now=5.0) == pytest.approx(5.0)
    for second in range(6, 66):  # then a slow one: 0.1 more in 60 s
        timer.update(0.5 + (second - 5) / 600, now=float(second))
    # over the last 30 s the work moved 0.05: the 0.4 left take about 240 s, not the average's 50 s
    assert timer.seconds(now=65.0) == pytest.approx(0.4 / (0.05 / 30), rel=0.05)


def test_time_left_counts_down_between_reports_and_then_says_it_is_late() -> None:
    timer = TimeLeft()
    timer.update(0.0, now=0.0)
    timer.update(0.5, now=10.0)
    assert timer.seconds(now=10.0) == pytest.approx(10.0)
    assert timer.seconds(now=14.0) == pytest.approx(6.0)
    late = timer.seconds(now=40.0)
    assert late is not None and late < 0
    assert time_left_words(late, quiet=30.0) == "slower than measured so far: no progress for 30 s"
    assert time_left_words(timer.seconds(now=14.0), quiet=4.0) == "about 6 s left"
    assert time_left_words(None, quiet=2.0) == "estimating time left"
    assert time_left_words(None, quiet=60.0) == "no progress for 60 s"


def test_a_jobs_estimate_is_read_against_the_clock() -> None:
    """The status a job wrote 898 s ago says 17 min: the page must not repeat it for 17 minutes."""
    written = 1_000_000.0
    state = JobState("running", True, {"eta_s": 17 * 60.0, "eta_at": written, "progress_at": written})
    assert job_time_left(state, now=written + 60) == "about 16 min left"
    state = JobState("running", True, {"eta_s": 100.0, "eta_at": written, "progress_at": written})
    assert job_time_left(state, now=written + 898) == "slower than measured so far: no progress for 898 s"


def test_a_job_writes_when_its_estimate_was_true(tmp_path) -> None:
    job = JobContext(tmp_path / "job", kind="evaluation")
    (tmp_path / "job").mkdir()
    job.report(3, 10, "PGD, batch 1/4")
    status = read_status(tmp_path / "job")
    assert status["progress"] == 0.3 and status["message"] == "PGD, batch 1/4"
    assert status["eta_at"] == status["progress_at"] and status["eta_s"] is None  # no rate from one report


def test_an_evaluation_reports_from_inside_each_attack() -> None:
    """A slow attack moves the bar with its own steps: more reports than (batch, attack) slots."""
    torch.manual_seed(0)
    model = build_model("resnet18").eval()
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        y = model(x).argmax(1)  # every scan correct, so every scan is attacked
    seen: list[tuple[int, int, str]] = []
    spec = AttackSpec("square", {"eps": 4 / 255, "n_queries": 12})
    evaluate(model, TensorDataset(x, y), None, [spec], batch_size=4, progress=lambda *args: seen.append(args))
    fractions = [done / total for done, total, _ in seen]
    assert fractions == sorted(fractions)  # the bar never runs backwards
    assert sum("query" in message for _, _, message in seen) >= 10


def test_stages_share_one_bar_equally_or_by_weight() -> None:
    seen: list[tuple[int, int, str]] = []
    record = lambda done, total, message: seen.append((done, total, message))  # noqa: E731
    staged(record, 1, 2, "second")(1, 2, "half")  # equal shares: half of the second of two stages
    staged(record, 1, (1.0, 3.0), "long")(1, 2, "")  # weighted: a quarter done, then half of three quarters
    staged(record, 0, (1.0, 3.0), "short")(5, 2, "over")  # an overshoot is clamped to its stage's end
    assert seen == [
        (3 * STAGE_STEPS // 2, 2 * STAGE_STEPS, "second: half"),
        (int(2 * STAGE_STEPS * (0.25 + 0.75 / 2)), 2 * STAGE_STEPS, "long"),
        (2 * STAGE_STEPS // 4, 2 * STAGE_STEPS, "short: over"),
    ]
    assert staged(None, 0, (1.0, 3.0), "nothing") is None
