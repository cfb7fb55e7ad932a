"""Training throughput: images/s of standard, FGSM-RS and PGD-k training, and their cost ratios.

Each strategy trains through the real loop (``pipeline.training.train``) on the synthetic
phantom; the figure is the training phase of the fastest epoch after the first (which pays for
cuDNN autotuning and compilation), evaluation excluded. Targets: PGD-k within 1.1*(k+1) of a standard
epoch, FGSM-RS within 2.2x.

    python bench/train.py --quick            # seconds on a CPU: checks that the script runs
    python bench/train.py                    # ResNet50 at 224 px on the best device
    python bench/train.py --preset-check     # wall time and accuracy of the quick preset (CPU)

Figures on the synthetic phantom are engineering measurements, not medical results.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import describe  # noqa: E402
from pipeline.device import select_device  # noqa: E402
from pipeline.evaluation import evaluate  # noqa: E402
from pipeline.evaluation.data import run_data  # noqa: E402
from pipeline.runs import load_model, read_metrics, read_record  # noqa: E402
from pipeline.training import TrainConfig, train  # noqa: E402


def throughput(args: argparse.Namespace) -> None:
    device = select_device(args.device)
    base = dict(
        arch=args.arch,
        image_size=args.image_size,
        batch_size=args.batch_size,
        count=args.count,
        epochs=3,
        val_steps=1,
        eval_size=8,
        device=str(device),
        compile=args.compile,
        val_fraction=0.05,
        test_fraction=0.05,
        optimizer="sgd",
        lr=0.01,
    )
    strategies = [("standard", "standard"), ("fgsm-rs", "fgsm-rs"), (f"pgd-{args.steps}", "pgd")]
    print(
        f"# training throughput, {datetime.date.today()}, {describe(device)}, "
        f"{args.arch} at {args.image_size} px, batch {args.batch_size}, {args.count} synthetic scans"
    )
    print("| strategy | images/s | epoch cost vs standard | target |")
    print("|---|---|---|---|")
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as runs:
        for label, strategy in strategies:
            run_dir = train(TrainConfig(**base, strategy=strategy, steps=args.steps), runs)
            # the fastest epoch after the first (which pays for autotuning): least disturbed by other load
            rates[label] = max(line["images_per_s"] for line in read_metrics(run_dir)[1:])
            ratio = rates["standard"] / rates[label]
            target = {"standard": "-", "fgsm-rs": "<= 2.2"}.get(label, f"<= {1.1 * (args.steps + 1):.1f}")
            print(f"| {label} | {rates[label]:.1f} | {ratio:.2f}x | {target} |", flush=True)


def preset_check(args: argparse.Namespace) -> None:
    """The quick preset's promise: minutes on a CPU, clearly above chance on the phantom."""
    device = select_device(args.device)
    print(f"# quick preset check, {datetime.date.today()}, {describe(device)}")
    print("| strategy | wall time (s) | val acc | val PGD acc | test acc | epochs |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as runs:
        for strategy in ("standard", "fgsm-rs"):
            config = TrainConfig.from_preset("quick", strategy=strategy, device=str(device))
            started = time.perf_counter()
            run_dir = train(config, runs)
            wall = time.perf_counter() - started
            best = read_record(run_dir).best
            print(
                f"| {strategy} | {wall:.0f} | {best['val_acc']:.3f} | {best['val_robust_acc']:.3f} | "
                f"{held_out_accuracy(run_dir, device):.3f} | {len(read_metrics(run_dir))} |",
                flush=True,
            )


def held_out_accuracy(run_dir: Path, device: torch.device) -> float:
    """Clean accuracy of the kept model on the run's own held-out test split."""
    model, record = load_model(run_dir, device=device)
    dataset, split = run_data(record.config)
    return evaluate(model, dataset, split.test, [], device=device).clean.accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke test of this script")
    parser.add_argument(
        "--preset-check", action="store_true", help="time the quick preset (standard, fgsm-rs)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--count", type=int, default=1200)
    parser.add_argument("--steps", type=int, default=7, help="k of PGD-k")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    if args.preset_check:
        preset_check(args)
        return
    if args.quick:
        args.arch, args.image_size, args.batch_size, args.count, args.steps = "resnet18", 32, 16, 120, 2
    throughput(args)


if __name__ == "__main__":
    main()
