"""Pulmonary vessels: a random branching tree per lung, cut by the slice plane.

Segments lying in the plane show as tapering lines; those crossing it show as round or oval dots, which
is what makes real vessels look like small nodules. Thin vessels lose contrast to through-plane partial
volume, as they do in a slice a few millimetres thick. Phantom v3 thinned the hilar roots (3.5-6 mm)
and the scattered twigs, calibrated so the tree stays visible at the demo's 96 px without hiding
the lesions (bench/RESULTS.md).
"""

from __future__ import annotations

import numpy as np

from pipeline.data.phantom.anatomy import AIR, BLOOD, Anatomy, paint

_GENERATIONS = 8


def draw_vessels(anatomy: Anatomy, rng: np.random.Generator, slice_mm: float) -> None:
    """Paint vessels (and the bronchi beside the larger ones) into the lungs of ``anatomy``."""
    canvas = anatomy.canvas
    lines, line_widths, dots, dot_axes, dot_angles, dot_widths = [], [], [], [], [], []
    for lung in anatomy.lungs:
        inside = lung > 0.5
        if inside.sum() < 20:
            continue
        segments, widths, in_plane = _tree(rng, inside, canvas.x[0], canvas.y[:, 0], anatomy.midline,
                                           anatomy.scale)
        lines.append(segments[in_plane])
        line_widths.append(widths[in_plane])
        # most out-of-plane branches miss this slice; the rest cross it as a dot
        crosses = ~in_plane & (rng.random(len(widths)) < 0.3)
        cut = segments[crosses]
        along = rng.uniform(0.2, 0.9, len(cut))[:, None]
        direction = cut[:, 1] - cut[:, 0]
        dots.append(cut[:, 0] + along * direction)
        half = widths[crosses] / 2.0
        dot_axes.append(np.stack([half * rng.uniform(1.0, 1.8, half.size), half], axis=1))
        dot_angles.append(np.degrees(np.arctan2(direction[:, 1], direction[:, 0])))
        dot_widths.append(widths[crosses])
        twigs, twig_widths = _twigs(rng, inside, canvas.x[0], canvas.y[:, 0], canvas.mm_per_px)
        dots.append(twigs)
        dot_axes.append(np.repeat(twig_widths[:, None] / 2.0, 2, axis=1))
        dot_angles.append(np.zeros(len(twigs)))
        dot_widths.append(twig_widths)
    if not lines:
        return
    lines, line_widths = np.concatenate(lines), np.concatenate(line_widths)
    dots, dot_axes = np.concatenate(dots), np.concatenate(dot_axes)
    dot_angles, dot_widths = np.concatenate(dot_angles), np.concatenate(dot_widths)

    contrast = np.clip(line_widths / slice_mm, 0.3, 1.0)
    order = np.argsort(contrast)
    cover = canvas.strokes(lines[order], line_widths[order], contrast[order])
    contrast = np.clip(dot_widths / slice_mm, 0.3, 1.0)
    order = np.argsort(contrast)
    dot_cover = canvas.ellipses(dots[order], dot_axes[order], dot_angles[order], contrast[order])
    cover = np.maximum(cover, dot_cover)
    lung_cover = np.clip(anatomy.lungs[0] + anatomy.lungs[1], 0.0, 1.0)
    paint(anatomy.hu, cover * lung_cover, BLOOD)
    _draw_bronchi(anatomy, rng, dots, dot_widths, lung_cover)


