"""Bring any scan to the model's square size the same way for datasets and for single uploads.

IQ-OTH/NCCD mixes 512x512 slices with 623x512, 801x512, 511x404 and 506x331 ones. Stretching
them to a square would squash the anatomy (a round nodule becomes an ellipse only in those
files, a shortcut a network can learn) and centre-cropping an 801-wide slice would cut off
lung tissue at the sides. Padding to a square keeps every pixel and every shape, so this is
the one rule used everywhere: pad to square, then resize.
"""

from __future__ import annotations

from typing import Final

import cv2
import numpy as np

from pipeline.errors import UserInputError

MIN_IMAGE_SIZE: Final[int] = 16
MAX_IMAGE_SIZE: Final[int] = 1024


def check_image_size(image_size: int) -> int:
    """Validate a requested model input size; returns it as an int."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise UserInputError(f"image_size must be a whole number of pixels, got {image_size!r}")
    if not MIN_IMAGE_SIZE <= int(image_size) <= MAX_IMAGE_SIZE:
        raise UserInputError(
            f"image_size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels, got {image_size}; "
            "224 is the usual choice for ResNets"
        )
    return int(image_size)


def background_level(image: np.ndarray) -> int:
    """The grey level of the image's outer frame (median of its four edges).

    For the IQ-OTH/NCCD JPEGs this is 0 (black surroundings); for a lung-windowed DICOM it is
    the grey of air outside the body. Padding with it looks like more of the same background,
    so no artificial edge appears where the padding starts.
    """
    frame = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])
    return int(np.median(frame))


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """Centre the image on a square canvas of its background level; a square image is returned as is."""
    height, width = image.shape
    side = max(height, width)
    if height == width:
        return image
    top, left = (side - height) // 2, (side - width) // 2
    return cv2.copyMakeBorder(
        image, top, side - height - top, left, side - width - left, cv2.BORDER_CONSTANT,
        value=background_level(image),
    )


def preprocess_image(image: np.ndarray, image_size: int) -> np.ndarray:
    """Pad a 2-D uint8 scan to a square with its background, then resize to ``image_size``.

    Shrinking uses area interpolation (averages the pixels each output pixel covers, so fine
    vessels do not alias into noise); enlarging a small upload uses bilinear interpolation,
    because area interpolation degenerates to nearest-neighbour blocks when magnifying.
    """
    size = check_image_size(image_size)
    if not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype != np.uint8:
        raise UserInputError(
            "preprocess_image expects a 2-D uint8 grey image (as read_scan returns), got "
            f"{getattr(image, 'dtype', type(image).__name__)} with shape {getattr(image, 'shape', None)}"
        )
    square = pad_to_square(image)
    if square.shape[0] == size:
        return np.ascontiguousarray(square)
    interpolation = cv2.INTER_AREA if square.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interpolation)
