"""Where an evaluation's time goes: the reference table's attacks, or a whole evaluation of saved runs.

    python bench/evaluate.py            # ResNet50 at 224 px on the synthetic test split, CPU and CUDA
    python bench/evaluate.py --quick    # ResNet18 at 32 px on a few scans: a smoke run of this script
    python bench/evaluate.py --strength # also time the full strength checks at the same epsilon
    python bench/evaluate.py --passes RUN   # one pass of a run's model per memory layout, interleaved
    python bench/evaluate.py --suite RUN RUN [--strength-level full] [--no-early-stop]
                                        # the whole evaluation of trained runs, as the CLI runs it,
                                        # timed section by section (attacks, strength checks,
                                        # calibration, corruptions, faithfulness) and attack by attack

Prints a Markdown table per device: seconds per attack column (the combined column is computed
from the others, so it costs nothing), the clean pass, the total, and scans per second. The
model is randomly initialised and each scan is labelled with the model's own prediction, so
every scan is attacked (the evaluation attacks only correctly classified scans); such a model is
hard to fool, so AutoAttack runs every member on every scan: worst-case timings, not robustness.
Figures on the synthetic phantom are engineering measurements, not medical results.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import describe  # noqa: E402
from pipeline.allocator import keep_freed_memory  # noqa: E402
from pipeline.data import load_dataset, split_dataset, split_groups  # noqa: E402
from pipeline.evaluation import AttackSpec, StrengthSettings, evaluate, reference_attacks, strength_checks  # noqa: E402
from pipeline.evaluation.batches import stopwatch  # noqa: E402
from pipeline.evaluation.corruption import CT_CORRUPTIONS  # noqa: E402
from pipeline.evaluation.data import run_data, split_indices  # noqa: E402
from pipeline.evaluation.strength import STRENGTH_LEVELS  # noqa: E402
from pipeline.evaluation.suite import SuiteSettings, evaluate_models  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.store import load_model  # noqa: E402
from pipeline.units import format_epsilon, parse_epsilon, parse_epsilons  # noqa: E402


def test_scans(args: argparse.Namespace, model: torch.nn.Module, device: torch.device) -> TensorDataset:
    """The synthetic test split, labelled with the model's own predictions."""
    dataset = load_dataset("synthetic", image_size=args.image_size, count=args.count)
    split = split_dataset(dataset)
    x, _ = dataset.tensors()
    x = x[torch.as_tensor(split.test[: args.limit] if args.limit else split.test)]
    with torch.no_grad():
        labels = torch.cat(
            [
                model(x[i : i + args.batch_size].to(device)).argmax(1).cpu()
                for i in range(0, len(x), args.batch_size)
            ]
        )
    return TensorDataset(x, labels)


def run(args: argparse.Namespace, device: torch.device) -> None:
    torch.manual_seed(0)
    model = build_model(args.arch).to(device).eval()
    scans = test_scans(args, model, device)
    specs = [
        *reference_attacks(args.eps, steps=args.steps),
        AttackSpec(
            "autoattack",
            {"eps": args.eps, "steps": args.ensemble_steps, "n_queries": args.queries},
            f"AutoAttack ε={format_epsilon(args.eps)}",
        ),
    ]
    evaluate(model, scans, range(min(2, len(scans))), specs[:1], batch_size=args.batch_size)  # warm-up
    report = evaluate(model, scans, None, specs, batch_size=args.batch_size)
    print(
        f"\n# reference table timing, {datetime.date.today()}, {describe(device)}, {args.arch} at "
        f"{args.image_size} px, {report.size} synthetic test scans, batch {args.batch_size}, "
        f"ε={format_epsilon(args.eps)}, {args.steps} steps"
    )
    print("| column | seconds | scans/s |")
    print("|---|---|---|")
    print(
        f"| clean pass | {report.clean_seconds:.2f} | {report.size / max(report.clean_seconds, 1e-9):.1f} |"
    )
    for result in report.attacks:
        print(f"| {result.label} | {result.seconds:.2f} | {report.size / max(result.seconds, 1e-9):.1f} |")
    print("| combined (per-scan worst case) | 0.00 | computed from the columns above |")
    total = report.clean_seconds + sum(result.seconds for result in report.attacks)
    print(f"| **total** | **{total:.2f}** | {report.size / total:.1f} |")
    if args.strength:
        settings = StrengthSettings(
            pgd_steps=args.steps, square_queries=args.queries, ensemble_steps=args.ensemble_steps
        )
        with stopwatch(device) as elapsed:
            strength_checks(
                model, scans, None, args.eps, baseline=report, settings=settings, batch_size=args.batch_size
            )
        print(
            f"| strength checks (reusing PGD and FGSM) | {elapsed[0]:.2f} | {report.size / elapsed[0]:.1f} |"
        )


