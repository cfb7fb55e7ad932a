"""ResNet classifiers for one-channel CT slices in ``[0, 1]``.

Normalisation lives inside the model so that attacks perturb exactly the grey levels a person
sees (the reference notebook perturbed normalised tensors, which left its epsilons unbounded in
pixel space). ImageNet weights are adapted to one channel by summing conv1 over its RGB inputs,
which is exact for a grey image repeated into three channels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Final

import torch
from torch import nn
from torchvision import models as tv_models

from pipeline.constants import NUM_CLASSES
from pipeline.errors import UserInputError

#: Architecture name -> (torchvision constructor, its default ImageNet weights enum).
ARCHITECTURES: Final[dict[str, tuple[Callable[..., nn.Module], tv_models.WeightsEnum]]] = {
    "resnet18": (tv_models.resnet18, tv_models.ResNet18_Weights.DEFAULT),
    "resnet34": (tv_models.resnet34, tv_models.ResNet34_Weights.DEFAULT),
    "resnet50": (tv_models.resnet50, tv_models.ResNet50_Weights.DEFAULT),
    "resnet101": (tv_models.resnet101, tv_models.ResNet101_Weights.DEFAULT),
}

#: ImageNet statistics collapsed to one grey channel (mean and root-mean of the RGB values).
GREY_MEAN: Final[float] = 0.449
GREY_STD: Final[float] = 0.226

MIN_INPUT_SIZE: Final[int] = 32


class ScanClassifier(nn.Module):
    """A torchvision ResNet that takes ``[N, 1, H, W]`` grey scans in ``[0, 1]`` and returns logits."""

    def __init__(self, backbone: nn.Module, arch: str) -> None:
        super().__init__()
        self.arch = arch
        self.backbone = backbone
        # Constants, not weights: made on the CPU even where the weights are built on the meta device
        # to be loaded from a file (pipeline.store.model.load_model), which never holds them.
        self.register_buffer("mean", torch.tensor(GREY_MEAN, device="cpu").view(1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(GREY_STD, device="cpu").view(1, 1, 1, 1), persistent=False)

    @property
    def num_classes(self) -> int:
        return self.backbone.fc.out_features

    @property
    def cam_layers(self) -> dict[str, nn.Module]:
        """The four residual stages, shallow to deep, by torchvision's names: where Grad-CAM can look.

        The last is the usual Grad-CAM layer at 224 px; at small inputs its grid is too coarse
        (2x2 at 64 px) and :func:`pipeline.explain.default_layer` picks an earlier one.
        """
        return {f"layer{k}": getattr(self.backbone, f"layer{k}") for k in range(1, 5)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise UserInputError(f"expected scans shaped [N, 1, H, W], got {tuple(x.shape)}")
        if min(x.shape[-2:]) < MIN_INPUT_SIZE:
            raise UserInputError(
                f"scans must be at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} pixels, got {tuple(x.shape[-2:])}"
            )
        return self.backbone((x - self.mean) / self.std)


def arch_title(arch: str) -> str:
    """How people write an architecture name: ``resnet50`` -> ``ResNet-50``."""
    return arch.replace("resnet", "ResNet-")


def build_model(
    arch: str = "resnet50",
    num_classes: int = NUM_CLASSES,
    pretrained: bool = False,
    zero_init_residual: bool = False,
) -> ScanClassifier:
    """Build a one-channel ResNet; ``pretrained`` adapts torchvision's ImageNet weights.

    ``zero_init_residual`` starts every residual branch at zero (Goyal et al. 2017), so a deep
    network begins as a shallow one; it matters only from scratch (pretrained weights replace it).
    """
    if arch not in ARCHITECTURES:
        raise UserInputError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if not 2 <= num_classes <= 1000:
        raise UserInputError(f"num_classes must be between 2 and 1000, got {num_classes}")
    constructor, weights = ARCHITECTURES[arch]
    chosen = _download_weights(arch, weights) if pretrained else None
    backbone = constructor(weights=chosen, zero_init_residual=zero_init_residual)
    rgb_conv = backbone.conv1
    grey_conv = nn.Conv2d(1, rgb_conv.out_channels, kernel_size=7, stride=2, padding=3, bias=False)
    with torch.no_grad():
        if pretrained:
            grey_conv.weight.copy_(rgb_conv.weight.sum(dim=1, keepdim=True))
    backbone.conv1 = grey_conv
    backbone.fc = nn.Linear(backbone.fc.in_features, num_classes)
    return ScanClassifier(backbone, arch)


def weights_cache_path(weights: tv_models.WeightsEnum) -> Path:
    """Where torchvision looks for (and saves) a weights file, so users can place it by hand."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def _download_weights(arch: str, weights: tv_models.WeightsEnum) -> tv_models.WeightsEnum:
    """Fetch the weights file now so that an offline machine fails with a useful message."""
    target = weights_cache_path(weights)
    if not target.exists():
        try:
            weights.get_state_dict(progress=False, check_hash=True)
        except Exception as error:  # urllib, ssl and socket errors all mean "could not download"
            raise UserInputError(
                f"could not download ImageNet weights for {arch} ({type(error).__name__}: {error}). "
                f"Without internet, place the file {Path(weights.url).name} (from {weights.url}) at {target}, "
                "or train without --pretrained."
            ) from error
    return weights
