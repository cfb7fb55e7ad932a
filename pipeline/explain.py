"""Grad-CAM and friends through the ``grad-cam`` package, safe on a model shared between sessions.

The dashboard shows where the model looked before and after an attack; an attack that moves the
prediction without moving the map (or the reverse) tells a reader more than the accuracy does.
The package registers hooks on the model and flips its mode, so every call borrows the model with
:func:`pipeline.guard.exclusive_eval` (one user at a time, eval mode, parameters frozen, all
restored) and uses the package's context-manager API, which removes its hooks on exit. With the
parameters frozen the gradients reach the target layer only through the input, so the input is a
private copy that requires grad; the parameters' ``.grad`` are restored too.
"""

from __future__ import annotations

from typing import Final, Optional, Sequence

import cv2
import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from pipeline.errors import UserInputError
from pipeline.guard import exclusive_eval

#: Method name -> the package's class. ScoreCAM runs one forward pass per channel: slow on CPU.
METHODS: Final[dict[str, type]] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "scorecam": ScoreCAM,
}


def target_layer(model: nn.Module) -> nn.Module:
    """The layer to explain: the model's own choice (``cam_target_layer``), else its last convolution."""
    chosen = getattr(model, "cam_target_layer", None)
    if isinstance(chosen, nn.Module):
        return chosen
    convolutions = [module for module in model.modules() if isinstance(module, nn.Conv2d)]
    if not convolutions:
        raise UserInputError(
            f"{type(model).__name__} has no convolution to explain; use a CNN such as a ResNet"
        )
    return convolutions[-1]


def explain(
    model: nn.Module,
    x: torch.Tensor,
    target: Optional[int | Sequence[int] | torch.Tensor] = None,
    method: str = "gradcam",
) -> np.ndarray:
    """Class-activation maps in ``[0, 1]``: ``[H, W]`` for ``x`` ``[1, 1, H, W]``, ``[N, H, W]`` for a batch.

    ``target`` is the class to explain (one for all scans, or one per scan); ``None`` explains
    each scan's predicted class.
    """
    if method not in METHODS:
        raise UserInputError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 1 or x.shape[0] == 0:
        raise UserInputError("explain() needs scans shaped [N, 1, H, W] (a single scan is [1, 1, H, W])")
    layer = target_layer(model)
    device = next(model.parameters()).device
    with exclusive_eval(model), torch.enable_grad():
        inputs = x.detach().to(device=device, dtype=torch.float32).clone().requires_grad_(True)
        targets = None if target is None else _targets(target, x.shape[0], model, inputs)
        saved_grads = [(parameter, parameter.grad) for parameter in model.parameters()]
        maps = None
        try:
            with METHODS[method](model=model, target_layers=[layer]) as cam:
                maps = cam(input_tensor=inputs, targets=targets)
        finally:
            for parameter, grad in saved_grads:
                parameter.grad = grad
    if maps is None:  # the package's __exit__ swallows IndexError after printing it
        raise RuntimeError(f"{method} failed on this model; see the message printed above")
    maps = np.clip(np.nan_to_num(maps.astype(np.float32)), 0.0, 1.0)
    return maps[0] if x.shape[0] == 1 else maps


def _targets(target: int | Sequence[int] | torch.Tensor, n: int, model: nn.Module,
             inputs: torch.Tensor) -> list[ClassifierOutputTarget]:
    """One package target per scan, checked against the model's number of classes."""
    classes = np.atleast_1d(np.asarray(torch.as_tensor(target).cpu(), dtype=np.int64)).reshape(-1)
    if classes.size == 1:
        classes = np.repeat(classes, n)
    if classes.size != n:
        raise UserInputError(f"got {classes.size} target classes for {n} scans; give one, or one per scan")
    with torch.no_grad():
        num_classes = model(inputs[:1]).shape[1]
    if classes.min() < 0 or classes.max() >= num_classes:
        raise UserInputError(f"target classes must lie in 0..{num_classes - 1}, got {classes.tolist()}")
    return [ClassifierOutputTarget(int(category)) for category in classes]


