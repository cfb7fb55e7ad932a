"""``bench/gpu.sh`` keeps working: its dry pass (tiny sizes, no CUDA) runs every step and writes the table."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from tests.training_helpers import REPO

ROWS = (
    "contract tests marked cuda",
    "render the phantom",
    "standard training (images/s)",
    "fgsm-rs epoch cost vs standard",
    "pgd-2 epoch cost vs standard",
    "PGD-10 on one scan (ms)",
    "PGD-10 / 11 forward+backward",
    "demo standard model: clean / PGD-1 2/255",
    "demo robust model: clean / PGD-1 2/255",
    "demo preparation, whole",
    "sharded evaluation / one process (s)",
    "sharded evaluation: same answer per scan and attack",
)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the script measures for real (minutes)")
def test_dry_pass_runs_every_step_and_writes_the_table(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "bench/gpu.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    table = (tmp_path / "gpu-table.md").read_text()
    assert "DRY PASS (no CUDA)" in table and "not a medical result" in table
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert set(ROWS) <= set(rows), table
    tests_row = rows["contract tests marked cuda"]
    assert "skipped" in tests_row and "failed" not in tests_row
    assert not any("FAILED" in row or "NOT met" in row for row in rows.values())
    assert all(row in done.stdout for row in rows.values())  # the same table was printed
    assert (tmp_path / "gpu-tests.log").is_file()
