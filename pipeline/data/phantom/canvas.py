"""Drawing in millimetres: shapes are rasterised at twice the resolution and area-averaged.

Supersampling gives every edge a partial-volume value, as a real detector would; millimetres keep the
anatomy the same size at any output resolution.
"""

from __future__ import annotations

import cv2
import numpy as np

_SHIFT = 4  # fixed-point bits cv2 uses for sub-pixel vertex positions
_SUPERSAMPLE = 2


class Canvas:
    """A square field of view ``fov_mm`` wide, rendered at ``size`` pixels; the origin is its centre."""

    def __init__(self, size: int, fov_mm: float) -> None:
        self.size = size
        self.mm_per_px = fov_mm / size
        fine = size * _SUPERSAMPLE
        self._scale = _SUPERSAMPLE * (1 << _SHIFT) / self.mm_per_px
        self._offset = fine * (1 << _SHIFT) / 2.0
        self._buffer = np.zeros((fine, fine), np.uint8)
        centres = (np.arange(size, dtype=np.float32) - (size - 1) / 2.0) * self.mm_per_px
        self.x = centres[None, :]  # pixel-centre coordinates in mm, broadcastable to [size, size]
        self.y = centres[:, None]

    def _fixed(self, points: np.ndarray) -> np.ndarray:
        return np.round(np.asarray(points) * self._scale + self._offset).astype(np.int32)

    def _fixed_length(self, mm: float) -> int:
        return max(int(round(mm * self._scale)), 1)

    def _result(self) -> np.ndarray:
        small = cv2.resize(self._buffer, (self.size, self.size), interpolation=cv2.INTER_AREA)
        return small.astype(np.float32) * np.float32(1.0 / 255.0)

    def polygons(self, polygons: list[np.ndarray]) -> np.ndarray:
        """Fraction of each pixel covered by the union of the polygons ([K, 2] arrays of x, y in mm)."""
        self._buffer.fill(0)
        for polygon in polygons:
            cv2.fillPoly(self._buffer, [self._fixed(polygon)], 255, cv2.LINE_AA, _SHIFT)
        return self._result()

    def strokes(self, segments: np.ndarray, widths: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Round-capped lines ``segments`` [K, 2, 2] mm, ``widths`` mm wide, with coverage values in [0, 1].

        Drawn in the given order, so later (e.g. thicker, brighter) strokes win where they overlap.
        """
        self._buffer.fill(0)
        ends = self._fixed(segments)
        exact = np.asarray(widths) * _SUPERSAMPLE / self.mm_per_px
        thickness = np.maximum(np.round(exact), 1).astype(int)
        # a line thinner than one fine pixel is drawn one pixel wide but proportionally fainter
        grey = np.round(np.clip(values * np.minimum(exact / thickness, 1.0), 0.0, 1.0) * 255).astype(int)
        for (a, b), width, value in zip(ends, thickness, grey):
            cv2.line(self._buffer, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), int(value), int(width),
                     cv2.LINE_AA, _SHIFT)
        return self._result()

    def ellipses(self, centres: np.ndarray, axes: np.ndarray, angles: np.ndarray,
                 values: np.ndarray) -> np.ndarray:
        """Filled ellipses: centres [K, 2] mm, semi-axes [K, 2] mm, angles in degrees, coverage values."""
        self._buffer.fill(0)
        fixed_centres = self._fixed(centres)
        fixed_axes = np.maximum(np.round(np.asarray(axes) * self._scale), 1).astype(int)
        grey = np.round(np.clip(values, 0.0, 1.0) * 255).astype(int)
        for centre, axis, angle, value in zip(fixed_centres, fixed_axes, angles, grey):
            cv2.ellipse(self._buffer, (int(centre[0]), int(centre[1])), (int(axis[0]), int(axis[1])),
                        float(angle), 0.0, 360.0, int(value), -1, cv2.LINE_AA, _SHIFT)
        return self._result()


def ellipse(cx: float, cy: float, rx: float, ry: float, angle_deg: float = 0.0, n: int = 48) -> np.ndarray:
    """An ellipse as a polygon in mm, rotated by ``angle_deg`` (image y points down, towards the back)."""
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return _place(rx * np.cos(t), ry * np.sin(t), cx, cy, angle_deg)


def blob(rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float, *, roughness: float,
         harmonics: int = 5, power: float = 2.0, angle_deg: float = 0.0, n: int = 96) -> np.ndarray:
    """A closed smooth random shape: a superellipse whose radius wobbles by random low harmonics.

    ``roughness`` is the typical relative radius change; higher ``power`` gives a boxier outline.
    """
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    radius = radial_wobble(rng, t, roughness, harmonics)
    c, s = np.cos(t), np.sin(t)
    x = rx * radius * np.sign(c) * np.abs(c) ** (2.0 / power)
    y = ry * radius * np.sign(s) * np.abs(s) ** (2.0 / power)
    return _place(x, y, cx, cy, angle_deg)


def radial_wobble(rng: np.random.Generator, t: np.ndarray, roughness: float, harmonics: int) -> np.ndarray:
    """``1 + sum_k a_k cos(k t + p_k)`` for k = 2..harmonics+1, amplitudes falling as 1/k."""
    k = np.arange(2, harmonics + 2)
    amplitude = roughness * rng.normal(0.0, 1.0, k.size) / np.sqrt(k)
    phase = rng.uniform(0.0, 2.0 * np.pi, k.size)
    return 1.0 + (amplitude[:, None] * np.cos(k[:, None] * t[None, :] + phase[:, None])).sum(axis=0)


def _place(x: np.ndarray, y: np.ndarray, cx: float, cy: float, angle_deg: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    c, s = np.cos(a), np.sin(a)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)
