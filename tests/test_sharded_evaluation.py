"""Sharded evaluation under torchrun (issue 26): two gloo processes write the report one process
writes, and a process killed mid-evaluation is named while the sections finished before it stay."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest

from pipeline.__main__ import main
from pipeline.evaluation import AttackSpec, evaluate_defense, make_defense
from pipeline.evaluation.report import read_report
from pipeline.training import TrainConfig, train
from tests.evaluation_helpers import nodule_dataset, one_thread  # noqa: F401 (autouse: torchrun's one thread)
from tests.models_fixture import trained_model
from tests.training_helpers import REPO, TINY, child_env, wait_for

TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")
#: Sections that shard, on 18 scans in batches of 6: rank 0 runs batches 0 and 2, rank 1 batch 1;
#: faithfulness runs on rank 0 alone. The strength checks and defences run the attacks' loop again,
#: at a cost this suite cannot pay twice; a defence's random draws have their own test below.
FLAGS = (
    "--device", "cpu", "--split", "train", "--limit", "18", "--batch-size", "6",
    "--attacks", "fgsm,pgd", "--eps", "16/255", "--curve-eps", "8/255", "--steps", "2", "--no-strength",
    "--corruptions", "jpeg", "--faithfulness", "2", "--faithfulness-imputation", "blur", "--quiet",
)  # fmt: skip
#: What differs between two runs of the same evaluation: when and how long, and on how many processes.
EXECUTION = {"seconds", "clean_seconds", "created", "processes"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run near its initial weights: it answers one class, but an attack at 16/255 changes its
    answer on many scans (a tiny model trained further answers that class whatever the input)."""
    config = TrainConfig.from_dict({**TINY, "count": 36, "epochs": 1, "lr": 1e-5})
    return train(config, tmp_path_factory.mktemp("runs"))


def test_two_gloo_processes_write_the_report_of_one(run_dir: Path, tmp_path: Path) -> None:
    assert main(["evaluate", str(run_dir), *FLAGS, "--out", str(tmp_path / "one")]) == 0
    command = [*TORCHRUN, "-m", "pipeline", "evaluate", str(run_dir), *FLAGS, "--out", str(tmp_path / "two")]
    done = subprocess.run(command, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("json: ") == 1  # rank 0 alone prints and writes
    one, two = (read_report(tmp_path / name / "report.json") for name in ("one", "two"))
    assert (one["processes"], two["processes"]) == (1, 2)
    # per-scan outcomes: the same answer on every scan under every attack, and some scans fooled
    for mine, theirs in zip(one["models"][0]["report"]["attacks"], two["models"][0]["report"]["attacks"]):
        assert mine["predictions"] == theirs["predictions"], mine["attack"]["label"]
    assert sum(attack["fooled"] for attack in one["models"][0]["report"]["attacks"]) > 0
    assert {"corruption", "faithfulness"} <= {
        section for section, value in two["models"][0].items() if value
    }
    # every figure, interval, confusion matrix, worst case and verdict of the report
    assert _without(one, EXECUTION) == _without(two, EXECUTION)
    assert _csv_rows(tmp_path / "one") == _csv_rows(tmp_path / "two")
    assert "shared by 2 processes" in (tmp_path / "two" / "report.html").read_text()


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process in /proc")
def test_a_killed_process_is_named_and_the_finished_sections_stay(run_dir: Path, tmp_path: Path) -> None:
    """Rank 1 is killed (SIGKILL) while both certify: torchrun stops rank 0, which names rank 1."""
    out = tmp_path / "killed"
    slow = ("--certify", "0.25", "--certify-n", "10000000")  # minutes per scan: never finishes here
    flags = ("--device", "cpu", "--limit", "8", "--attacks", "fgsm", "--eps", "16/255", "--curve-eps", "",
             "--no-strength", "--faithfulness", "0", "--quiet", *slow, "--out", str(out))  # fmt: skip
    launcher = subprocess.Popen(
        [*TORCHRUN, "-m", "pipeline", "evaluate", str(run_dir), *flags],
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # the attacks' section is written when the certification starts
        wait_for(lambda: (out / "report.json").exists() or launcher.poll() is not None, timeout=240)
        rank_one = _worker(launcher.pid, 1)
        assert rank_one is not None, "no process of rank 1 under torchrun"
        os.kill(rank_one, signal.SIGKILL)
        output, _ = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    assert "process of rank 1 (of 2) stopped before the evaluation's end" in output, output
    kept = read_report(out / "report.json")
    assert kept["complete"] is False and "rank 1" in kept["stopped"]
    assert [attack["attack"]["name"] for attack in kept["models"][0]["report"]["attacks"]] == ["fgsm"]
    assert kept["models"][0]["certified"] is None  # the section it stopped in is not half-kept
    assert "rank 1" in (out / "report.html").read_text()


def test_a_random_defence_draws_the_same_for_a_batch_whatever_ran_before() -> None:
    """What lets one process run batch k alone: the random shift restarts its stream for every batch
    (before, a second evaluation with the same defence, as the suite's of a second model, went on
    where the first had stopped and drew other shifts)."""
    model, dataset, shift = trained_model().model, nodule_dataset(8), make_defense("shift")
    attack = AttackSpec("fgsm", {"eps": 8 / 255})
    runs = [
        evaluate_defense(model, shift, dataset, None, attack, batch_size=4, eot_samples=2) for _ in range(2)
    ]
    for first, again in ((runs[0].naive, runs[1].naive), (runs[0].adaptive, runs[1].adaptive)):
        assert np.array_equal(first.clean.probabilities, again.clean.probabilities)
        assert np.array_equal(first.attacks[0].outcome.probabilities, again.attacks[0].outcome.probabilities)


def _without(value: Any, keys: set[str]) -> Any:
    """``value`` (a JSON report) without ``keys`` at any depth."""
    if isinstance(value, dict):
        return {key: _without(item, keys) for key, item in value.items() if key not in keys}
    if isinstance(value, list):
        return [_without(item, keys) for item in value]
    return value


def _csv_rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "report.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def _worker(launcher: int, rank: int) -> Optional[int]:
    """The process id of torchrun's worker of ``rank``: a child of ``launcher`` with RANK set to it."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environment = (entry / "environ").read_bytes().split(b"\0") if parent == launcher else []
        except (OSError, IndexError, ValueError):
            continue
        if f"RANK={rank}".encode() in environment:
            return int(entry.name)
    return None
