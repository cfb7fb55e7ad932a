"""Time of the reference table: PGD, FGSM, CW, the per-scan combined column and AutoAttack.

    python bench/evaluate.py            # ResNet50 at 224 px on the synthetic test split, CPU and CUDA
    python bench/evaluate.py --quick    # ResNet18 at 32 px on a few scans: a smoke run of this script
    python bench/evaluate.py --strength # also time the full strength checks at the same epsilon

Prints a Markdown table per device: seconds per attack column (the combined column is computed
from the others, so it costs nothing), the clean pass, the total, and scans per second. The
model is randomly initialised and each scan is labelled with the model's own prediction, so
every scan is attacked (the evaluation attacks only correctly classified scans); such a model is
hard to fool, so AutoAttack runs every member on every scan: worst-case timings, not robustness.
Figures on the synthetic phantom are engineering measurements, not medical results.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import describe  # noqa: E402
from pipeline.data import load_dataset, split_dataset  # noqa: E402
from pipeline.evaluation import AttackSpec, StrengthSettings, evaluate, reference_attacks, strength_checks  # noqa: E402
from pipeline.evaluation.batches import stopwatch  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.units import format_epsilon, parse_epsilon  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke run of this script")
    parser.add_argument("--strength", action="store_true", help="also time the strength checks")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--count", type=int, default=1200, help="synthetic scans (the test split is 15%%)")
    parser.add_argument("--limit", type=int, help="use only the first N test scans")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eps", default="4/255")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--ensemble-steps", type=int, default=20)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--cpu-only", action="store_true", help="skip CUDA even when present")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
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
