"""``analyse_scan``: what the Attack page draws, checked against the pieces it composes.

Includes the shared-model check of issue 7: eight threads attacking and explaining different
scans on one model, as the cached dashboard does, must get exactly the serial results and leave
the model as they found it, with flat memory over 200 analyses.
"""

from __future__ import annotations

import gc
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.attacks import get_attack
from pipeline.constants import CLASSES, GREY_LEVEL
from pipeline.errors import AttackParameterError, UserInputError
from pipeline.evaluation.metrics import psnr
from pipeline.models import build_model
from pipeline.scan_report import ScanReport, analyse_scan

SIZE = 32


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet18").eval()


def scans(count: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(count, 1, SIZE, SIZE, generator=generator)


def state(model: nn.Module) -> tuple:
    """Everything a borrower could leave changed: modes, grad flags, grads, hooks, weights."""
    modules = list(model.modules())
    return (
        [module.training for module in modules],
        [parameter.requires_grad for parameter in model.parameters()],
        [parameter.grad is None for parameter in model.parameters()],
        sum(
            len(module._forward_hooks)
            + len(module._forward_pre_hooks)
            + len(module._backward_hooks)
            + len(getattr(module, "_full_backward_hooks", {}) or {})
            for module in modules
        ),
        float(sum(parameter.detach().double().sum() for parameter in model.parameters())),
    )


def live_tensors() -> int:
    gc.collect()
    return sum(1 for item in gc.get_objects() if issubclass(type(item), torch.Tensor))


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


def test_report_agrees_with_the_attack_and_metrics_it_composes(model: nn.Module) -> None:
    image = scans(1)[0]
    seen: list[tuple[int, int]] = []
    report = analyse_scan(
        model,
        image,
        "pgd",
        {"eps": 4 * GREY_LEVEL, "steps": 3},
        label=1,
        classes=CLASSES,
        progress=lambda done, total, message: seen.append((done, total)),
    )
    expected = get_attack("pgd", eps=4 * GREY_LEVEL, steps=3)(model, image[None], torch.tensor([1]))
    assert np.array_equal(report.attacked, expected[0, 0].numpy())
    assert np.array_equal(report.clean, image[0].numpy())
    assert report.linf <= 4 * GREY_LEVEL + 1e-6
    assert report.psnr == pytest.approx(float(psnr(image[None], expected)[0]))
    assert report.probs_clean.sum() == pytest.approx(1.0, abs=1e-5)
    assert report.success == (report.prediction_attacked != 1)
    assert report.trace[0] == pytest.approx(report.probs_clean[1], abs=1e-5)
    assert report.cam_clean.shape == report.cam_attacked.shape == (SIZE, SIZE)
    assert set(report.shift) == {"pearson", "top_iou", "centre_shift"}
    assert report.minimal_eps is None
    assert [done for done, _ in seen] == sorted(done for done, _ in seen) and seen[-1][0] == seen[-1][1]
    record = json.loads(json.dumps(report.to_dict()))
    assert record["attack"] == "pgd" and record["params"]["steps"] == 3 and record["label"] == "malignant"


def test_without_a_label_the_attack_moves_away_from_the_models_answer(model: nn.Module) -> None:
    report = analyse_scan(model, scans(1)[0], "fgsm", {"eps": 2 * GREY_LEVEL}, classes=CLASSES)
    assert not report.label_known and report.label == report.prediction_clean
    assert report.success == (report.prediction_attacked != report.prediction_clean)


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        (dict(attack="pgd", params={"eps": 2.0}), AttackParameterError),
        (dict(attack="no-such-attack", params={}), AttackParameterError),
        (dict(attack="fgsm", params={}, image=torch.rand(3, SIZE, SIZE)), UserInputError),
        (dict(attack="fgsm", params={}, classes=("a", "b")), UserInputError),
        (dict(attack="fgsm", params={}, label=7), UserInputError),
    ],
)
def test_bad_requests_are_refused_with_a_message(model: nn.Module, arguments: dict, error: type) -> None:
    call = {"image": scans(1)[0], "classes": CLASSES, **arguments}
    before = state(model)
    with pytest.raises(error):
        analyse_scan(model, call.pop("image"), call.pop("attack"), call.pop("params"), **call)
    assert state(model) == before


@pytest.mark.slow
def test_eight_threads_on_one_shared_model_match_serial_runs(model: nn.Module) -> None:
    images = scans(8)
    rounds = 25  # 8 threads x 25 = 200 analyses

    def analyse(index: int) -> ScanReport:
        return analyse_scan(
            model, images[index], "fgsm", {"eps": 4 * GREY_LEVEL}, label=index % 3, classes=CLASSES
        )

    serial = [analyse(index) for index in range(8)]
    before = state(model)
    results: dict[int, list[ScanReport]] = {index: [] for index in range(8)}
    failures: list[BaseException] = []

    def worker(index: int, count: int) -> None:
        try:
            for _ in range(count):
                results[index].append(analyse(index))
        except BaseException as error:  # reported below, in the test's own thread
            failures.append(error)

    def in_parallel(count: int) -> None:
        threads = [threading.Thread(target=worker, args=(index, count)) for index in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    in_parallel(5)  # warm-up: threads' stacks and allocator arenas are paid for once
    warm_memory, warm_tensors = rss_bytes(), live_tensors()
    in_parallel(rounds - 5)
    assert not failures, failures
    # Flat: no tensor survives an analysis, and the process does not grow with their number. A kept
    # autograd graph would cost megabytes per analysis, so 160 analyses would add hundreds of MiB;
    # the margin is glibc's per-thread arenas settling in (measured up to ~70 MiB on a loaded machine).
    assert live_tensors() <= warm_tensors
    assert rss_bytes() - warm_memory < 128 * 2**20
    for index, reports in results.items():
        assert len(reports) == rounds
        for report in reports:
            assert np.array_equal(report.attacked, serial[index].attacked)
            assert np.allclose(report.probs_attacked, serial[index].probs_attacked, atol=1e-6)
            assert np.allclose(report.cam_attacked, serial[index].cam_attacked, atol=1e-6)
    assert state(model) == before  # no hook left, modes, flags and weights as they were