def _tree(rng: np.random.Generator, inside: np.ndarray, xs: np.ndarray, ys: np.ndarray, midline: float,
          scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grow branches generation by generation from the hilum; a branch stops where it leaves the lung.

    A branch runs in the slice plane for a while (drawn as a line) and then leaves it (a dot where
    it crosses); children mostly keep their parent's state, so lines branch and taper.
    Returns segments [K, 2, 2] (start, end; x, y mm), widths [K] mm and which lie in the plane [K].
    """
    rows, cols = np.nonzero(inside)
    px, py = xs[cols], ys[rows]
    centroid = np.array([px.mean(), py.mean()])
    # the hilum: the most medial lung pixels around the lung's mid-height
    band = np.abs(py - centroid[1]) < 12.0 * scale
    medial = np.abs(px - midline)
    pick = np.argmin(np.where(band, medial, np.inf)) if band.any() else np.argmin(medial)
    hilum = np.array([px[pick], py[pick]])
    heading = np.arctan2(*(centroid - hilum)[::-1])

    roots = rng.integers(3, 6)
    pos = hilum + rng.normal(0.0, 4.0, (roots, 2))
    angle = heading + rng.uniform(-1.3, 1.3, roots)
    width = rng.uniform(3.5, 6.0, roots) * scale
    plane = rng.random(roots) < 0.35
    out_segments, out_widths, out_plane = [], [], []
    mm = xs[1] - xs[0]
    for _ in range(_GENERATIONS):
        length = width * rng.uniform(1.5, 3.5, width.size) + 4.0
        end = pos + length[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
        col = np.clip(np.round((end[:, 0] - xs[0]) / mm).astype(int), 0, xs.size - 1)
        row = np.clip(np.round((end[:, 1] - ys[0]) / mm).astype(int), 0, ys.size - 1)
        stays = inside[row, col]
        out_segments.append(np.stack([pos, end], axis=1))
        out_widths.append(width)
        out_plane.append(plane)
        grow = stays & (width > 1.2)
        pos, angle, width, plane = end[grow], angle[grow], width[grow], plane[grow]
        fork = rng.random(width.size) < 0.7
        spread = np.radians(rng.uniform(15.0, 40.0, width.size))
        bend = np.radians(rng.normal(0.0, 10.0, width.size))
        pos = np.concatenate([pos, pos[fork]])
        angle = np.concatenate([np.where(fork, angle - spread, angle + bend), angle[fork] + spread[fork]])
        width = np.concatenate([width * np.where(fork, rng.uniform(0.62, 0.8, fork.size), 0.85),
                                width[fork] * rng.uniform(0.62, 0.8, int(fork.sum()))])
        plane = np.concatenate([plane, plane[fork]])
        plane = np.where(rng.random(plane.size) < 0.5, plane, rng.random(plane.size) < 0.25)
        if width.size == 0:
            break
    return np.concatenate(out_segments), np.concatenate(out_widths), np.concatenate(out_plane)


def _twigs(rng: np.random.Generator, inside: np.ndarray, xs: np.ndarray, ys: np.ndarray,
           mm_per_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Small peripheral vessel cross-sections scattered through the lung, sparse under the pleura."""
    rows, cols = np.nonzero(inside)
    count = int(rows.size * mm_per_px ** 2 / rng.uniform(600.0, 1000.0))
    pick = rng.integers(0, rows.size, count)
    jitter = rng.uniform(-0.5, 0.5, (count, 2)) * mm_per_px
    centres = np.stack([xs[cols[pick]], ys[rows[pick]]], axis=1) + jitter
    return centres, rng.uniform(0.8, 2.4, count)


def _draw_bronchi(anatomy: Anatomy, rng: np.random.Generator, dots: np.ndarray, widths: np.ndarray,
                  lung_cover: np.ndarray) -> None:
    """Air-filled rings beside some of the larger vessel cross-sections (bronchovascular bundles)."""
    large = np.flatnonzero(widths > 3.5)
    if large.size == 0:
        return
    chosen = large[rng.random(large.size) < 0.5]
    direction = rng.uniform(0.0, 2.0 * np.pi, chosen.size)
    radius = widths[chosen] * rng.uniform(0.45, 0.6, chosen.size)
    unit = np.stack([np.cos(direction), np.sin(direction)], axis=1)
    offset = (widths[chosen] / 2.0 + radius + 0.5)[:, None] * unit
    centres = dots[chosen] + offset
    zeros = np.zeros(chosen.size)
    canvas = anatomy.canvas
    wall = canvas.ellipses(centres, np.repeat(radius[:, None], 2, 1), zeros, np.full(chosen.size, 0.8))
    lumen = canvas.ellipses(centres, np.repeat(radius[:, None] * 0.65, 2, 1), zeros, np.ones(chosen.size))
    paint(anatomy.hu, wall * lung_cover, 0.0)
    paint(anatomy.hu, lumen * lung_cover, AIR)
