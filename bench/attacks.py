"""Attack speed and strength: ours against torchattacks, Foolbox and ART on the same model and scans.

    python bench/attacks.py                       # peers side by side: a small CNN trained here, batches 1 and 16
    python bench/attacks.py --model resnet18 --size 64 --batches 16   # a bigger (random) model
    python bench/attacks.py --catalogue           # every attack of ours vs torchattacks, ResNet50 at 224
    python bench/attacks.py --catalogue --quick   # the same, ResNet18 at 64x64, a few attacks

**Peers** (the default): FGSM, PGD-10 (L-inf and L2), CW-L2, DeepFool and the AutoAttack-style
ensemble, each at our defaults and each peer at the nearest settings it has (``bench/peers.py`` says
per row what a peer cannot match), all four libraries timed in turns in one run, so a load that
comes and goes falls on all alike. One Markdown table per batch size: per library the median time,
how many scans it fooled and the median size of the perturbations that fooled (L-inf for the
L-inf attacks, L2 for the others); for the minimal-perturbation attacks (CW, DeepFool) also the
median L2 on the scans both we and the peer fooled. The default model is ``tests/models_fixture.py``'s
small CNN, trained in seconds on synthetic nodule images (synthetic data, nothing medical), attacked
on held-out scans it reads correctly, so strength means something; ``--model resnet18`` etc. use a
randomly initialised model on random scans labelled with its own answers (timings, not robustness).
The peers are bench extras: ``pip install -r requirements-bench.txt``; a missing one is named.

**Catalogue** (``--catalogue``): a Markdown table: per device, batch and attack, our median time at default settings,
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
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import describe
from bench.peers import EPS, EPS_L2, LIBRARIES, missing, rows
from pipeline.attacks import get_attack
from pipeline.models import build_model

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


def timed(runs: dict[str, Callable[[], object]], device: torch.device, repeats: int,
          short_repeats: Optional[int] = None) -> dict[str, float]:
    """Median seconds of each run, timed in turns (the order rotating each round, so no run always
    goes first); one warm-up round, skipped from the median unless it alone took > 2 s per run or
    ``repeats`` is 1 (then that round is the measurement). With ``short_repeats``, the warm-up is
    always skipped and a warm-up round of under a second in all is followed by at least
    ``short_repeats`` rounds: on a shared machine one short sample is mostly the load's noise."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    rounds = repeats
    round_ = 0
    while round_ <= rounds:
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            synchronise(device)
            start = time.perf_counter()
            runs[name]()
            synchronise(device)
            times[name].append(time.perf_counter() - start)
        if round_ == 0:
            if max(t[0] for t in times.values()) > 2.0 or (repeats <= 1 and short_repeats is None):
                return {name: values[0] for name, values in times.items()}
            if short_repeats is not None and sum(t[0] for t in times.values()) < 1.0:
                rounds = max(repeats, short_repeats)
        round_ += 1
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


def sizes(x: torch.Tensor, x_adv: torch.Tensor, norm: str) -> torch.Tensor:
    delta = (x_adv - x).flatten(1).float()
    return delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)


def fooled(model: torch.nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return (model(x_adv).argmax(1) != y).cpu()


def peer_model(name: str, size: int, batch: int, device: torch.device) -> tuple[torch.nn.Module, torch.Tensor,
                                                                                  torch.Tensor]:
    """The model and ``batch`` scans: the tests' small CNN on held-out synthetic scans it reads
    correctly, or a randomly initialised registry model on random scans labelled with its own answers."""
    if name == "tiny":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from models_fixture import trained_model

        trained = trained_model(3, test_count=max(batch, 48))
        model, x, y = trained.model, trained.x[:batch], trained.y[:batch]
    else:
        torch.manual_seed(0)
        model = build_model(name)
        x = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(1))
    model = model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    x = x.to(device)
    if name != "tiny":
        with torch.no_grad():
            y = model(x).argmax(1)
    return model, x, y.to(device)


