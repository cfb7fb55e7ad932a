"""Faults: kills at random instants, resuming, and a full disk while saving."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from pipeline.errors import CheckpointError
from pipeline.models import build_model
from pipeline.store import LAST, LAST_META, load_model, read_json, read_metrics, read_status
from pipeline.store.checkpoint import load_checkpoint, save_checkpoint
from pipeline.training import TrainConfig, train
from tests.training_helpers import (
    TINY,
    assert_consistent,
    checkpoint_epoch,
    cli_args,
    metric_epochs,
    start_cli,
    wait_for,
)

EPOCHS = 4
SETTINGS = {**TINY, "epochs": EPOCHS, "seed": 3}
TRIALS = 6
COMPARED = ("train_loss", "val_acc", "val_robust_acc", "val_loss")
#: Waiting for an epoch on a busy machine: only a hung process should run into this.
PATIENT = {"timeout": 900.0, "interval": 0.2}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _saved_epoch(run_dir: Path) -> int:
    """The epoch of the last checkpoint, from last.json (written after it, and cheap to poll)."""
    return int((read_json(run_dir / LAST_META, default={}) or {}).get("epoch", 0))


def _start_and_kill(run_dir: Path, trial: int, rng: random.Random) -> None:
    """Start (or resume) the run and SIGKILL it, unless it finishes first.

    Even trials die at a random instant (start-up, data loading, an epoch, a checkpoint write);
    odd ones once this process has saved a checkpoint of its own, shortly after. Which trials kill
    after a checkpoint is decided by the run's files, not by how fast the machine is, so the test
    holds on a loaded machine; the random delays only spread the kills.
    """
    resuming = (run_dir / "request.json").is_file()
    args = ["--resume", str(run_dir)] if resuming else [*cli_args(SETTINGS), "--run-dir", str(run_dir)]
    saved = _saved_epoch(run_dir)
    process = start_cli("train", "--quiet", "--runs-dir", str(run_dir.parent), *args)
    if trial % 2:
        wait_for(lambda: process.poll() is not None or _saved_epoch(run_dir) > saved, **PATIENT)
    try:
        process.wait(timeout=rng.uniform(0.0, 0.5) if trial % 2 else rng.uniform(0.2, 3.0))
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.slow
@pytest.mark.timeout(2400)  # 6 trainings: a loaded machine may need far more than the default 600 s
def test_random_kills_keep_runs_loadable_and_resume_exactly(tmp_path: Path) -> None:
    expected = read_metrics(train(TrainConfig.from_dict(SETTINGS), tmp_path / "reference"))
    rng = random.Random(20240607)
    runs, finished, outcomes = tmp_path / "runs", [], []
    run_dir = runs / "run-0"
    for trial in range(TRIALS):
        saved_before = checkpoint_epoch(run_dir)
        _start_and_kill(run_dir, trial, rng)
        assert_consistent(run_dir)
        assert checkpoint_epoch(run_dir) >= saved_before  # a finished epoch is never lost
        phase = read_status(run_dir).get("phase")
        outcomes.append((trial, phase, checkpoint_epoch(run_dir), metric_epochs(run_dir)))
        if phase == "done":
            finished.append(run_dir)
            run_dir = runs / f"run-{len(finished)}"
    print("\ntrial, phase after the kill, checkpoint epoch, metrics epochs:", *outcomes, sep="\n  ")
    assert any(0 < saved < EPOCHS and phase != "done" for _, phase, saved, _ in outcomes), (
        "no kill landed after a checkpoint"
    )
    # finish the last run without interruption, then compare every run with the uninterrupted one
    if (run_dir / "request.json").is_file():
        assert start_cli("train", "--quiet", "--resume", str(run_dir)).wait() == 0
        finished.append(run_dir)
    for done in finished:
        assert metric_epochs(done) == list(range(1, EPOCHS + 1))
        for got, want in zip(read_metrics(done), expected, strict=True):
            for key in COMPARED:
                assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (
                    done.name,
                    got["epoch"],
                    key,
                )
        load_model(done)


def test_disk_full_while_saving_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = TrainConfig.from_dict({**SETTINGS, "epochs": 2})
    run_dir = tmp_path / "run"
    real_replace = os.replace

    def full_disk_after_first_checkpoint(source, target, *args, **kwargs):
        if Path(target).name == LAST and (run_dir / LAST).is_file():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full_disk_after_first_checkpoint)
    with pytest.raises(
        CheckpointError, match="No space left on device.*previous version of the file is kept"
    ):
        train(config, tmp_path, run_dir=run_dir)
    status = read_status(run_dir)
    assert status["phase"] == "failed" and "could not save last.safetensors" in status["error"]
    assert checkpoint_epoch(run_dir) == 1 and not list(run_dir.glob(".*.tmp"))
    assert_consistent(run_dir)
    monkeypatch.setattr(os, "replace", real_replace)
    train(None, tmp_path, resume=run_dir)
    assert metric_epochs(run_dir) == [1, 2] and checkpoint_epoch(run_dir) == 2
    assert read_status(run_dir)["phase"] == "done"


@pytest.mark.parametrize("optimizer", [torch.optim.SGD, torch.optim.AdamW])
def test_a_restored_fused_optimizer_steps_exactly_as_the_uninterrupted_one(
    tmp_path: Path, optimizer: type[torch.optim.Optimizer]
) -> None:
    """Training steps channels-last weights with fused optimizers; the file holds their state contiguous.
    A state tensor restored in another layout than its weight was stepped against the wrong elements."""

    def fresh() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = build_model("resnet18").to(memory_format=torch.channels_last)
        return model, optimizer(model.parameters(), lr=1e-2, fused=True)

    def step(model: torch.nn.Module, optim: torch.optim.Optimizer) -> None:
        optim.zero_grad()
        model(torch.linspace(0, 1, 2 * 32 * 32).view(2, 1, 32, 32)).logsumexp(1).sum().backward()
        optim.step()

    model, optim = fresh()
    step(model, optim)
    save_checkpoint(tmp_path, model, optim, {"epoch": 1})
    restored, restored_optim = fresh()
    load_checkpoint(tmp_path, restored, restored_optim)
    step(model, optim)
    step(restored, restored_optim)
    for (name, want), got in zip(model.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(got, want), name
