"""Training throughput: images/s of standard, FGSM-RS and PGD-k training, and their cost ratios.

Each strategy trains through the real loop (``pipeline.training.train``) on the synthetic
phantom; the figure is the training phase of the fastest epoch after the first (which pays for
cuDNN autotuning and compilation), evaluation excluded. Targets: PGD-k within 1.1*(k+1) of a standard
epoch, FGSM-RS within 2.2x.

    python bench/train.py --quick            # seconds on a CPU: checks that the script runs
    python bench/train.py                    # ResNet50 at 224 px on the best device

The quick preset's accuracy and the robust gap on the phantom are measured by ``bench/demo.py``.

Figures on the synthetic phantom are engineering measurements, not medical results.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import describe  # noqa: E402
from pipeline.allocator import keep_freed_memory  # noqa: E402
from pipeline.device import select_device  # noqa: E402
from pipeline.store import read_metrics  # noqa: E402
from pipeline.training import TrainConfig, train  # noqa: E402


def strategy_rates(
    device: torch.device,
    *,
    arch: str,
    image_size: int,
    batch_size: int,
    count: int,
    steps: int,
    compile: bool = False,
    epochs: int = 3,
    **settings: object,
) -> Iterator[tuple[str, float]]:
    """``(label, images/s)`` of standard, FGSM-RS and PGD-``steps`` training, in that order.

    Each trains ``epochs`` epochs through the real loop (untracked: MLflow is not what is timed);
    the rate is the training phase of the fastest epoch after the first, which pays for autotuning
    and compilation. ``settings`` override the other training fields (e.g. a cheaper validation).
    """
    base = dict(
        arch=arch,
        image_size=image_size,
        batch_size=batch_size,
        count=count,
        epochs=epochs,
        val_steps=1,
        eval_size=8,
        device=str(device),
        compile=compile,
        val_fraction=0.05,
        test_fraction=0.05,
        optimizer="sgd",
        lr=0.01,
        **settings,
    )
    with tempfile.TemporaryDirectory() as runs:
        for label, strategy in (("standard", "standard"), ("fgsm-rs", "fgsm-rs"), (f"pgd-{steps}", "pgd")):
            config = TrainConfig.from_dict({**base, "strategy": strategy, "steps": steps})
            run_dir = train(config, runs, track=False)
            # the fastest epoch after the first: least disturbed by other load
            yield label, max(line["images_per_s"] for line in read_metrics(run_dir)[1:])


def epoch_limit(label: str, steps: int) -> float:
    """The most a strategy's epoch may cost relative to standard training's (PGD-k: 1.1 (k+1))."""
    return {"standard": 1.0, "fgsm-rs": 2.2}.get(label, round(1.1 * (steps + 1), 1))


def throughput(args: argparse.Namespace) -> None:
    device = select_device(args.device)
    print(
        f"# training throughput, {datetime.date.today()}, {describe(device)}, "
        f"{args.arch} at {args.image_size} px, batch {args.batch_size}, {args.count} synthetic scans"
    )
    print("| strategy | images/s | epoch cost vs standard | target |")
    print("|---|---|---|---|")
    rates: dict[str, float] = {}
    rows = strategy_rates(device, arch=args.arch, image_size=args.image_size, batch_size=args.batch_size,
                          count=args.count, steps=args.steps, compile=args.compile)
    for label, rate in rows:
        rates[label] = rate
        ratio = rates["standard"] / rate
        target = "-" if label == "standard" else f"<= {epoch_limit(label, args.steps):g}"
        print(f"| {label} | {rate:.1f} | {ratio:.2f}x | {target} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke test of this script")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--count", type=int, default=1200)
    parser.add_argument("--steps", type=int, default=7, help="k of PGD-k")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    keep_freed_memory()  # as python -m pipeline train does
    if args.quick:
        args.arch, args.image_size, args.batch_size, args.count, args.steps = "resnet18", 32, 16, 120, 2
    throughput(args)


if __name__ == "__main__":
    main()
