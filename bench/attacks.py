"""Attack speed: our engine against torchattacks 3.3.0 on the same model and inputs, in one run.

    python bench/attacks.py            # ResNet50 at 224x224, one scan and a batch of 16, CPU (+ CUDA)
    python bench/attacks.py --quick    # ResNet18 at 64x64, a few attacks: a cheap smoke run

Prints a Markdown table: per device, batch and attack, our median time at default settings,
torchattacks' at the same settings where it has the attack (and it works with three classes),
their ratio, each side's success rate and median L2 on the scans it fooled (a faster attack that
fools fewer scans is no gain), and PGD-10 on one scan against 11 forward+backward passes timed in
the same run (the target is at most 1.15x). Ours and theirs are timed in turns, so a load that
comes and goes on a shared machine falls on both. The model is randomly initialised: timings, not
robustness. Labels are the model's own predictions, so every attack starts from a correctly
classified scan.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.attacks import get_attack  # noqa: E402
from pipeline.models import build_model  # noqa: E402

EPS = 4 / 255

#: name -> (our parameters, torchattacks factory at the same settings or None, note)
Theirs = Optional[Callable[[torch.nn.Module], Callable]]


def catalogue() -> dict[str, tuple[dict, Theirs, str]]:
    import torchattacks as ta

    return {
        "fgsm": ({}, lambda m: ta.FGSM(m, eps=EPS), ""),
        "bim": ({}, lambda m: ta.BIM(m, eps=EPS, alpha=EPS / 4, steps=10), ""),
        "pgd": ({}, lambda m: ta.PGD(m, eps=EPS, alpha=EPS / 4, steps=10, random_start=True), ""),
        "pgdl2": ({}, lambda m: ta.PGDL2(m, eps=0.5, alpha=0.125, steps=10, random_start=True), ""),
        "mifgsm": ({}, lambda m: ta.MIFGSM(m, eps=EPS, alpha=EPS / 4, steps=10, decay=1.0), ""),
        "cw-linf": ({}, None, "no torchattacks counterpart"),
        "pgd-kl": ({}, None, "TRADES' inner step; no torchattacks counterpart"),
        "apgd": ({}, lambda m: ta.APGD(m, eps=EPS, steps=20, n_restarts=1, loss="ce", seed=0), ""),
        "apgd-dlr": ({}, lambda m: ta.APGD(m, eps=EPS, steps=20, n_restarts=1, loss="dlr", seed=0), ""),
        "apgd-t": ({}, None, "torchattacks' APGD-T needs >= 4 classes"),
        "cw": ({}, lambda m: ta.CW(m, c=1, kappa=0, steps=50, lr=0.01),
               "ours: c estimated per scan, then 5 warm-started rounds of bisection; torchattacks: one c"),
        "cw (1 round)": ({"c": 1.0, "binary_search_steps": 1},
                         lambda m: ta.CW(m, c=1, kappa=0, steps=50, lr=0.01), "equal settings"),
        "deepfool": ({}, lambda m: ta.DeepFool(m, steps=50, overshoot=0.02), ""),
        "ead": ({}, None, "not in torchattacks 3.3.0"),
        "autoattack": ({}, None, "torchattacks' AutoAttack needs >= 4 classes"),
    }


QUICK = ("fgsm", "pgd", "apgd", "cw (1 round)", "deepfool")


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(runs: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, float]:
    """Median seconds of each run, timed in turns; one warm-up round, skipped from the median unless
    it alone took > 2 s per run (then that round is the measurement)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(repeats + 1):
        for name, run in runs.items():
            synchronise(device)
            start = time.perf_counter()
            run()
            synchronise(device)
            times[name].append(time.perf_counter() - start)
        if round_ == 0 and (max(t[0] for t in times.values()) > 2.0 or repeats <= 1):
            return {name: values[0] for name, values in times.items()}
    return {name: statistics.median(values[1:]) for name, values in times.items()}


