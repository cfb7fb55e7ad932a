"""The GPU check in one call: CUDA contract tests, training throughput, attack latency, one table.

Run through ``bench/gpu.sh`` (which installs carried wheels offline first). On a CUDA machine it
measures, at full size:

- the contract tests that need CUDA (every test marked ``cuda``; skipped on a CPU),
- standard ResNet-50 training at 224 px through the real loop (bf16 autocast, channels_last,
  the data resident on the GPU): images/s, target >= 3,000 on an H200, goal 4,000,
- the cost of an FGSM-RS and a PGD-7 epoch relative to a standard one (targets 2.2x and 8.8x),
- PGD-10 on one scan: its latency and its ratio to 11 forward+backward passes (target 1.15x),
- the demo's GPU recipe end to end (``pipeline.demo``): the standard and the robust ResNet-50 at
  224 px, their held-out accuracy clean and under PGD-20 (target: standard >= 0.95 clean),
- the evaluation sharded by torchrun over every GPU of the machine (``pipeline.evaluation.shards``):
  its time against one process's, and whether every scan's answer under every attack is the same,
- optionally (``--compile``), standard training under ``torch.compile``.

Without CUDA it runs the same steps as a dry pass at tiny sizes (ResNet-18, 32 px, a few scans)
so that CI keeps the script working; a dry pass reports no figure against a target (its sharded
evaluation runs on two CPU processes with gloo).

The table goes to stdout and to ``gpu-table.md`` in ``--out`` (rewritten after every step, so a
run stopped by its time limit keeps what it measured); the contract tests' log to
``gpu-tests.log`` beside it. Steps past the time budget are skipped and say so.
Figures on the synthetic phantom are engineering measurements, not medical results.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.attacks import forward_backward, timed  # noqa: E402
from bench.common import describe  # noqa: E402
from bench.train import epoch_limit, strategy_rates  # noqa: E402
from pipeline.allocator import keep_freed_memory  # noqa: E402
from pipeline.attacks import get_attack  # noqa: E402
from pipeline.data import load_dataset  # noqa: E402
from pipeline.demo import RECIPES, DemoRecipe, prepare_demo  # noqa: E402
from pipeline.device import mixed_precision  # noqa: E402
from pipeline.evaluation import EvaluationRequest, SuiteSettings, evaluate_runs  # noqa: E402
from pipeline.evaluation.report import read_report  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.training import TrainConfig, train  # noqa: E402

#: images/s of standard ResNet-50 training at 224 px on one H200 (issue 18): target and goal.
TARGET, GOAL = 3000.0, 4000.0
TABLE, TESTS_LOG, SHARDED_LOG = "gpu-table.md", "gpu-tests.log", "gpu-sharded.log"


@dataclass(frozen=True)
class Sizes:
    """What one pass measures; the dry pass shrinks everything but the steps themselves."""

    arch: str
    image_size: int
    batch_size: int
    count: int
    epochs: int
    pgd_steps: int
    latency_repeats: int


FULL = Sizes("resnet50", 224, 128, 1920, 3, 7, 20)
DRY = Sizes("resnet18", 32, 16, 60, 2, 2, 1)  #: the training tests' phantom: already cached


class Report:
    """The rows so far; written out in full after every step."""

    def __init__(self, out: Path, header: str) -> None:
        self.path, self.header, self.rows = out / TABLE, header, []
        self.failed = False

    def add(self, step: str, value: str, target: str = "", note: str = "") -> None:
        self.rows.append((step, value, target, note))
        print(f"| {step} | {value} | {target} | {note} |", flush=True)
        self.path.write_text(self.text())

    def text(self) -> str:
        lines = [self.header, "", "| step | figure | target | note |", "|---|---|---|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------- steps
def contract_tests(report: Report, sizes: Sizes, device: torch.device, out: Path, budget: float) -> None:
    """Every test marked ``cuda`` in the suite (collected from the files that use the marker)."""
    files = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "tests").glob("test_*.py")
                   if "mark.cuda" in path.read_text())
    command = [sys.executable, "-m", "pytest", "-n", "0", "-q", "-m", "cuda", "-p", "no:cacheprovider",
               "--timeout", "120", *files]
    limit = min(budget, 300.0)
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired as stopped:
        (out / TESTS_LOG).write_text(_text(stopped.stdout) + _text(stopped.stderr))
        report.failed = True
        report.add("contract tests marked cuda", "TIMED OUT", "all pass",
                   f"after {limit:.0f} s; see {TESTS_LOG}")
        return
    (out / TESTS_LOG).write_text(done.stdout + done.stderr)
    summary = _pytest_summary(done.stdout)
    if done.returncode not in (0, 5):  # 5: every test deselected, which the counts show
        report.failed = True
    note = f"{len(files)} files; log in {TESTS_LOG}" + ("" if device.type == "cuda" else "; no CUDA: skipped")
    report.add("contract tests marked cuda", summary, "all pass", note)


def training(report: Report, sizes: Sizes, device: torch.device, out: Path, budget: float,
             compile: bool = False) -> None:
    """Standard, FGSM-RS and PGD-k training through the real loop; rates and epoch-cost ratios."""
    started = time.perf_counter()
    load_dataset("synthetic", image_size=sizes.image_size, count=sizes.count)  # render once, cached
    report.add("render the phantom", f"{time.perf_counter() - started:.1f} s",
               note=f"{sizes.count} scans at {sizes.image_size} px, cached for the runs below")
    full = device.type == "cuda" and sizes is FULL
    steps_per_epoch = int(sizes.count * 0.9) // sizes.batch_size
    rates: dict[str, float] = {}
    rows = strategy_rates(device, arch=sizes.arch, image_size=sizes.image_size, batch_size=sizes.batch_size,
                          count=sizes.count, steps=sizes.pgd_steps, compile=compile, epochs=sizes.epochs)
    for label, rate in rows:
        rates[label] = rate
        setting = (f"{sizes.arch}, {sizes.image_size} px, batch {sizes.batch_size}, "
                   f"{steps_per_epoch} steps/epoch")
        if compile:
            report.add("standard training, torch.compile (images/s)", f"{rate:.0f}", "", setting)
            return
        if label == "standard":
            target = f">= {TARGET:.0f} (goal {GOAL:.0f})" if full else "dry pass"
            verdict = ("met" if rate >= TARGET else "NOT met") if full else ""
            precision = mixed_precision(device)
            path = (f"{'bf16' if precision == torch.bfloat16 else precision or 'fp32'} autocast, channels_last, "
                    f"data on the {'GPU' if device.type == 'cuda' else 'CPU'}")
            report.add("standard training (images/s)", f"{rate:.0f}", target,
                       f"{setting}; {path}; {verdict}".rstrip("; "))
        else:
            ratio, limit = rates["standard"] / rate, epoch_limit(label, sizes.pgd_steps)
            verdict = ("met" if ratio <= limit else "NOT met") if full else "dry pass"
            report.add(f"{label} epoch cost vs standard", f"{ratio:.2f}x", f"<= {limit:g}",
                       f"{rate:.0f} images/s; {verdict}")


def compiled_training(report: Report, sizes: Sizes, device: torch.device, out: Path, budget: float) -> None:
    training(report, sizes, device, out, budget, compile=True)


def latency(report: Report, sizes: Sizes, device: torch.device, out: Path, budget: float) -> None:
    """PGD-10 on one scan (the Attack page's call) against 11 forward+backward passes of it."""
    torch.manual_seed(0)
    model = build_model(sizes.arch).to(device).eval()
    side = sizes.image_size
    x = torch.rand(1, 1, side, side, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)
    pgd = get_attack("pgd", steps=10)
    times = timed({"attack": lambda: pgd(model, x, y), "passes": lambda: forward_backward(model, x, 11)},
                  device, sizes.latency_repeats)
    attack_s, passes_s = times["attack"], times["passes"]
    ratio = attack_s / passes_s
    verdict = ("met" if ratio <= 1.15 else "NOT met") if device.type == "cuda" else "dry pass"
    report.add("PGD-10 on one scan (ms)", f"{attack_s * 1000:.1f}", "",
               f"{sizes.arch} at {sizes.image_size} px, fp32, median of {sizes.latency_repeats}")
    report.add("PGD-10 / 11 forward+backward", f"{ratio:.2f}x", "<= 1.15", verdict)


#: The demo's recipe shrunk for the dry pass: seconds on a CPU, the same code path.
DRY_DEMO = DemoRecipe(
    name="dry", preset="quick",
    standard={"image_size": 32, "count": 60, "val_fraction": 0.2, "test_fraction": 0.2, "epochs": 1,
              "eval_size": 8},
    robust={"strategy": "pgd", "eps": 4 / 255, "steps": 1, "epochs": 1, "val_steps": 1},
    minutes=0.5, machine="a CPU", shares=(0.4, 0.4, 0.2), eval_steps=1,
)


def demo(report: Report, sizes: Sizes, device: torch.device, out: Path, budget: float) -> None:
    """The demo's GPU recipe end to end: both models and their held-out figures (issue 12's GPU preset)."""
    full = device.type == "cuda" and sizes is FULL
    recipe = RECIPES["gpu"] if full else DRY_DEMO
    with tempfile.TemporaryDirectory() as runs:
        started = time.perf_counter()
        prepared = prepare_demo(runs, recipe, device=str(device))
        wall = time.perf_counter() - started
    low = 2 / 255
    for model in prepared.models:
        target = (">= 0.95 clean" if model.role == "standard" else "") if full else "dry pass"
        verdict = ("met" if model.clean >= 0.95 else "NOT met") if full and model.role == "standard" else ""
        report.add(f"demo {model.role} model: clean / PGD-{prepared.eval_steps} 2/255",
                   f"{model.clean:.3f} / {model.robust[low]:.3f}", target,
                   f"trained in {model.seconds:.0f} s; lowest class recall {min(model.recall):.2f}; {verdict}"
                   .rstrip("; "))
    report.add("demo preparation, whole", f"{wall:.0f} s", "", f"recipe {recipe.name}: {prepared.story}")


def sharded_evaluation(report: Report, sizes: Sizes, device: torch.device, out: Path, budget: float) -> None:
    """One run's evaluation (the attack table and the robustness curve) in one process, then under
    ``torchrun --nproc-per-node N`` with N the GPUs of the machine (two gloo processes in the dry
    pass): each time, and how many (scan, attack) answers agree (target: all)."""
    full = device.type == "cuda" and sizes is FULL
    processes = torch.cuda.device_count() if device.type == "cuda" else 2
    with tempfile.TemporaryDirectory() as folder:
        where = Path(folder)
        # Quality is not what is checked here: one epoch at a small learning rate, near the initial
        # weights, gives answers that the attacks change on many scans.
        config = dict(arch=sizes.arch, image_size=sizes.image_size, count=sizes.count,
                      batch_size=sizes.batch_size, epochs=1, lr=1e-5, val_steps=1, eval_size=8,
                      device=str(device))
        run_dir = train(TrainConfig.from_dict(config), where / "runs", track=False)
        suite = (SuiteSettings(strength=False, faithfulness_scans=0, batch_size=64) if full else
                 SuiteSettings(attacks=("fgsm", "pgd"), epsilons=(16 / 255,), curve_epsilons=(), steps=2,
                               strength=False, faithfulness_scans=0, batch_size=8))
        request = EvaluationRequest(runs=(str(run_dir),), suite=suite, split="all", limit=256 if full else 24,
                                    device=device.type, out=str(where / "one"))
        benchmark = torch.backends.cudnn.benchmark  # the training steps turned it on; a fresh process has not
        torch.backends.cudnn.benchmark = False
        try:
            evaluate_runs(request)
        finally:
            torch.backends.cudnn.benchmark = benchmark
        settings = where / "request.json"
        settings.write_text(json.dumps(dataclasses.replace(request, out=str(where / "sharded")).to_dict()))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={processes}", "-m", "pipeline", "evaluate", "--quiet", "--config-json",
                   str(settings)]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=budget)
        wall = time.perf_counter() - started
        (out / SHARDED_LOG).write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise RuntimeError(f"torchrun exited with {done.returncode}; see {SHARDED_LOG}")
        one, sharded = (read_report(where / name / "report.json") for name in ("one", "sharded"))
    answers = [(mine["predictions"], theirs["predictions"]) for mine, theirs in
               zip(one["models"][0]["report"]["attacks"], sharded["models"][0]["report"]["attacks"])]
    same = sum(a == b for mine, theirs in answers for a, b in zip(mine, theirs))
    total = sum(len(mine) for mine, _ in answers)
    gpus = f"{processes} GPU{'s' * (processes > 1)}"
    shared = gpus if device.type == "cuda" else f"{processes} CPU processes"
    setting = f"{sizes.arch} at {sizes.image_size} px, {one['scans']} scans, {len(answers)} attacks"
    report.add("sharded evaluation / one process (s)", f"{sharded['seconds']:.1f} / {one['seconds']:.1f}", "",
               f"torchrun on {shared}; {setting}; its whole run {wall:.0f} s with start-up; "
               f"log in {SHARDED_LOG}")
    verdict = ("met" if same == total else "NOT met") if full else "dry pass"
    report.add("sharded evaluation: same answer per scan and attack", f"{same}/{total}", "all", verdict)