class Ledger:
    """Per evaluation stage (the progress message before " — "): process CPU seconds, and scans the
    models saw in forward passes with and without a gradient (each with a gradient is one
    forward+backward). Work in scans does not depend on how loaded the machine is."""

    def __init__(self, models: dict[str, torch.nn.Module]) -> None:
        self.stage = "loading"
        self.mark = time.process_time()
        self.cpu: dict[str, float] = {}
        self.scans: dict[str, list[int]] = {}
        for model in models.values():
            model.register_forward_hook(self._count)

    def _count(self, _module: torch.nn.Module, inputs: tuple, _output: torch.Tensor) -> None:
        counts = self.scans.setdefault(self.stage, [0, 0])
        counts[torch.is_grad_enabled()] += int(inputs[0].shape[0])

    def progress(self, _done: int, _total: int, message: str) -> None:
        stage = message.split(" — ")[0]
        if stage != self.stage:
            self.close()
            self.stage = stage

    def close(self) -> None:
        now = time.process_time()
        self.cpu[self.stage] = self.cpu.get(self.stage, 0.0) + now - self.mark
        self.mark = now


def suite(args: argparse.Namespace) -> None:
    """The whole default evaluation of ``args.suite`` runs on their test split, timed by section."""
    loaded = [load_model(run) for run in args.suite]
    dataset, split = run_data(loaded[0][1])
    indices = split_indices(split, "test", dataset.labels, limit=args.limit)
    settings = SuiteSettings(
        attacks=tuple(args.attacks.split(",")),
        epsilons=tuple(parse_epsilons(args.eps)),
        strength_settings=STRENGTH_LEVELS[args.strength_level],
        early_stop=not args.no_early_stop,
        corruptions=CT_CORRUPTIONS if args.corruptions else (),
        faithfulness_scans=args.faithfulness_scans,
    )
    models = {record.name: model for model, record in loaded}
    info = {record.name: {"strategy": record.config.get("strategy")} for _, record in loaded}
    ledger = Ledger(models)
    cpu = time.process_time()
    groups = split_groups(dataset, split)
    result = evaluate_models(
        models, dataset, indices, settings, info=info, groups=groups, progress=ledger.progress
    )
    ledger.close()
    cpu = time.process_time() - cpu
    print(
        f"\n# whole evaluation, {datetime.date.today()}, {describe(torch.device('cpu'))}, {len(models)} "
        f"models, {indices.size} test scans of {dataset.name}, attacks {args.attacks} at {args.eps}, "
        f"strength {args.strength_level}, early stop {'off' if args.no_early_stop else 'on'}"
    )
    print(f"wall {result.seconds:.1f} s, CPU {cpu:.1f} s (process, all threads)")
    print("| stage | CPU s | share | scans forward | scans forward+backward |")
    print("|---|---|---|---|---|")
    for stage, seconds in ledger.cpu.items():
        forward, backward = ledger.scans.get(stage, [0, 0])
        print(f"| {stage} | {seconds:.1f} | {seconds / max(cpu, 1e-9):.0%} | {forward} | {backward} |")
    print("\n| model | attack (table, then strength checks) | wall s |")
    print("|---|---|---|")
    for entry in result.models:
        for attack in entry.report.attacks:
            print(f"| {entry.name} | {attack.label} | {attack.seconds:.1f} |")
        for check in entry.strength:
            for attack in check.extra.attacks:
                print(f"| {entry.name} | check: {attack.label} | {attack.seconds:.1f} |")
    for entry in result.models:
        print(f"{entry.name}: clean {entry.report.clean.accuracy:.1%}; " + "; ".join(
            f"{attack.label} {attack.accuracy:.1%}" for attack in entry.report.attacks
        ))


