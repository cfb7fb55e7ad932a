"""What makes a slice benign or malignant: nodules and masses, always inside the lungs.

Benign: one to three smooth round nodules (10-20 mm), some calcified. Malignant: usually one large
(25-65 mm) lobulated or spiculated mass, one in twenty a small (10-18 mm) irregular nodule, sometimes
touching the pleura or cavitating. The size ranges overlap on purpose, so size alone does not decide
the class. Calibrated to IQ-OTH/NCCD (phantom v3, bench/RESULTS.md): its malignant slices mostly show
large, conspicuous advanced masses and its benign ones small well-defined nodules, so that at 96 px
(about 3.4 mm a pixel) a mass spans 7-19 pixels and a nodule 3-6, against vessel cross-sections of
1-2. Phantom v4 capped benign nodules at 20 mm instead of 24: at the demo's 112 px a lone 20-24 mm
nodule was a round blob of 7-8 pixels, a small mass by size with two pixels of smooth outline to say
otherwise, and the reference's benign nodules are small.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.data.phantom.anatomy import AIR, Anatomy, paint
from pipeline.data.phantom.canvas import Canvas, blob, ellipse

BENIGN, MALIGNANT = 0, 1  # indices into pipeline.constants.CLASSES


@dataclass(frozen=True)
class Finding:
    """One drawn lesion, the ground truth behind a slice's label."""

    kind: str  # "nodule", "calcified nodule", "mass"
    centre_mm: tuple[float, float]
    diameter_mm: float


def draw_lesions(anatomy: Anatomy, label: int, rng: np.random.Generator,
                 slice_mm: float) -> tuple[np.ndarray, list[Finding]]:
    """Paint the lesions ``label`` calls for; returns their coverage [S, S] and what was drawn."""
    lung_cover = np.clip(anatomy.lungs[0] + anatomy.lungs[1], 0.0, 1.0)
    cover = np.zeros_like(lung_cover)
    if label not in (BENIGN, MALIGNANT):
        return cover, []
    depth_mm = cv2.distanceTransform((lung_cover > 0.5).astype(np.uint8), cv2.DIST_L2, 5)
    depth_mm *= anatomy.canvas.mm_per_px
    if label == BENIGN:
        count = int(rng.choice((1, 2, 3), p=(0.45, 0.35, 0.2)))
        findings = [_nodule(anatomy, rng, depth_mm, lung_cover, cover, slice_mm) for _ in range(count)]
    else:
        findings = [_mass(anatomy, rng, depth_mm, lung_cover, cover, slice_mm)]
        if rng.random() < 0.15:  # a satellite nodule near the primary
            findings.append(_nodule(anatomy, rng, depth_mm, lung_cover, cover, slice_mm,
                                    near=findings[0].centre_mm, calcify=False))
    return cover, findings


def _place(rng: np.random.Generator, anatomy: Anatomy, depth_mm: np.ndarray, radius: float, *,
           pleural: bool = False, near: tuple[float, float] | None = None) -> tuple[np.ndarray, float]:
    """A centre where a lesion of ``radius`` fits in the lung (or straddles the pleura).

    Where no such place exists the lesion is shrunk to fit the deepest point of the lung.
    """
    if pleural:
        allowed = (depth_mm > 0.25 * radius) & (depth_mm < 0.7 * radius)
    else:
        allowed = depth_mm > radius + 1.5
    if near is not None:
        x, y = anatomy.canvas.x, anatomy.canvas.y
        allowed &= np.hypot(x - near[0], y - near[1]) < 35.0
    candidates = np.flatnonzero(allowed)
    if candidates.size == 0:
        candidates = np.array([int(np.argmax(depth_mm))])
        radius = min(radius, 0.8 * float(depth_mm.flat[candidates[0]]))
    row, col = np.unravel_index(candidates[rng.integers(candidates.size)], depth_mm.shape)
    centre = np.array([anatomy.canvas.x[0, col], anatomy.canvas.y[row, 0]], dtype=float)
    return centre + rng.uniform(-0.5, 0.5, 2) * anatomy.canvas.mm_per_px, max(radius, 0.5)


