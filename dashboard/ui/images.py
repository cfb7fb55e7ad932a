"""Scans as pictures: tensors to 8-bit grey, PNG bytes, the clean/attacked wipe comparison, display."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import streamlit as st
import torch

from pipeline.errors import ScanError


def grey8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """A ``[1, H, W]`` / ``[H, W]`` image in ``[0, 1]`` as uint8 ``[H, W]`` for display and PNG export."""
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    array = np.squeeze(array)
    if array.dtype == np.uint8:
        return array
    return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """Lossless PNG of a uint8 grey or RGB image (the attacked scan must not be re-compressed)."""
    pixels = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        raise ScanError("could not encode the image as PNG")
    return encoded.tobytes()


def wipe(clean: np.ndarray, attacked: np.ndarray, position: float) -> np.ndarray:
    """Original scan left of ``position`` (0..1 of the width), attacked scan right of it, a thin divider."""
    if clean.shape != attacked.shape:
        raise ScanError("the two scans to compare have different sizes")
    column = int(round(np.clip(position, 0.0, 1.0) * clean.shape[1]))
    rgb = np.repeat(np.where(np.arange(clean.shape[1]) < column, clean, attacked)[..., None], 3, axis=2)
    if 0 < column < clean.shape[1]:
        rgb[:, max(column - 1, 0) : column + 1] = (230, 170, 40)
    return rgb.astype(np.uint8)


def enlarge(image: np.ndarray, min_side: int = 320) -> np.ndarray:
    """Upscale small scans with nearest-neighbour for display, so single changed pixels stay crisp."""
    factor = int(np.ceil(min_side / max(1, min(image.shape[:2]))))
    if factor <= 1:
        return image
    return cv2.resize(
        image, (image.shape[1] * factor, image.shape[0] * factor), interpolation=cv2.INTER_NEAREST
    )


def show(image: Any, *, caption: Any = None, width: int | str = "stretch", where: Any = None) -> None:
    """Draw scans losslessly: Streamlit's default JPEG would blur away the very perturbation shown."""
    (where or st).image(image, caption=caption, width=width, output_format="PNG")