def overlay(scan: np.ndarray | torch.Tensor, cam: np.ndarray, alpha: float = 0.45,
            colormap: str = "jet") -> np.ndarray:
    """The grey ``scan`` ``[H, W]`` (uint8, or float in ``[0, 1]``) with ``cam`` as a heat map: RGB uint8.

    ``cam`` is resized to the scan when their sizes differ (a map of the model's input shown on the
    original scan). ``colormap`` is an OpenCV colormap name (jet, turbo, inferno, viridis, ...).
    """
    grey = scan.detach().cpu().numpy() if isinstance(scan, torch.Tensor) else np.asarray(scan)
    grey = np.squeeze(grey)
    if grey.ndim != 2 or np.ndim(cam) != 2:
        raise UserInputError("overlay() needs a 2-D grey scan and a 2-D map")
    if not 0.0 <= alpha <= 1.0:
        raise UserInputError(f"alpha must lie in [0, 1], got {alpha}")
    code = getattr(cv2, f"COLORMAP_{colormap.upper()}", None)
    if code is None:
        raise UserInputError(
            f"unknown colormap {colormap!r}; use an OpenCV name such as jet, turbo or inferno"
        )
    if grey.dtype != np.uint8:
        grey = (np.clip(grey.astype(np.float32), 0.0, 1.0) * 255).round().astype(np.uint8)
    heat = np.clip(np.asarray(cam, dtype=np.float32), 0.0, 1.0)
    if heat.shape != grey.shape:
        heat = cv2.resize(heat, (grey.shape[1], grey.shape[0]), interpolation=cv2.INTER_LINEAR)
    coloured = cv2.cvtColor(cv2.applyColorMap((heat * 255).round().astype(np.uint8), code), cv2.COLOR_BGR2RGB)
    base = np.repeat(grey[:, :, None], 3, axis=2).astype(np.float32)
    return np.clip((1 - alpha) * base + alpha * coloured, 0, 255).round().astype(np.uint8)


def explanation_shift(cam_clean: np.ndarray, cam_adv: np.ndarray,
                      top_fraction: float = 0.1) -> dict[str, float]:
    """How far an attack moved the explanation of one scan.

    ``pearson``: correlation of the two maps (1 = same pattern); ``top_iou``: overlap of their
    hottest ``top_fraction`` of pixels; ``centre_shift``: distance in pixels between their centres
    of mass.
    """
    clean, adv = np.asarray(cam_clean, dtype=np.float64), np.asarray(cam_adv, dtype=np.float64)
    if clean.ndim != 2 or clean.shape != adv.shape:
        raise UserInputError(
            f"explanation_shift() needs two maps of one shape [H, W], got {clean.shape} and {adv.shape}"
        )
    if not 0.0 < top_fraction <= 1.0:
        raise UserInputError(f"top_fraction must lie in (0, 1], got {top_fraction}")
    return {
        "pearson": _pearson(clean.ravel(), adv.ravel()),
        "top_iou": _top_iou(clean.ravel(), adv.ravel(), top_fraction),
        "centre_shift": float(np.linalg.norm(_centre_of_mass(clean) - _centre_of_mass(adv))),
    }


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation; a flat map correlates 1 with an identical map and 0 with anything else."""
    if a.std() == 0 or b.std() == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _top_iou(a: np.ndarray, b: np.ndarray, fraction: float) -> float:
    count = max(1, int(np.ceil(fraction * a.size)))
    top_a = np.zeros(a.size, dtype=bool)
    top_b = np.zeros(b.size, dtype=bool)
    top_a[np.argsort(-a, kind="stable")[:count]] = True
    top_b[np.argsort(-b, kind="stable")[:count]] = True
    return float((top_a & top_b).sum() / (top_a | top_b).sum())


def _centre_of_mass(cam: np.ndarray) -> np.ndarray:
    """(row, column) weighted by the map; the image centre for an empty map."""
    weights = np.clip(cam, 0.0, None)
    total = weights.sum()
    if total == 0:
        return (np.array(cam.shape, dtype=np.float64) - 1) / 2
    rows, cols = np.indices(cam.shape)
    return np.array([(rows * weights).sum() / total, (cols * weights).sum() / total])