def peer_table(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, repeats: int,
               absent: dict[str, str], only: list[str] | None, eps: float) -> tuple[list[str], list[str]]:
    """Markdown lines of one batch's table, and the rows where ours is slower or weaker than a peer."""
    with torch.no_grad():
        classes = model(x[:1]).shape[1]
    libraries = [library for library in LIBRARIES if library not in absent]
    lines = ["| attack | ours | " + " | ".join(LIBRARIES) + " | settings a peer cannot match |",
             "|---|---|" + "---|" * len(LIBRARIES) + "---|"]
    behind: list[str] = []
    for row in rows(classes, eps):
        if only and row.title not in only and row.ours not in only:
            continue
        runs: dict[str, Callable[[], object]] = {}
        results: dict[str, torch.Tensor] = {}
        attack = get_attack(row.ours, **row.ours_params)

        def keep(name: str, call: Callable[[], torch.Tensor]) -> Callable[[], None]:
            def run() -> None:
                results[name] = call()
            return run

        runs["ours"] = keep("ours", lambda: attack(model, x, y))
        for library in libraries:
            peer = row.peers.get(library)
            if peer is not None:
                runs[library] = keep(library, lambda peer=peer: peer(model, x, y))
        spent = timed(runs, device, repeats, short_repeats=7)
        ours_fooled = fooled(model, results["ours"], y)
        ours_size = sizes(x, results["ours"], row.norm).cpu()
        cells = [_cell(spent["ours"], ours_fooled, ours_size, row.norm)]
        for library in LIBRARIES:
            if library in absent:
                cells.append("not installed")
                continue
            if library not in results:
                cells.append("-")
                continue
            their_fooled = fooled(model, results[library], y)
            their_size = sizes(x, results[library], row.norm).cpu()
            ratio = spent["ours"] / spent[library]
            cell = _cell(spent[library], their_fooled, their_size, row.norm) + f"; ours/theirs {ratio:.2f}x"
            both = ours_fooled & their_fooled
            if row.minimal and both.any():
                cell += (f"; on the {int(both.sum())} both fool: ours {float(ours_size[both].median()):.3f}, "
                         f"theirs {float(their_size[both].median()):.3f}")
            cells.append(cell)
            # Weaker: fewer scans fooled, or (minimal attacks) a median L2 over the scans both fool more
            # than 0.5% above theirs (equal up to float rounding counts as equal).
            weaker = int(ours_fooled.sum()) < int(their_fooled.sum()) or (row.minimal and both.any() and float(
                ours_size[both].median()) > 1.005 * float(their_size[both].median()))
            if ratio > 1 or weaker:
                behind.append(f"{row.title} vs {library}: " + ", ".join(
                    what for what, bad in (("slower", ratio > 1), ("weaker", weaker)) if bad))
        notes = "; ".join(f"{who}: {note}" for who, note in row.notes.items())
        lines.append(f"| {row.title} | " + " | ".join(cells) + f" | {notes} |")
    return lines, behind


def _cell(seconds: float, fooled_: torch.Tensor, size: torch.Tensor, norm: str) -> str:
    median = float(size[fooled_].median()) if fooled_.any() else float("nan")
    shown = f"{median * 255:.1f}/255" if norm == "linf" else f"{median:.3f}"
    return (f"{seconds * 1000:.0f} ms, {int(fooled_.sum())}/{len(fooled_)} fooled"
            + (f", median {'L∞' if norm == 'linf' else 'L2'} {shown}" if fooled_.any() else ""))


def peers_main(args: argparse.Namespace) -> int:
    absent = missing()
    for library, reason in absent.items():
        print(f"**{library} is not installed** ({reason}): its column is empty; "
              "`pip install -r requirements-bench.txt` installs the peers.\n")
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    versions = []
    for library, module in LIBRARIES.items():
        if library not in absent:
            versions.append(f"{library} {getattr(__import__(module), '__version__', '?')}")
    what = ("the tests' small CNN (3 classes) at 32x32 on held-out synthetic nodule scans it reads correctly"
            if args.model == "tiny" else f"{args.model} (randomly initialised) at {args.size}x{args.size} on random "
            "scans labelled with its own answers")
    print(f"# Ours vs peers: {what}; L∞ budget {args.eps * 255:g}/255, PGD-L2 budget {EPS_L2}; {describe(device)}; "
          f"{', '.join(versions)}\n")
    behind_all: list[str] = []
    for batch in args.batches:
        model, x, y = peer_model(args.model, args.size, batch, device)
        print(f"## Batch {batch}\n")
        lines, behind = peer_table(model, x, y, device, args.repeats, absent, args.attacks, args.eps)
        print("\n".join(lines) + "\n", flush=True)
        behind_all += [f"batch {batch}, {entry}" for entry in behind]
    print("Each cell: median time over the timed runs (libraries in turns), scans fooled, median size of the "
          "fooling perturbations; ours/theirs below 1: ours is faster.")
    if behind_all:
        print("\nRows where ours is slower or weaker than a peer: " + "; ".join(behind_all) + ".")
    else:
        print("\nOurs is at or below every peer's time at equal or better strength on every row.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalogue", action="store_true",
                        help="every attack of ours against torchattacks (the older table) instead of the peers")
    parser.add_argument("--model", default="tiny",
                        help="peers: 'tiny' (a small CNN trained here, default) or a registry architecture "
                             "(resnet18, resnet50, ...) randomly initialised")
    parser.add_argument("--eps", type=float, default=8 / 255,
                        help="peers: L-inf budget of FGSM, PGD and the ensemble (default 8/255: at our default "
                             "4/255 the small CNN is barely fooled, so strength would not show)")
    parser.add_argument("--size", type=int, default=64, help="peers: image size for a registry architecture")
    parser.add_argument("--quick", action="store_true",
                        help="catalogue: ResNet18 at 64x64 and a few attacks (smoke run)")
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                        help="all: CPU, and CUDA when present (peers: CPU unless cuda)")
    parser.add_argument("--attacks", nargs="*",
                        help="subset of attacks (default: all, or a few with --quick)")
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 16], help="batch sizes (default: 1 16)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after a warm-up (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available")
    if not args.catalogue:
        return peers_main(args)
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