def passes(args: argparse.Namespace) -> None:
    """Milliseconds per scan of one forward pass and one forward+backward pass (the input gradient an
    attack step takes) of a run's model, in the contiguous layout and in the channels-last one
    :func:`pipeline.store.load_model` gives, interleaved round by round; and how far the logits differ."""
    loaded, record = load_model(args.passes)
    layouts = {
        "contiguous": copy.deepcopy(loaded).to(memory_format=torch.contiguous_format),
        "channels-last (as loaded)": loaded,
    }
    size = record.data.image_size
    x = torch.rand(args.batch_size, 1, size, size, generator=torch.Generator().manual_seed(0))
    y = torch.arange(args.batch_size) % loaded.num_classes

    def forward(model: torch.nn.Module) -> None:
        with torch.no_grad():
            model(x)

    def backward(model: torch.nn.Module) -> None:
        scans = x.clone().requires_grad_(True)
        torch.autograd.grad(torch.nn.functional.cross_entropy(model(scans), y), scans)

    timings: dict[tuple[str, str], list[float]] = {}
    for round_ in range(args.repeats + 1):  # the first round warms up
        for layout, model in layouts.items():
            for kind, work in (("forward", forward), ("forward+backward", backward)):
                started = time.perf_counter()
                work(model)
                if round_:
                    timings.setdefault((layout, kind), []).append(time.perf_counter() - started)
    with torch.no_grad():
        gap = (layouts["contiguous"](x) - loaded(x)).abs().max().item()
    print(f"\n# one pass, {datetime.date.today()}, {describe(torch.device('cpu'))}, {record.config['arch']} at "
          f"{size} px, batch {args.batch_size}, median of {args.repeats} interleaved rounds")
    print("| layout | forward ms/scan | forward+backward ms/scan |")
    print("|---|---|---|")
    medians = {
        key: sorted(values)[len(values) // 2] * 1000 / args.batch_size for key, values in timings.items()
    }
    for layout in layouts:
        print(f"| {layout} | {medians[layout, 'forward']:.2f} | {medians[layout, 'forward+backward']:.2f} |")
    base, fast = layouts
    print(f"channels-last: forward {medians[base, 'forward'] / medians[fast, 'forward']:.2f}x, forward+backward "
          f"{medians[base, 'forward+backward'] / medians[fast, 'forward+backward']:.2f}x as fast; "
          f"largest logit difference {gap:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", metavar="RUN", help="time one pass of this run's model per memory layout")
    parser.add_argument("--repeats", type=int, default=7, help="with --passes: rounds timed")
    parser.add_argument("--suite", nargs="+", metavar="RUN", help="time the whole evaluation of these runs")
    parser.add_argument("--attacks", default="fgsm,pgd,cw-linf", help="with --suite: the table's attacks")
    parser.add_argument("--strength-level", default="quick", choices=sorted(STRENGTH_LEVELS))
    parser.add_argument(
        "--no-early-stop", action="store_true", help="with --suite: go on attacking scans already fooled"
    )
    parser.add_argument("--corruptions", action="store_true", help="with --suite: add the CT corruptions")
    parser.add_argument("--faithfulness-scans", type=int, default=16, help="with --suite: 0 leaves it out")
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke run of this script")
    parser.add_argument("--strength", action="store_true", help="also time the strength checks")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--count", type=int, default=1200, help="synthetic scans (the test split is 15%%)")
    parser.add_argument("--limit", type=int, help="use only the first N test scans")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eps", default="4/255", help="one epsilon; with --suite a list like 2/255,4/255")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--ensemble-steps", type=int, default=20)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--cpu-only", action="store_true", help="skip CUDA even when present")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    args = parser.parse_args()
    keep_freed_memory()  # as python -m pipeline evaluate does
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.suite:
        suite(args)
        return
    if args.passes:
        passes(args)
        return
    args.eps = parse_epsilon(args.eps)
    if args.quick:
        args.arch, args.image_size, args.count, args.limit, args.batch_size = "resnet18", 32, 120, 12, 12
        args.steps, args.ensemble_steps, args.queries = 3, 3, 50
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device("cuda"))
    for device in devices:
        run(args, device)


if __name__ == "__main__":
    main()
