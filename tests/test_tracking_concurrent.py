"""Jobs started together on a fresh runs folder are all tracked, and the store stays healthy (issue 23, 3c).

Several real processes open an MLflow run through ``pipeline.tracking`` at the same moment (each
waits on a start file, so they reach MLflow's store creation together), log a metric, close the
run and print the entry the lab keeps. Every one must be tracked, and the SQLite store must pass
SQLite's integrity check afterwards, with no migration left half done.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline import tracking

REPO = Path(__file__).resolve().parents[1]
JOBS = 3
#: One job: wait for the start file, open a run, log, close, print the entry as JSON.
JOB = """
import json, sys, time
from pathlib import Path
from pipeline import tracking
runs, go, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
while not go.exists():
    time.sleep(0.005)
run = tracking.start(runs, name=name, kind="training", params={"job": name}, synthetic=True)
run.log_metrics({"val_acc": 0.5}, step=1)
run.finish("FINISHED")
print(json.dumps(run.entry))
"""


@pytest.mark.timeout(300)
def test_jobs_started_at_once_on_a_fresh_folder_are_all_tracked(tmp_path: Path) -> None:
    runs, go = tmp_path / "runs", tmp_path / "go"
    env = {key: value for key, value in os.environ.items()
           if key not in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", tracking.ENV)}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    jobs = [subprocess.Popen([sys.executable, "-c", JOB, str(runs), str(go), f"job-{index}"], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for index in range(JOBS)]
    time.sleep(1.0)  # let every interpreter start and import before the gun
    go.touch()
    entries = []
    for job in jobs:
        out, err = job.communicate(timeout=240)
        assert job.returncode == 0, err[-2000:]
        entries.append(json.loads(out.strip().splitlines()[-1]))

    failed = [entry["error"] for entry in entries if "error" in entry]
    assert not failed, f"{len(failed)} of {JOBS} jobs untracked: {failed}"
    uri = tracking.tracking_uri(runs)
    assert all(entry["uri"] == uri and entry.get("run_id") for entry in entries)
    assert len({entry["experiment_id"] for entry in entries}) == 1, "the jobs made more than one experiment"

    client = MlflowClient(uri)
    found = client.search_runs([entries[0]["experiment_id"]])
    assert sorted(run.info.run_name for run in found) == [f"job-{index}" for index in range(JOBS)]
    assert all(run.info.status == "FINISHED" and run.data.metrics["val_acc"] == 0.5 for run in found)

    with sqlite3.connect(tracking.store_dir(runs) / "mlflow.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert not [table for table in tables if table.startswith("_alembic_tmp")], "a migration was left half done"
        assert len(db.execute("SELECT version_num FROM alembic_version").fetchall()) == 1
    again = tracking.start(runs, name="after", kind="training", params={}, synthetic=True)  # the store still opens
    again.finish("FINISHED")
    assert "error" not in again.entry
