"""Grad-CAM and friends through the ``grad-cam`` package, safe on a model shared between sessions.

The dashboard shows where the model looked before and after an attack; an attack that moves the
prediction without moving the map (or the reverse) tells a reader more than the accuracy does.
The package registers hooks on the model and flips its mode, so every call borrows the model with
:func:`pipeline.guard.exclusive_eval` (one user at a time, eval mode, parameters frozen, all
restored) and uses the package's context-manager API, which removes its hooks on exit. With the
parameters frozen the gradients reach the target layer only through the input, so the input is a
private copy that requires grad; the parameters' ``.grad`` are restored too.

A map is only worth reading when it can localise: the layer explained must have a grid of at
least :data:`MIN_GRID` cells a side (ResNet's last stage is 2x2 at 64 px and 1x1 at 32 px, so an
earlier stage is chosen at small inputs), and the map must not be NaN, empty (no region speaks for
the class) or constant. :class:`Explanation` names each such map with what to do; it is never
measured (:func:`explanation_shift` refuses it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, Optional, Sequence

import cv2
import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
from torch import nn

from pipeline.errors import UserInputError
from pipeline.guard import exclusive_eval

#: A map needs at least this many cells a side to localise a nodule: ResNet's own grid at 224 px.
MIN_GRID: Final[int] = 7
#: What is wrong with a map, if anything.
Quality = Literal["ok", "nan", "coarse", "empty", "constant"]


class SignedEigenCAM(EigenCAM):
    """EigenCAM (Muhammad & Yeasin 2020, https://arxiv.org/abs/2008.00299) with its sign fixed by a rule.

    The first principal component of the activations is defined only up to sign, so two identical
    models whose channels are numbered differently can give opposite maps. The rule: orient the
    projection so that it correlates positively with the layer's summed activation, i.e. the map is
    high where the layer fires (what the uncentred projection of the paper shows for non-negative
    activations). A projection uncorrelated with it keeps the package's sign.
    """

    def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth):
        projections = get_2d_projection(activations)
        for projection, activation in zip(projections, activations):
            firing = activation.sum(axis=0)
            if float(((projection - projection.mean()) * (firing - firing.mean())).sum()) < 0:
                projection *= -1
        return projections


#: Method name -> the package's class. ScoreCAM runs one forward pass per channel: slow on CPU.
METHODS: Final[dict[str, type]] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "layercam": LayerCAM,
    "eigencam": SignedEigenCAM,
    "scorecam": ScoreCAM,
}


@dataclass
class Explanation:
    """Maps of one call and what they are worth.

    ``maps`` is float32 ``[N, H, W]`` in ``[0, 1]`` at the input's size, upsampled from the layer's
    ``grid`` (rows, columns); ``quality[i]`` says whether map ``i`` can be read.
    """

    maps: np.ndarray
    method: str
    layer: str
    grid: tuple[int, int]
    quality: list[Quality]

    def problem(self, index: int = 0) -> Optional[str]:
        """Why map ``index`` must not be read or measured, with what to do; None when it can be."""
        rows, cols = self.grid
        where = f"{self.layer} ({rows}×{cols} cells)"
        return {
            "ok": None,
            "nan": f"The {self.method} map of {where} is not a number (NaN): the model's gradients broke "
            "down; try another method or layer.",
            "coarse": f"{where} is too coarse to localise anything (fewer than {MIN_GRID}×{MIN_GRID} "
            "cells): choose an earlier layer, or use a model trained on larger images.",
            "empty": f"The {self.method} map of {where} is empty: no region of the scan speaks for the "
            "class explained; choose another layer or method.",
            "constant": f"The {self.method} map of {where} is the same everywhere: it does not localise; "
            "choose another layer or method.",
        }[self.quality[index]]

    @property
    def readable(self) -> bool:
        return all(quality == "ok" for quality in self.quality)


def cam_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers that can be explained, shallow to deep: the model's own ``cam_layers``, else its
    ``cam_target_layer``, else its last convolution. Raises UserInputError for a model without one."""
    own = getattr(model, "cam_layers", None)
    if isinstance(own, dict) and own:
        return dict(own)
    chosen = getattr(model, "cam_target_layer", None)
    if isinstance(chosen, nn.Module):
        return {"cam_target_layer": chosen}
    convolutions = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    if not convolutions:
        raise UserInputError(
            f"{type(model).__name__} has no convolution to explain; use a CNN such as a ResNet"
        )
    return dict(convolutions[-1:])


@torch.no_grad()
def feature_grids(model: nn.Module, size: int | tuple[int, int]) -> dict[str, tuple[int, int]]:
    """Each of :func:`cam_layers`' output grid (rows, columns) for input scans of ``size`` pixels."""
    height, width = (size, size) if isinstance(size, int) else size
    layers = cam_layers(model)
    grids: dict[str, tuple[int, int]] = {}
    device = next(model.parameters()).device

    def hook(name: str):
        def remember(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            grids.setdefault(name, (int(output.shape[-2]), int(output.shape[-1])))

        return remember

    with exclusive_eval(model):
        handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
        try:
            model(torch.zeros((1, 1, height, width), device=device))
        finally:
            for handle in handles:
                handle.remove()
    return {name: grids[name] for name in layers}


def default_layer(model: nn.Module, size: int | tuple[int, int]) -> str:
    """The deepest layer whose grid has at least :data:`MIN_GRID` cells a side at ``size``; at a size
    where none has, the finest one (its maps are then named too coarse)."""
    grids = feature_grids(model, size)
    fine = [name for name, grid in grids.items() if min(grid) >= MIN_GRID]
    return fine[-1] if fine else max(grids, key=lambda name: grids[name][0] * grids[name][1])


def matching_layer(model: nn.Module, layer: Optional[str], size: int | tuple[int, int]) -> Optional[str]:
    """The layer of ``model`` that corresponds to ``layer``, chosen on another model of one comparison
    (an ensemble beside a single run, a run beside its poisoned twin): ``layer`` itself where ``model``
    has it; for an ensemble's ``"<member>: layer3"`` a single model's ``layer3``, and for a single
    model's ``layer3`` the first member's; else ``model``'s :func:`default_layer` at ``size``.
    None (the default layer) stays None."""
    if layer is None:
        return None
    own = cam_layers(model)
    if layer in own:
        return layer
    plain = layer.rsplit(": ", 1)[-1]
    return next(
        (name for name in own if name == plain or name.endswith(f": {plain}")),
        default_layer(model, size),
    )


def explain(
    model: nn.Module,
    x: torch.Tensor,
    target: Optional[int | Sequence[int] | torch.Tensor] = None,
    method: str = "gradcam",
    layer: Optional[str] = None,
) -> Explanation:
    """Class-activation maps of ``x`` ``[N, 1, H, W]`` in ``[0, 1]``, with the quality of each.

    ``target`` is the class to explain (one for all scans, or one per scan); ``None`` explains
    each scan's predicted class. ``layer`` names one of :func:`cam_layers` (default:
    :func:`default_layer` for this input size). Raises UserInputError for an unknown method or
    layer, a badly shaped input, or target classes out of range.
    """
    if method not in METHODS:
        raise UserInputError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 1 or x.shape[0] == 0:
        raise UserInputError("explain() needs scans shaped [N, 1, H, W] (a single scan is [1, 1, H, W])")
    layers = cam_layers(model)
    layer = default_layer(model, tuple(x.shape[-2:])) if layer is None else layer
    if layer not in layers:
        raise UserInputError(f"unknown layer {layer!r} to explain; choose one of {', '.join(layers)}")
    device = next(model.parameters()).device
    with exclusive_eval(model), torch.enable_grad():
        inputs = x.detach().to(device=device, dtype=torch.float32).clone().requires_grad_(True)
        targets = None if target is None else _targets(target, x.shape[0], model, inputs)
        saved_grads = [(parameter, parameter.grad) for parameter in model.parameters()]
        maps = None
        try:
            with _recording(METHODS[method])(model=model, target_layers=[layers[layer]]) as cam:
                maps = cam(input_tensor=inputs, targets=targets)
                raw = cam.raw
        finally:
            for parameter, grad in saved_grads:
                parameter.grad = grad
    if maps is None:  # the package's __exit__ swallows IndexError after printing it
        raise RuntimeError(f"{method} failed on this model; see the message printed above")
    grid = (int(raw.shape[-2]), int(raw.shape[-1]))
    quality = [_quality(cells, grid) for cells in raw]
    maps = np.clip(np.nan_to_num(maps.astype(np.float32)), 0.0, 1.0)
    return Explanation(maps, method, layer, grid, quality)


def _recording(method: type) -> type:
    """``method`` that keeps the raw map at the layer's grid (before the package's ReLU and scaling)."""

    class Recording(method):  # type: ignore[misc, valid-type]
        raw: np.ndarray

        def get_cam_image(self, *args, **kwargs):
            cam = super().get_cam_image(*args, **kwargs)
            self.raw = np.asarray(cam, dtype=np.float64)
            return cam

    return Recording


def _quality(cells: np.ndarray, grid: tuple[int, int]) -> Quality:
    """What is wrong with one raw map ``[rows, cols]``, if anything (first match wins)."""
    if not np.isfinite(cells).all():
        return "nan"
    if min(grid) < MIN_GRID:
        return "coarse"
    positive = np.maximum(cells, 0.0)
    if positive.max() <= 0:
        return "empty"
    if positive.max() - positive.min() <= 1e-6 * positive.max():
        return "constant"
    return "ok"


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
    of mass. Raises UserInputError for maps of different shapes and for a map that is NaN or flat
    (constant or empty): it has no pattern, so any figure would be an artefact (two blank maps would
    read "correlation 1, overlap 100%"). Check :attr:`Explanation.quality` first.
    """
    clean, adv = np.asarray(cam_clean, dtype=np.float64), np.asarray(cam_adv, dtype=np.float64)
    if clean.ndim != 2 or clean.shape != adv.shape:
        raise UserInputError(
            f"explanation_shift() needs two maps of one shape [H, W], got {clean.shape} and {adv.shape}"
        )
    for name, cam in (("first", clean), ("second", adv)):
        if not np.isfinite(cam).all() or cam.max() == cam.min():
            raise UserInputError(
                f"the {name} map is NaN or flat: it has no pattern whose shift could be measured"
            )
    if not 0.0 < top_fraction <= 1.0:
        raise UserInputError(f"top_fraction must lie in (0, 1], got {top_fraction}")
    return {
        "pearson": _pearson(clean.ravel(), adv.ravel()),
        "top_iou": _top_iou(clean.ravel(), adv.ravel(), top_fraction),
        "centre_shift": float(np.linalg.norm(_centre_of_mass(clean) - _centre_of_mass(adv))),
    }


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
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