def _nodule(anatomy: Anatomy, rng: np.random.Generator, depth_mm: np.ndarray, lung_cover: np.ndarray,
            cover: np.ndarray, slice_mm: float, *, near: tuple[float, float] | None = None,
            calcify: bool = True) -> Finding:
    """A smooth round nodule, 10-20 mm; 40% are calcified (fully or centrally)."""
    diameter = float(np.exp(rng.uniform(np.log(10.0), np.log(20.0))))
    centre, radius = _place(rng, anatomy, depth_mm, diameter / 2.0, pleural=rng.random() < 0.12, near=near)
    shape = blob(rng, *centre, radius, radius * rng.uniform(0.85, 1.0), roughness=0.03, harmonics=3,
                 angle_deg=rng.uniform(0.0, 180.0))
    canvas = anatomy.canvas
    # a sphere thinner than the slice is averaged with the lung around it
    partial = min(1.0, max(0.45, 2.0 * radius / (1.2 * slice_mm)))
    mask = canvas.polygons([shape]) * lung_cover
    calcified = calcify and rng.random() < 0.4
    paint(anatomy.hu, mask * partial, rng.uniform(20.0, 60.0))
    if calcified:
        core = 1.0 if rng.random() < 0.5 else rng.uniform(0.45, 0.7)
        inner = canvas.polygons([ellipse(*centre, radius * core, radius * core)]) * lung_cover
        paint(anatomy.hu, inner, rng.uniform(300.0, 900.0))
    np.maximum(cover, mask, out=cover)
    kind = "calcified nodule" if calcified else "nodule"
    return Finding(kind, (float(centre[0]), float(centre[1])), 2.0 * radius)


def _mass(anatomy: Anatomy, rng: np.random.Generator, depth_mm: np.ndarray, lung_cover: np.ndarray,
          cover: np.ndarray, slice_mm: float) -> Finding:
    """A lobulated, often spiculated mass of 25-65 mm; one in twenty is a small 10-18 mm irregular nodule."""
    small = rng.random() < 0.05
    low, high = (10.0, 18.0) if small else (25.0, 65.0)
    diameter = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    centre, radius = _place(rng, anatomy, depth_mm, diameter / 2.0, pleural=rng.random() < 0.2)
    canvas = anatomy.canvas
    outline = blob(rng, *centre, radius, radius * rng.uniform(0.75, 1.0), roughness=rng.uniform(0.1, 0.25),
                   harmonics=6, angle_deg=rng.uniform(0.0, 180.0))
    if rng.random() < 0.3:  # ground-glass halo of tumour infiltration or haemorrhage
        halo = blob(rng, *centre, radius * 1.35, radius * 1.3, roughness=0.15, harmonics=5)
        paint(anatomy.hu, canvas.polygons([halo]) * lung_cover, rng.uniform(-600.0, -450.0))
    mask = canvas.polygons([outline])
    if rng.random() < 0.65:
        mask = np.maximum(mask, _spicules(rng, canvas, outline, centre, radius))
    mask *= lung_cover
    partial = min(1.0, max(0.5, 2.0 * radius / (1.2 * slice_mm)))
    paint(anatomy.hu, mask * partial, rng.uniform(20.0, 50.0))
    if radius > 7.5 and rng.random() < 0.12:  # eccentric cavity with a thick irregular wall
        offset = rng.uniform(-0.25, 0.25, 2) * radius
        hole = blob(rng, *(centre + offset), radius * rng.uniform(0.3, 0.5), radius * rng.uniform(0.25, 0.45),
                    roughness=0.15, harmonics=4)
        paint(anatomy.hu, canvas.polygons([hole]) * lung_cover, AIR)
    np.maximum(cover, mask, out=cover)
    return Finding("mass", (float(centre[0]), float(centre[1])), 2.0 * radius)


def _spicules(rng: np.random.Generator, canvas: Canvas, outline: np.ndarray, centre: np.ndarray,
              radius: float) -> np.ndarray:
    """Thin strands radiating from the margin into the lung (corona radiata)."""
    count = int(rng.integers(5, 15))
    start = outline[rng.integers(0, len(outline), count)]
    direction = start - centre
    direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-6)
    length = np.minimum(rng.uniform(0.4, 1.1, count) * radius, 15.0) + 2.0
    segments = np.stack([start - direction * 1.0, start + direction * length[:, None]], axis=1)
    return canvas.strokes(segments, rng.uniform(0.6, 1.6, count), rng.uniform(0.6, 0.9, count))
