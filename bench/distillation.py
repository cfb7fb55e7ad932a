"""Defensive distillation on a CPU: distil a saved run at temperature T, evaluate teacher and student
side by side, print the defence verdict table (issue 24).

    python bench/distillation.py --teacher runs/<standard run> [--temperature 100] [--epochs 1]

The student starts from the teacher (``init_from``), so only its logits must grow T-fold: a few
epochs on a CPU. The evaluation is the suite's, cut to ``--limit`` held-out scans, with the quick
strength checks; the teacher is the undefended row. Figures on the synthetic phantom are not
medical results.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.evaluation import SuiteSettings  # noqa: E402
from pipeline.evaluation.request import EvaluationRequest, evaluate_runs  # noqa: E402
from pipeline.evaluation.verdict import VERDICT_COLUMNS, verdict_table  # noqa: E402
from pipeline.store import read_record, resolve_run  # noqa: E402
from pipeline.training import TrainConfig  # noqa: E402
from pipeline.training.loop import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="a saved run (directory or name under --runs-dir)")
    parser.add_argument("--runs-dir", default="runs", help="where the student is written")
    parser.add_argument("--temperature", type=float, default=100.0)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eps", default="8/255")
    parser.add_argument("--limit", type=int, default=48, help="held-out scans evaluated")
    parser.add_argument("--student", help="an already distilled run: evaluate only")
    args = parser.parse_args()

    teacher = resolve_run(args.runs_dir, args.teacher)
    started = time.perf_counter()
    if args.student:
        student = resolve_run(args.runs_dir, args.student)
    else:
        stored = read_record(teacher).config
        settings = {key: stored[key] for key in ("arch", "batch_size", "optimizer", "imbalance", "augment")}
        config = TrainConfig.from_dict(
            {
                **settings,
                "data": stored["data"],
                "strategy": "distillation",
                "teacher_run": str(teacher),
                "init_from": str(teacher),
                "temperature": args.temperature,
                "epochs": args.epochs,
                "lr": args.lr,
                "schedule": "constant",
                "val_steps": 1,
                "eval_size": 32,
                "device": "cpu",
            }
        )
        student = train(config, args.runs_dir, track=False)
    trained = time.perf_counter() - started
    request = EvaluationRequest(
        runs=(str(teacher), str(student)),
        runs_dir=str(args.runs_dir),
        limit=args.limit,
        device="cpu",
        suite=SuiteSettings(
            attacks=("pgd", "cw-linf"), epsilons=args.eps, faithfulness_scans=0, transfer=False, calibration=False
        ),
        out=str(Path(student) / "bench-evaluation"),
    )
    suite, paths = evaluate_runs(request)
    evaluated = time.perf_counter() - started - trained
    print(f"student {student}: distilled in {trained:.0f} s, evaluated in {evaluated:.0f} s on {suite.indices.size} "
          f"held-out scans of {suite.dataset} (synthetic: {suite.synthetic})")
    rows = verdict_table([verdict.to_dict() for verdict in suite.verdicts])
    print("| " + " | ".join(VERDICT_COLUMNS) + " |")
    print("|" + "---|" * len(VERDICT_COLUMNS))
    for row in rows:
        print("| " + " | ".join(row[name] for name in VERDICT_COLUMNS) + " |")
    print(f"report: {paths['html']}")


if __name__ == "__main__":
    main()
