"""What a training and a model load pay besides the passes themselves, old way against the lab's way.

Three rows, each measured in interleaved rounds (median of ``--repeats``) in one process, so the
ratio holds on a busy machine even where the absolute times do not:

- one optimizer step of a ResNet's weights: torch's per-tensor loop against one fused kernel
  (``pipeline.training.loop``: ``fused=True`` on CPUs and GPUs);
- one checkpoint write (model and optimizer state, fsynced and renamed): safetensors building the
  bytes in memory, then written, against safetensors writing the temporary file itself
  (``pipeline.store.tensors.save_tensors``);
- one model load from a run folder's file: built with random initialisation and copied into,
  against built on the meta device and given the checked tensors (``pipeline.store.model.load_model``).

    python bench/overheads.py                  # ResNet-18, 1 thread
    python bench/overheads.py --arch resnet50 --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save as safetensors_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import describe  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.store import atomic_write_bytes, load_tensors  # noqa: E402
from pipeline.store.tensors import load_state, save_tensors  # noqa: E402


def _optimizer(kind: str, model: torch.nn.Module, fused: bool) -> torch.optim.Optimizer:
    if kind == "AdamW":
        return torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused)
    return torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True, fused=fused)


def rows(arch: str, repeats: int, folder: Path) -> list[tuple[str, str, float, float]]:
    """``(what, how, old s, new s)`` per row, medians of interleaved rounds."""
    model = build_model(arch).to(memory_format=torch.channels_last)
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    pairs: dict[tuple[str, str], tuple[Callable[[], object], Callable[[], object]]] = {}
    for kind in ("AdamW", "SGD"):
        old, new = _optimizer(kind, model, False), _optimizer(kind, model, True)
        pairs[(f"{kind} step", "per-tensor loop -> fused")] = (old.step, new.step)

    state = {**{f"model.{k}": v for k, v in model.state_dict().items()},
             **{f"moment.{k}": v.detach().clone() for k, v in model.named_parameters()},
             **{f"square.{k}": v.detach().clone() for k, v in model.named_parameters()}}
    plain = {name: tensor.contiguous() for name, tensor in state.items()}
    pairs[("checkpoint write", "bytes in memory -> file written by safetensors")] = (
        lambda: atomic_write_bytes(folder / "old.safetensors", safetensors_bytes(plain)),
        lambda: save_tensors(folder / "new.safetensors", plain, {}),
    )

    weights = folder / "model.safetensors"
    save_tensors(weights, model.state_dict(), {})

    def load_initialised() -> None:
        tensors, _ = load_tensors(weights)
        build_model(arch).load_state_dict(tensors)

    def load_on_meta() -> None:
        tensors, _ = load_tensors(weights)
        with torch.device("meta"):
            built = build_model(arch)
        load_state(tensors, built, "bench")

    pairs[("model load", "random initialisation -> meta device")] = (load_initialised, load_on_meta)

    for old, new in pairs.values():  # a first round allocates optimizer state and warms caches: not timed
        old()
        new()
    times: dict[tuple[str, str], tuple[list[float], list[float]]] = {key: ([], []) for key in pairs}
    for _ in range(repeats):
        for key, (old, new) in pairs.items():
            for run, sink in ((old, times[key][0]), (new, times[key][1])):
                started = time.perf_counter()
                run()
                sink.append(time.perf_counter() - started)
    return [(what, how, statistics.median(old), statistics.median(new)) for (what, how), (old, new) in times.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# Training overheads, {datetime.date.today()}, {describe(torch.device('cpu'))}, {args.arch}, "
          f"{args.threads} thread(s), median of {args.repeats} interleaved rounds")
    print("\n| what | old -> new | old (ms) | new (ms) | faster |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for what, how, old, new in rows(args.arch, args.repeats, Path(folder)):
            print(f"| {what} | {how} | {old * 1000:.0f} | {new * 1000:.0f} | {old / new:.2f}x |")


if __name__ == "__main__":
    main()
