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

from pipeline.attacks import get_attack, minimal_epsilon, search_refusal
from pipeline.constants import CLASSES, GREY_LEVEL
from pipeline.errors import AttackParameterError, UserInputError
from pipeline.evaluation.metrics import psnr
from pipeline.models import build_model
from pipeline.scan_report import MINIMAL_EPS_HIGH, MINIMAL_EPS_NORM, ScanReport, analyse_scan

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


def test_the_smallest_flipping_budget_is_searched_with_the_chosen_attack(model: nn.Module) -> None:
    image = scans(1)[0]
    report = analyse_scan(
        model, image, "fgsm", {"eps": 2 * GREY_LEVEL}, label=1, classes=CLASSES, find_minimal_eps=True
    )
    expected = minimal_epsilon(model, image[None], torch.tensor([1]), "fgsm", high=MINIMAL_EPS_HIGH)
    assert report.minimal_eps == pytest.approx(float(expected[0]))
    assert report.to_dict()["minimal_eps_attack"] == "fgsm"


@pytest.mark.parametrize(
    ("attack", "why"),
    [("deepfool", "no budget ε to search"), ("cw", "no budget ε to search"), ("pgdl2", "L2 norm")],
)
def test_an_attack_without_an_linf_budget_says_why_it_cannot_be_searched(
    model: nn.Module, attack: str, why: str
) -> None:
    assert why in (search_refusal(attack, MINIMAL_EPS_NORM) or "")
    with pytest.raises(UserInputError, match="cannot be searched"):
        analyse_scan(model, scans(1)[0], attack, {}, label=1, classes=CLASSES, find_minimal_eps=True)


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


def test_a_blank_explanation_is_named_and_never_measured(model: nn.Module) -> None:
    """At 32 px ResNet's last stage is 1x1: both maps are blank, which must not read as "stable"."""
    report = analyse_scan(model, scans(1)[0], "fgsm", {"eps": 4 * GREY_LEVEL}, label=0, classes=CLASSES,
                          cam_layer="layer4")
    assert report.cam_grid == (1, 1) and report.shift is None
    assert "too coarse" in report.cam_problem and "earlier layer" in report.cam_problem
    record = json.loads(json.dumps(report.to_dict()))
    assert record["explanation_shift"] is None
    assert record["explanation"] == {
        "method": "gradcam",
        "layer": "layer4",
        "grid": [1, 1],
        "readable": False,
        "problem": report.cam_problem,
    }
    default = analyse_scan(model, scans(1)[0], "fgsm", {"eps": 4 * GREY_LEVEL}, label=0, classes=CLASSES)
    assert default.cam_layer == "layer1" and default.cam_grid == (8, 8)  # the deepest stage with >= 7x7


def ct_small(size: int) -> torch.Tensor:
    """pydicom's CT_small.dcm (a 128x128 crop of the mediastinum) as the model sees it: [1, S, S]."""
    from pydicom.data import get_testdata_file

    from pipeline.data import open_scan, preprocess_image

    scan = open_scan(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    return torch.from_numpy(preprocess_image(scan.image, size)).float().div(255.0)[None]


def test_a_scan_unlike_the_training_data_is_flagged_beside_the_answer_and_in_the_json() -> None:
    """A model that learnt nodule images reads a mediastinal CT crop with some confidence; the
    Mahalanobis check, fitted on its training scans and thresholded on validation scans, says the
    scan is out of distribution, while held-out scans of its own kind pass."""
    from pipeline.evaluation.degenerate import check_answers
    from pipeline.evaluation.detectors import FALSE_POSITIVE_RATE, FeatureSqueezing
    from pipeline.evaluation.ood import fit_detector
    from pipeline.evaluation.profile import ValidationProfile
    from tests.models_fixture import nodule_images, trained_model

    tiny = trained_model()
    x_train, y_train = nodule_images(300, seed=0)
    x_val, y_val = nodule_images(60, seed=1)
    with torch.no_grad():
        answers = tiny.model(x_val).argmax(1)
    detector = fit_detector(tiny.model, x_train, y_train, x_val)
    squeezing = FeatureSqueezing()
    squeezing.calibrate(tiny.model, x_val, FALSE_POSITIVE_RATE)
    profile = ValidationProfile(check_answers(answers, y_val), detector, squeezing)
    assert not profile.trained.flagged
    outside = analyse_scan(tiny.model, ct_small(SIZE), "fgsm", {"eps": GREY_LEVEL}, classes=CLASSES,
                           profile=profile)
    assert outside.ood is not None and outside.ood.flagged and "unlike the scans" in outside.ood.text
    record = json.loads(json.dumps(outside.to_dict()))
    assert record["out_of_distribution"]["out_of_distribution"] is True
    assert record["out_of_distribution"]["validation_scans"] == 60
    assert record["model_check"]["flagged"] is False
    held_out = nodule_images(12, seed=9)[0]
    flagged = [analyse_scan(tiny.model, scan, "fgsm", {"eps": GREY_LEVEL}, classes=CLASSES,
                            profile=profile).ood.flagged for scan in held_out]
    assert sum(flagged) <= 2  # about 5% of in-distribution scans are flagged by design
    unchecked = analyse_scan(tiny.model, ct_small(SIZE), "fgsm", {"eps": GREY_LEVEL}, classes=CLASSES,
                             unchecked="no validation scans were stored with this model")
    assert json.loads(json.dumps(unchecked.to_dict()))["out_of_distribution"] == {
        "checked": False, "why": "no validation scans were stored with this model"}
