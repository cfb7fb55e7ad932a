"""Channels-last against contiguous (channels-first) memory on a CPU, by input size.

Channels-last lets oneDNN run convolutions without reordering activations, which pays off when the
activations are large. At small inputs the weights outweigh the activations, and the reorders of the
weight gradients in a training step (``aten::copy_`` inside ``convolution_backward``) cost more than
channels-last saves. Three passes are timed per size, each in interleaved rounds (median of
``--repeats``) in one process, so the ratio holds on a busy machine even where absolute times do not:

- a training step: forward and backward with the weights' gradients (``pipeline.training.loop``);
- an attack step: the gradient with respect to the scans only, in eval mode (``pipeline.attacks.base.gradient``);
- an inference pass: forward without gradients (evaluation, the dashboard).

    python bench/memory_format.py                          # ResNet-18, 1 thread, batch 16
    python bench/memory_format.py --arch resnet50 --sizes 64,112,224 --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import describe  # noqa: E402
from pipeline.models import build_model  # noqa: E402

PASSES = ("training step", "attack step", "inference")


def _pass(kind: str, model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    if kind == "training step":
        def step() -> None:
            model.zero_grad(set_to_none=True)
            model(x).sum().backward()
        return step
    if kind == "attack step":
        def attack() -> torch.Tensor:
            point = x.detach().requires_grad_(True)
            return torch.autograd.grad(model(point).sum(), point)[0]
        return attack

    def infer() -> torch.Tensor:
        with torch.no_grad():
            return model(x)
    return infer


def rows(arch: str, sizes: list[int], batch: int, repeats: int) -> list[tuple[int, str, float, float]]:
    """``(size, pass, contiguous s, channels-last s)`` per row, medians of interleaved rounds."""
    found: list[tuple[int, str, float, float]] = []
    for size in sizes:
        torch.manual_seed(0)
        plain = build_model(arch)
        last = build_model(arch).to(memory_format=torch.channels_last)
        last.load_state_dict(plain.state_dict())
        x = torch.rand(batch, 1, size, size)
        for kind in PASSES:
            mode = "train" if kind == "training step" else "eval"
            pair = (_pass(kind, getattr(plain, mode)(), x),
                    _pass(kind, getattr(last, mode)(), x.contiguous(memory_format=torch.channels_last)))
            for run in pair:  # a first round allocates and warms oneDNN's caches: not timed
                run()
            times: tuple[list[float], list[float]] = ([], [])
            for _ in range(repeats):
                for run, kept in zip(pair, times):
                    start = time.perf_counter()
                    run()
                    kept.append(time.perf_counter() - start)
            found.append((size, kind, statistics.median(times[0]), statistics.median(times[1])))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--sizes", default="32,48,64,96,112", help="input sizes in pixels, comma-separated")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(size) for size in args.sizes.split(",")]
    print(f"{datetime.date.today()}, {describe(torch.device('cpu'))}, {args.arch}, batch {args.batch}, "
          f"medians of {args.repeats} interleaved rounds")
    print("| input | pass | contiguous (ms) | channels-last (ms) | channels-last speed-up |")
    print("|---|---|---|---|---|")
    for size, kind, plain, last in rows(args.arch, sizes, args.batch, args.repeats):
        print(f"| {size} px | {kind} | {plain * 1e3:.1f} | {last * 1e3:.1f} | {plain / last:.2f}x |")


if __name__ == "__main__":
    main()
