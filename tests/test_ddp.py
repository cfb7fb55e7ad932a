"""Multi-process training under torchrun: two CPU processes with gloo, rank 0 writes the run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipeline.store import list_runs, load_model, read_status
from tests.training_helpers import REPO, TINY, child_env, cli_args, metric_epochs


def test_two_process_gloo_training_writes_one_loadable_run(tmp_path: Path) -> None:
    settings = {**TINY, "epochs": 2, "strategy": "pgd"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "pipeline",
        "train",
        "--quiet",
        "--runs-dir",
        str(tmp_path),
        *cli_args(settings),
    ]
    done = subprocess.run(command, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = list_runs(tmp_path)
    assert len(runs) == 1  # one run directory, not one per rank
    run_dir = runs[0].run_dir
    assert f"run: {run_dir}" in done.stdout and done.stdout.count("run: ") == 1  # only rank 0 reports
    assert read_status(run_dir)["phase"] == "done"
    assert metric_epochs(run_dir) == [1, 2]
    model, record = load_model(run_dir)
    assert record.config["strategy"] == "pgd" and record.metrics[-1]["val_robust_acc"] >= 0