def outcome(model: torch.nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> tuple[str, str]:
    """Success rate and median L2 over the fooled scans, as table cells."""
    with torch.no_grad():
        fooled = (model(x_adv).argmax(1) != y).cpu()
    sizes = (x_adv - x).flatten(1).norm(dim=1).cpu()
    median = f"{float(sizes[fooled].median()):.3f}" if fooled.any() else "-"
    return f"{int(fooled.sum())}/{len(fooled)}", median


def forward_backward(model: torch.nn.Module, x: torch.Tensor, passes: int) -> None:
    for _ in range(passes):
        point = x.detach().requires_grad_(True)
        torch.autograd.grad(model(point).sum(), point)


def bench_device(device: torch.device, arch: str, size: int, batches: tuple[int, ...], names: list[str],
                 repeats: int) -> list[list[str]]:
    torch.manual_seed(0)
    model = build_model(arch).to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    rows = []
    table = catalogue()
    for batch in batches:
        x = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(1)).to(device)
        with torch.no_grad():
            y = model(x).argmax(1)
        for name in names:
            params, theirs, note = table[name]
            attack = get_attack(name.split(" ")[0], **params)
            results: dict[str, torch.Tensor] = {}

            def ours() -> None:
                results["ours"] = attack(model, x, y)

            def reference() -> None:
                results["theirs"] = theirs(model)(x, y)

            spent = timed({"ours": ours, "theirs": reference} if theirs else {"ours": ours}, device, repeats)
            ours_cells = outcome(model, x, results["ours"], y)
            theirs_cells = outcome(model, x, results["theirs"], y) if theirs else ("-", "-")
            rows.append([device.type, str(batch), name, f"{spent['ours'] * 1000:.0f}",
                         f"{spent['theirs'] * 1000:.0f}" if theirs else "-",
                         f"{spent['ours'] / spent['theirs']:.2f}" if theirs else "-",
                         ours_cells[0], theirs_cells[0], ours_cells[1], theirs_cells[1], note])
        if batch == 1:
            spent = timed({"pgd": lambda: get_attack("pgd", steps=10)(model, x, y),
                           "baseline": lambda: forward_backward(model, x, 11)}, device, repeats)
            rows.append([device.type, "1", "PGD-10 / 11 fwd+bwd", f"{spent['pgd'] * 1000:.0f}",
                         f"{spent['baseline'] * 1000:.0f}", f"{spent['pgd'] / spent['baseline']:.2f}",
                         "-", "-", "-", "-", "2nd time column: 11 fwd+bwd; target <= 1.15"])
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="ResNet18 at 64x64 and a few attacks (smoke run)")
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                        help="all: CPU, and CUDA when present")
    parser.add_argument("--attacks", nargs="*",
                        help="subset of attacks (default: all, or a few with --quick)")
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 16], help="batch sizes (default: 1 16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after a warm-up (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    arch, size = ("resnet18", 64) if args.quick else ("resnet50", 224)
    names = args.attacks or (list(QUICK) if args.quick else list(catalogue()))
    unknown = sorted(set(names) - set(catalogue()))
    if unknown:
        parser.error(f"unknown attacks {unknown}; choose from {list(catalogue())}")
    devices = [torch.device("cpu")] if args.device != "cuda" else []
    if args.device != "cpu" and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    elif args.device == "cuda":
        parser.error("CUDA is not available")

    print(f"# Attack timings: {arch} at {size}x{size}, eps {EPS * 255:.0f}/255, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads\n")
    print("| device | batch | attack | ours (ms) | torchattacks (ms) | ratio | ours fooled | theirs fooled "
          "| ours median L2 | theirs median L2 | note |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for device in devices:
        for row in bench_device(device, arch, size, tuple(args.batches), names, args.repeats):
            print("| " + " | ".join(row) + " |", flush=True)
    print("\nratio = ours / torchattacks at the same settings (below 1: we are faster); the last row of each "
          "device compares PGD-10 with 11 forward+backward passes of the same scan.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
