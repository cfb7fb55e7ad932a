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
from pipeline.progress import STAGE_STEPS, Phase, Progress, Step, TimeLeft, staged, time_left_words
from pipeline.store import read_status


TRAIN, VALIDATE = Phase("train standard", 100.0), Phase("validate", 50.0)


def run_epochs(timer: TimeLeft, epochs: int, seconds: list[tuple[float, float]], *, now: float = 0.0) -> float:
    """Feed ``timer`` the steps of ``epochs`` epochs whose train part and validation take the given
    seconds (one pair per epoch), a report at the start, middle and end of each; returns the clock."""
    for epoch, (train_s, validate_s) in enumerate(seconds, 1):
        later = (TRAIN, VALIDATE) * (epochs - epoch)
        for fraction in (0.0, 0.5, 1.0):
            timer.update((epoch - 1 + fraction) / epochs, now + fraction * train_s,
                         Step(("epoch", epoch, "train"), TRAIN, fraction, (VALIDATE, *later)))
        now += train_s
        for fraction in (0.0, 0.5, 1.0):
            timer.update(epoch / epochs, now + fraction * validate_s,
                         Step(("epoch", epoch, "validate"), VALIDATE, fraction, later))
        now += validate_s
    return now


def test_time_left_prices_each_phase_by_its_own_measured_cost() -> None:
    """Validation costs six times training per unit here; the window rate over the whole fraction
    (which does not move during validation) could not know that."""
    timer = TimeLeft()
    now = run_epochs(timer, 4, [(10.0, 30.0)])
    timer.update(0.25, now, Step(("epoch", 2, "train"), TRAIN, 0.0, (VALIDATE, *(TRAIN, VALIDATE) * 2)))
    assert timer.seconds(now) == pytest.approx(3 * 40.0)
    timer.update(0.375, now + 5.0, Step(("epoch", 2, "train"), TRAIN, 0.5, (VALIDATE, *(TRAIN, VALIDATE) * 2)))
    assert timer.seconds(now + 5.0) == pytest.approx(3 * 40.0 - 5.0)


def test_a_phase_not_run_yet_is_priced_from_the_phases_that_have() -> None:
    """A robust training after a standard one (the demo): its epochs cost four passes a scan, priced
    per pass from what has run, never from nothing."""
    timer = TimeLeft()
    now = run_epochs(timer, 1, [(10.0, 30.0)])
    robust = Phase("train pgd", 400.0)
    timer.update(0.5, now, Step(("robust", "load"), Phase("load data", 1.0, "load"), 0.0, (robust, VALIDATE)))
    per_pass = (10.0 + 30.0) / (100.0 + 50.0)  # the pass-priced phases so far
    assert timer.seconds(now) == pytest.approx(400.0 * per_pass + 30.0 + 40.0 / 150.0)  # + loading by all


def test_a_machine_that_got_slower_shows_within_a_phase_or_two() -> None:
    timer = TimeLeft()
    now = run_epochs(timer, 12, [(10.0, 10.0)] * 4 + [(20.0, 20.0)] * 3)  # a second job started
    ahead = (VALIDATE, *(TRAIN, VALIDATE) * 4)
    timer.update(7 / 12, now, Step(("epoch", 8, "train"), TRAIN, 0.0, ahead))
    left = timer.seconds(now)
    assert left is not None and 5 * 40.0 * 0.9 < left <= 5 * 40.0


def test_plain_reports_are_one_phase_and_a_restart_forgets_it() -> None:
    timer = TimeLeft()
    timer.update(0.0, now=0.0)
    assert timer.seconds(0.5) is None  # nothing measured yet
    timer.update(0.4, now=8.0)
    assert timer.seconds(8.0) == pytest.approx(12.0)
    timer.update(0.1, now=9.0)  # it started over
    assert timer.seconds(9.0) is None


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


def test_stages_pass_structured_steps_on_with_the_later_stages_ahead() -> None:
    """The demo's shape: a training's steps inside its stage, a plain held-out check after it."""
    seen: list[Step] = []
    record = Progress(lambda done, total, message, step: seen.append(step))
    check = Phase("held-out check", 30.0)
    plans = ((Phase("load data", 1.0, "load"), TRAIN, VALIDATE), (check,))
    first = staged(record, 0, (3.0, 1.0), "standard model", plans=plans)
    assert isinstance(first, Progress)
    first.update(5, 10, "epoch 1/1", Step(("epoch", 1, "train"), TRAIN, 0.5, (VALIDATE,)))
    staged(record, 1, (3.0, 1.0), "held-out check", plans=plans)(2, 4, "PGD, batch 1/2")
    assert seen == [
        Step((0, "epoch", 1, "train"), TRAIN, 0.5, (VALIDATE, check)),
        Step((1,), check, 0.5, ()),
    ]


def test_a_time_left_from_steps_ignores_plain_reports_between_them() -> None:
    """An evaluation reports its clean pass plainly between the steps its attacks' stages make."""
    timer = TimeLeft()
    stage = Phase("stage", 1.0, "stage")
    timer.update(0.0, 0.0, Step((0,), stage, 0.0, (stage,)))
    timer.update(0.25, 10.0, Step((0,), stage, 0.5, (stage,)))
    timer.update(0.3, 11.0)  # plain: moved, same phase
    assert timer.moved == 11.0
    assert timer.seconds(10.0) == pytest.approx(30.0)
