"""Plain classification and image-quality metrics, batched and free of any attack logic.

Confusion matrices put the true class on rows and the predicted class on columns, in the fixed
class order. PSNR and SSIM measure how visible a perturbation is, computed in torch on whole
batches (SSIM follows Wang et al. 2004 with the usual 11-tap Gaussian window, matching
``skimage.metrics.structural_similarity(gaussian_weights=True, use_sample_covariance=False)``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.constants import NUM_CLASSES


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Counts ``[true, predicted]``; every scan lands in exactly one cell."""
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"got {y_true.size} labels but {y_pred.size} predictions")
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def per_class_recall(confusion: np.ndarray) -> np.ndarray:
    """Share of each true class predicted correctly; NaN for a class with no scans."""
    confusion = np.asarray(confusion, dtype=np.float64)
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(confusion) / support, np.nan)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of matching labels; NaN for an empty set rather than a misleading 0 or 1."""
    y_true = np.asarray(y_true).reshape(-1)
    return float(np.mean(y_true == np.asarray(y_pred).reshape(-1))) if y_true.size else math.nan


def psnr(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per scan (images in [0, 1]); ``inf`` where nothing changed."""
    mse = (x_adv.float() - x.float()).flatten(1).pow(2).mean(dim=1)
    return torch.where(mse > 0, -10.0 * torch.log10(mse.clamp_min(1e-30)), torch.full_like(mse, math.inf))


def ssim(x: torch.Tensor, x_adv: torch.Tensor, *, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean structural similarity per scan of ``[N, C, H, W]`` images in [0, 1]."""
    x, x_adv = x.float(), x_adv.float()
    window = min(window, *x.shape[-2:])
    window -= 1 - window % 2  # an odd window that fits the image
    channels = x.shape[1]
    offsets = torch.arange(window, dtype=torch.float32, device=x.device) - (window - 1) / 2
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    taps = taps / taps.sum()
    kernel = (taps[:, None] * taps[None, :]).expand(channels, 1, window, window).contiguous()

    def blur(image: torch.Tensor) -> torch.Tensor:
        return F.conv2d(image, kernel, groups=channels)

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(x), blur(x_adv)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(x_adv * x_adv) - mu_y**2
    covariance = blur(x * x_adv) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + c1) * (2 * covariance + c2)
    denominator = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (numerator / denominator).flatten(1).mean(dim=1)