#: The steps in order, each with the seconds it needs at full size to be worth starting.
STEPS: list[tuple[str, Callable[..., None], float]] = [
    ("contract tests", contract_tests, 60.0),
    ("training throughput", training, 150.0),
    ("PGD-10 latency", latency, 20.0),
    ("demo, GPU recipe", demo, 120.0),
    ("sharded evaluation", sharded_evaluation, 60.0),
]
OPTIONAL = [("training throughput, compiled", compiled_training, 150.0)]


def run(out: Path, *, dry: bool, budget_s: float, compile: bool, only: Sequence[str] = ()) -> bool:
    """Every step within ``budget_s`` seconds (those whose name contains one of ``only``, when
    given); returns whether all that ran passed."""
    device = torch.device("cpu" if dry else "cuda")
    sizes = DRY if dry else FULL
    out.mkdir(parents=True, exist_ok=True)
    header = (f"# GPU check, {datetime.date.today()}, {describe(device)}"
              + (f", CUDA {torch.version.cuda}" if device.type == "cuda" else ", DRY PASS (no CUDA)")
              + "; synthetic phantom, not a medical result")
    print(header + "\n\n| step | figure | target | note |\n|---|---|---|---|", flush=True)
    report = Report(out, header)
    deadline = time.monotonic() + budget_s
    for name, step, needs in [*STEPS, *(OPTIONAL if compile else [])]:
        if only and not any(part in name for part in only):
            continue
        left = deadline - time.monotonic()
        if not dry and left < needs:
            why = f"{left:.0f} s of the budget left; the step needs about {needs:.0f}"
            report.add(name, "skipped", "", why)
            continue
        try:
            step(report, sizes, device, out, max(left, 30.0))
        except Exception as error:  # noqa: BLE001 - one failed step must not lose the others' figures
            report.failed = True
            report.add(name, "FAILED", "", f"{type(error).__name__}: {error}".replace("|", "/")[:300])
            traceback.print_exc()
    return not report.failed


def _text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def _pytest_summary(output: str) -> str:
    """pytest's closing counts (``3 passed, 40 skipped``), or what it said instead."""
    lines = [line.strip("= ") for line in output.strip().splitlines() if line.strip()]
    counts = [line for line in lines if re.search(r"\d+ (passed|failed|skipped|deselected|error)", line)]
    return re.sub(r" in [\d.]+s.*$", "", counts[-1]) if counts else (lines[-1] if lines else "no output")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out",
                        help="folder for the table and logs")
    parser.add_argument("--dry", action="store_true", help="tiny sizes on the CPU (the default without CUDA)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="skip steps that would overrun this")
    parser.add_argument("--compile", action="store_true",
                        help="also time standard training under torch.compile")
    parser.add_argument("--only", action="append", default=[], metavar="STEP",
                        help="run only the steps whose name contains STEP (repeatable), e.g. 'sharded'")
    args = parser.parse_args(argv)
    keep_freed_memory()  # as every lab process does (pipeline.allocator)
    dry = args.dry or not torch.cuda.is_available()
    return 0 if run(args.out, dry=dry, budget_s=args.budget_s, compile=args.compile, only=args.only) else 1


if __name__ == "__main__":
    raise SystemExit(main())
