"""Attack speed: our engine against torchattacks 3.3.0 on the same model and inputs, in one run.

    python bench/attacks.py            # ResNet50 at 224x224, one scan and a batch of 16, CPU (+ CUDA)
    python bench/attacks.py --quick    # ResNet18 at 64x64, a few attacks: a cheap smoke run

Prints a Markdown table: per device, batch and attack, our median time at default settings,
torchattacks' at the same settings where it has the attack (and it works with three classes),
their ratio, and PGD-10 on one scan against 11 forward+backward passes timed in the same run
(the target is at most 1.15x). The model is randomly initialised: timings, not robustness.
Labels are the model's own predictions, so every attack starts from a correctly classified scan.
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
               "ours bisects c over 5 rounds; torchattacks runs one c"),
        "cw (1 round)": ({"binary_search_steps": 1}, lambda m: ta.CW(m, c=1, kappa=0, steps=50, lr=0.01),
                         "equal settings"),
        "deepfool": ({}, lambda m: ta.DeepFool(m, steps=50, overshoot=0.02), ""),
        "ead": ({}, None, "not in torchattacks 3.3.0"),
        "autoattack": ({}, None, "torchattacks' AutoAttack needs >= 4 classes"),
    }


QUICK = ("fgsm", "pgd", "apgd", "cw (1 round)", "deepfool")


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of ``run``; one warm-up call, skipped from the median unless it alone took > 2 s."""
    synchronise(device)
    start = time.perf_counter()
    run()
    synchronise(device)
    first = time.perf_counter() - start
    if first > 2.0 or repeats <= 1:
        return first
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronise(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
            ours = timed(lambda: attack(model, x, y), device, repeats)
            reference = timed(lambda: theirs(model)(x, y), device, repeats) if theirs else None
            rows.append([device.type, str(batch), name, f"{ours * 1000:.0f}",
                         f"{reference * 1000:.0f}" if reference else "-",
                         f"{ours / reference:.2f}" if reference else "-", note])
        if batch == 1:
            baseline = timed(lambda: forward_backward(model, x, 11), device, repeats)
            pgd = timed(lambda: get_attack("pgd", steps=10)(model, x, y), device, repeats)
            rows.append([device.type, "1", "PGD-10 / 11 fwd+bwd", f"{pgd * 1000:.0f}",
                         f"{baseline * 1000:.0f}", f"{pgd / baseline:.2f}",
                         "2nd time column: 11 fwd+bwd; target <= 1.15"])
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="ResNet18 at 64x64 and a few attacks (smoke run)")
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                        help="all: CPU, and CUDA when present")
    parser.add_argument("--attacks", nargs="*",
                        help="subset of attacks (default: all, or a few with --quick)")
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
    print("| device | batch | attack | ours (ms) | torchattacks (ms) | ratio | note |")
    print("|---|---|---|---|---|---|---|")
    for device in devices:
        for row in bench_device(device, arch, size, (1, 16), names, args.repeats):
            print("| " + " | ".join(row) + " |", flush=True)
    print("\nratio = ours / torchattacks at the same settings (below 1: we are faster); the last row of each "
          "device compares PGD-10 with 11 forward+backward passes of the same scan.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
