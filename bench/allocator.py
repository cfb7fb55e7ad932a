"""What keeping freed memory in the process (``pipeline.allocator``) buys a CPU step, by workload.

    python bench/allocator.py               # ResNet-18 steps, each setting in its own process, interleaved
    python bench/allocator.py --rounds 7    # more rounds of the pairs

glibc's malloc settings cannot be undone in a process, so every measurement is a fresh process: one with
glibc's defaults, one after :func:`pipeline.allocator.keep_freed_memory`, in turn, ``--rounds`` times. Each
times ``--steps`` steps after three warm-up steps and reports wall milliseconds per step, the process's
CPU seconds (user and system) and its minor page faults. Prints a Markdown table of medians and the
median of the paired speed-ups. Random inputs; nothing here is a medical result.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import describe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: (name, image size, batch, torch threads, kind): a small training step as the test suite and the quick
#: preset run it, and the demo's size with two threads, training and an attack's input-gradient step.
WORKLOADS = (
    ("training step, 64 px, batch 16, 1 thread", 64, 16, 1, "train"),
    ("training step, 112 px, batch 32, 2 threads", 112, 32, 2, "train"),
    ("attack step (input gradient), 112 px, batch 32, 2 threads", 112, 32, 2, "attack"),
)

CHILD = r"""
import json, resource, sys, time
keep, size, batch, threads, kind, steps = json.loads(sys.argv[1])
if keep:
    from pipeline.allocator import keep_freed_memory
    assert keep_freed_memory()
import torch
import torch.nn.functional as F
from pipeline.models import build_model
from pipeline.training.config import CPU_CHANNELS_LAST_FROM
torch.manual_seed(0)
torch.set_num_threads(threads)
model = build_model("resnet18", pretrained=False)
x = torch.rand(batch, 1, size, size)
if kind == "attack" or size >= CPU_CHANNELS_LAST_FROM:  # the layout the lab uses for each (bench/RESULTS.md)
    model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
y = torch.arange(batch) % 3
if kind == "attack":
    model.eval().requires_grad_(False)
    def step():
        scans = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(scans), y), scans)
else:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
for _ in range(3):
    step()
before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(steps):
    step()
wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"ms": 1000 * wall / steps,
                  "cpu": after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime,
                  "system": after.ru_stime - before.ru_stime,
                  "faults": (after.ru_minflt - before.ru_minflt) / steps}))
"""


def measure(keep: bool, size: int, batch: int, threads: int, kind: str, steps: int) -> dict[str, float]:
    """One fresh process's figures for one workload."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([keep, size, batch, threads, kind, steps])],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved pairs of processes per workload")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per process")
    args = parser.parse_args()
    print(f"\n# freed memory kept, {datetime.date.today()}, {describe(torch.device('cpu'))}, ResNet-18, "
          f"medians of {args.rounds} interleaved rounds of {args.steps} steps")
    print("| workload | glibc defaults: ms/step · faults/step · system CPU s "
          "| kept: ms/step · faults/step · system CPU s | speed-up (median of pairs) |")
    print("|---|---|---|---|")
    for name, size, batch, threads, kind in WORKLOADS:
        runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        for _ in range(args.rounds):
            for keep in (False, True):
                runs[keep].append(measure(keep, size, batch, threads, kind, args.steps))
        ratios = [plain["ms"] / kept["ms"] for plain, kept in zip(runs[False], runs[True])]

        def cell(results: list[dict[str, float]]) -> str:
            return " · ".join(f"{statistics.median(r[key] for r in results):{form}}"
                              for key, form in (("ms", ".0f"), ("faults", ",.0f"), ("system", ".2f")))

        print(f"| {name} | {cell(runs[False])} | {cell(runs[True])} | {statistics.median(ratios):.2f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f}) |")


if __name__ == "__main__":
    main()
