"""The patient: an axial chest slice in Hounsfield units, built from layered random shapes.

Image axes follow radiology convention: anterior at the top, the patient's right on the image left,
so +x is the patient's left and +y is posterior (towards the table). All sizes are millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from pipeline.data.phantom.canvas import Canvas, blob, ellipse, radial_wobble

AIR, FAT, MUSCLE, BLOOD, BONE = -1000.0, -95.0, 45.0, 42.0, 700.0
_N_CONTOUR = 180


@dataclass
class Anatomy:
    """One rendered patient: the HU map and the masks later stages place lesions and vessels in."""

    canvas: Canvas
    hu: np.ndarray  # float32 [S, S]
    body: np.ndarray  # float32 coverage [S, S]
    lungs: np.ndarray  # float32 coverage [2, S, S]: patient right (image left), patient left
    midline: float  # x of the mediastinum, mm
    scale: float  # patient size relative to an average adult


def paint(hu: np.ndarray, coverage: np.ndarray, value: float | np.ndarray) -> None:
    """Composite a tissue over what is already there, in proportion to how much of each pixel it fills."""
    hu += coverage * (value - hu)


def build_anatomy(rng: np.random.Generator, size: int) -> Anatomy:
    """Draw body, table, chest wall, bones, mediastinum and lungs (no vessels, no lesions)."""
    half_width = rng.uniform(125.0, 165.0)
    half_depth = half_width * rng.uniform(0.6, 0.76)
    fov = 2.0 * half_width * rng.uniform(1.04, 1.15)  # the body fills 87-96% of the width, as in IQ-OTH/NCCD
    level = rng.choice(3, p=(0.25, 0.35, 0.4))  # 0 aortic arch, 1 carina / pulmonary trunk, 2 heart
    cx = rng.normal(0.0, 5.0)
    cy = min(rng.normal(-8.0, 6.0), fov / 2.0 - half_depth - rng.uniform(28.0, 45.0))
    canvas = Canvas(size, fov)
    hu = np.full((size, size), AIR, np.float32)
    scale = half_width / 145.0

    t = np.linspace(0.0, 2.0 * np.pi, _N_CONTOUR, endpoint=False)  # the contour's own parameter
    outline = blob(rng, 0.0, 0.0, half_width, half_depth, roughness=0.03, harmonics=4,
                   power=rng.uniform(2.1, 2.6), n=_N_CONTOUR)
    back = half_depth * rng.uniform(0.86, 0.94)
    outline[:, 1] = np.minimum(outline[:, 1], back)  # flattened where the patient lies on the table
    outline += (cx, cy)
    back += cy

    _draw_table(canvas, hu, rng, back + rng.uniform(0.0, 4.0))

    body_parts = [outline]
    if rng.random() < 0.35:  # breasts: a soft anterior bulge either side of the sternum
        r, offset = rng.uniform(28.0, 42.0) * scale, half_width * rng.uniform(0.35, 0.45)
        y, tilt = cy - half_depth * rng.uniform(0.6, 0.7), rng.uniform(10.0, 25.0)
        body_parts += [ellipse(cx + side * offset, y, r * 1.3, r * 0.9, side * tilt)
                       for side in (-1.0, 1.0)]
    body = canvas.polygons(body_parts)
    paint(hu, body, FAT + rng.uniform(-15.0, 15.0))

    # Chest wall: fat, then muscle (thick behind, where the paraspinal muscles run), then the cavity.
    fat = rng.uniform(4.0, 24.0) * (1.0 + 0.4 * np.abs(np.cos(t))) * radial_wobble(rng, t, 0.3, 3)
    muscle = rng.uniform(7.0, 13.0) * scale + 6.0 * scale * _bump(t, -np.pi / 2, 0.6)  # pectorals
    vertebra_r = rng.uniform(14.0, 18.0) * scale
    vertebra = np.array([cx + rng.normal(0.0, 1.5), back - rng.uniform(58.0, 72.0) * scale])
    spine_depth = back - vertebra[1] - fat[_angle_index(np.pi / 2)]
    gutter = rng.uniform(0.24, 0.32)
    muscle = muscle + np.maximum(spine_depth - muscle, 0.0) * _bump(t, np.pi / 2, gutter)
    muscle_cover = canvas.polygons([_shrink(outline, (cx, cy), fat)])
    paint(hu, muscle_cover, MUSCLE + rng.uniform(-10.0, 10.0))
    wall = fat + muscle
    cavity = _shrink(outline, (cx, cy), wall)

    midline = vertebra[0] + rng.normal(0.0, 3.0)
    mediastinum, structures = _mediastinum(rng, level, cavity, midline, vertebra, vertebra_r, scale)
    mediastinum_cover = canvas.polygons(mediastinum)
    paint(hu, mediastinum_cover, FAT + rng.uniform(-5.0, 35.0))  # mediastinal fat, some strands in it
    for polygon, value in structures:
        paint(hu, canvas.polygons([polygon]), value)
    _draw_ribs(canvas, hu, rng, outline, (cx, cy), wall, scale, level, muscle_cover)
    _draw_spine(canvas, hu, rng, vertebra, vertebra_r, scale)

    inner = canvas.polygons([_shrink(outline, (cx, cy), wall + rng.uniform(2.0, 4.0))])
    free = inner * (1.0 - mediastinum_cover)
    lungs = np.empty((2, size, size), np.float32)
    cavity_half = 0.5 * (cavity[:, 0].max() - cavity[:, 0].min())
    cavity_mid = 0.5 * (cavity[:, 1].max() + cavity[:, 1].min())
    depth = 0.5 * (cavity[:, 1].max() - cavity[:, 1].min())
    for i, side in enumerate((-1.0, 1.0)):
        shape = blob(rng, cx + side * 0.5 * cavity_half, cavity_mid + rng.normal(0.0, 4.0),
                     0.68 * cavity_half * rng.uniform(0.95, 1.1), depth * rng.uniform(1.0, 1.12),
                     roughness=rng.uniform(0.05, 0.1), harmonics=5, power=2.4)
        own_side = (side * (canvas.x - midline) > 0).astype(np.float32)
        lungs[i] = _smooth_mask(canvas.polygons([shape]) * free * own_side, canvas.mm_per_px)
    if level == 2 and rng.random() < 0.4:  # right hemidiaphragm / liver dome rising from the lung base
        r = rng.uniform(35.0, 60.0) * scale
        dome = canvas.polygons([ellipse(cx - 0.7 * cavity_half, cavity_mid + depth * 1.05, r * 1.4, r)])
        paint(hu, dome * lungs[0], 55.0)
        lungs[0] *= 1.0 - dome

    union = np.clip(lungs[0] + lungs[1], 0.0, 1.0)
    gradient = rng.uniform(15.0, 50.0) * (canvas.y - cavity_mid) / depth  # dependent lung is denser
    paint(hu, union, rng.uniform(-890.0, -830.0) + gradient + _low_frequency(rng, size, 12.0))
    _draw_fissures(canvas, hu, rng, lungs, midline, cavity_mid, depth, scale)
    return Anatomy(canvas=canvas, hu=hu, body=body, lungs=lungs, midline=midline, scale=scale)


def _angle_index(angle: float) -> int:
    """The contour point nearest to ``angle`` (radians, image convention)."""
    return int(round(angle % (2 * np.pi) / (2 * np.pi) * _N_CONTOUR)) % _N_CONTOUR


def _bump(t: np.ndarray, centre: float, width: float) -> np.ndarray:
    """A Gaussian bump in angle, wrapped round the circle."""
    return np.exp(-((np.angle(np.exp(1j * (t - centre)))) / width) ** 2)


def _shrink(outline: np.ndarray, centre: tuple[float, float], depth: np.ndarray | float) -> np.ndarray:
    """Move each contour point ``depth`` mm towards ``centre`` (layers under the skin)."""
    offset = outline - centre
    radius = np.linalg.norm(offset, axis=1)
    return centre + offset * (np.maximum(radius - depth, 1.0) / radius)[:, None]


def _smooth_mask(coverage: np.ndarray, mm_per_px: float) -> np.ndarray:
    """Round the corners a polygon intersection leaves, keeping a one-pixel partial-volume edge."""
    sigma = 2.5 / mm_per_px
    smooth = cv2.GaussianBlur(coverage, (0, 0), sigma)
    return np.clip((smooth - 0.5) * 2.0 + 0.5, 0.0, 1.0)


def _low_frequency(rng: np.random.Generator, size: int, amplitude: float) -> np.ndarray:
    coarse = rng.normal(0.0, amplitude, (6, 6)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def _draw_table(canvas: Canvas, hu: np.ndarray, rng: np.random.Generator, top: float) -> None:
    """A carbon-fibre couch: a gently concave board with bright shells and a foam core."""
    radius = rng.uniform(450.0, 900.0)
    half = rng.uniform(200.0, 240.0)
    thickness = rng.uniform(9.0, 15.0)
    shell = rng.uniform(1.2, 2.0)
    x = np.linspace(-half, half, 40)
    sag = radius - np.sqrt(radius ** 2 - x ** 2)
    upper = np.stack([x, top - sag], axis=1)
    lower = np.stack([x[::-1], top - sag[::-1] + thickness], axis=1)
    paint(hu, canvas.polygons([np.concatenate([upper, lower])]), rng.uniform(150.0, 350.0))
    core = np.concatenate([upper + (0.0, shell), lower - (0.0, shell)])
    paint(hu, canvas.polygons([core]), rng.uniform(-960.0, -900.0))


def _draw_ribs(canvas: Canvas, hu: np.ndarray, rng: np.random.Generator, outline: np.ndarray,
               centre: tuple[float, float], wall: np.ndarray, scale: float, level: int,
               muscle: np.ndarray) -> None:
    """Rib cross-sections just outside the pleura, the sternum in front, scapulae behind."""
    centres, axes, angles = [], [], []
    for side in (-1.0, 1.0):
        count = rng.integers(6, 10)
        # angle from the posterior midline round to the front, on this side
        sweep = np.sort(rng.uniform(0.22, 0.85, count)) * np.pi + rng.normal(0.0, 0.03, count)
        for a in sweep:
            t = np.pi / 2 - side * a  # image angle (x right, y down)
            i = _angle_index(t)
            thick = rng.uniform(5.0, 8.0) * scale
            point = _shrink(outline[i:i + 1], centre, wall[i] - 0.6 * thick)[0]
            posterior = a < 0.45 * np.pi
            length = rng.uniform(12.0, 26.0) if posterior else rng.uniform(6.0, 14.0)
            centres.append(point)
            axes.append((length * scale / 2, thick / 2))
            angles.append(np.degrees(t) + 90.0 + rng.normal(0.0, 8.0))
    cover = canvas.ellipses(np.array(centres), np.array(axes), np.array(angles), np.ones(len(angles)))
    paint(hu, cover, BONE)
    front = _angle_index(-np.pi / 2)
    sternum = _shrink(outline[front:front + 1], centre, wall[front] - 5.0 * scale)[0]
    paint(hu, canvas.polygons([ellipse(*sternum, rng.uniform(11.0, 17.0) * scale, 5.5 * scale)]), BONE)
    if level < 2 and rng.random() < 0.7:  # scapulae, within the posterior muscles
        blades = []
        for side in (-1.0, 1.0):
            i = _angle_index(np.pi / 2 + side * rng.uniform(0.75, 1.0))
            point = _shrink(outline[i:i + 1], centre, wall[i] * 0.5)[0]
            tilt = np.degrees(np.arctan2(point[1] - centre[1], point[0] - centre[0])) + 90.0
            blades.append(ellipse(*point, rng.uniform(18.0, 30.0) * scale, 2.5 * scale, tilt))
        paint(hu, canvas.polygons(blades) * muscle, BONE)


def _draw_spine(canvas: Canvas, hu: np.ndarray, rng: np.random.Generator, vertebra: np.ndarray,
                radius: float, scale: float) -> None:
    """Vertebral body (cortex and marrow), canal with cord, lamina and spinous process."""
    vx, vy = vertebra
    canal_y = vy + radius + 7.0 * scale
    posterior = [ellipse(vx, canal_y + 2.0 * scale, 13.0 * scale, 11.0 * scale),
                 ellipse(vx, canal_y + 18.0 * scale, 3.5 * scale, 13.0 * scale),
                 ellipse(vx - 14.0 * scale, canal_y - 2.0 * scale, 12.0 * scale, 3.5 * scale, -20.0),
                 ellipse(vx + 14.0 * scale, canal_y - 2.0 * scale, 12.0 * scale, 3.5 * scale, 20.0)]
    paint(hu, canvas.polygons(posterior), BONE)
    paint(hu, canvas.polygons([ellipse(vx, vy, radius * 1.05, radius)]), 900.0)
    paint(hu, canvas.polygons([ellipse(vx, vy, radius * 0.85, radius * 0.8)]), rng.uniform(180.0, 300.0))
    paint(hu, canvas.polygons([ellipse(vx, canal_y, 7.0 * scale, 6.0 * scale)]), 30.0)


def _mediastinum(rng: np.random.Generator, level: int, cavity: np.ndarray, mx: float, vertebra: np.ndarray,
                 vertebra_r: float, scale: float) -> tuple[list[np.ndarray], list[tuple[np.ndarray, float]]]:
    """The space between the lungs and what is drawn in it for the chosen slice level.

    Returns the polygons whose union the lungs must avoid, and (polygon, HU) pairs to paint in order.
    """
    vx, vy = vertebra
    front = cavity[:, 1].min()
    s = scale
    structures: list[tuple[np.ndarray, float]] = []

    def organ(polygon: np.ndarray, value: float) -> np.ndarray:
        structures.append((polygon, value))
        return polygon

    anterior = rng.uniform(3.0, 9.0) * s
    middle = rng.uniform(14.0, 24.0) * s
    centre_y = front + rng.uniform(0.35, 0.5) * (vy - front)
    behind = vy - vertebra_r - 8.0 * s
    band = np.array([[mx - anterior, front - 15.0], [mx + anterior, front - 15.0],
                     [mx + middle + 4.0, centre_y], [mx + 10.0 * s, behind], [mx + vertebra_r, vy],
                     [mx + vertebra_r, vy + 40.0], [mx - vertebra_r, vy + 40.0], [mx - vertebra_r, vy],
                     [mx - 8.0 * s, behind], [mx - middle, centre_y]])
    parts = [band, ellipse(vx, vy, vertebra_r + 3.0 * s, vertebra_r + 3.0 * s)]
    aorta_r = rng.uniform(10.0, 13.0) * s
    descending = (vx + vertebra_r * 0.7 + aorta_r * rng.uniform(0.4, 0.8), vy - vertebra_r - aorta_r * 0.6)
    trachea_y = vy - vertebra_r - rng.uniform(14.0, 20.0) * s
    if level == 0:  # aortic arch, trachea, oesophagus, superior vena cava
        arch = ellipse(mx + 6.0 * s, 0.5 * (front + trachea_y) + 4.0 * s, rng.uniform(30.0, 38.0) * s,
                       aorta_r * 1.05, rng.uniform(35.0, 55.0))
        parts += [organ(arch, BLOOD),
                  organ(ellipse(mx - rng.uniform(22.0, 30.0) * s, front + 30.0 * s, 9.0 * s, 10.0 * s),
                        BLOOD)]
        parts += _airway(organ, mx, trachea_y, rng.uniform(8.0, 11.0) * s)
        organ(ellipse(mx + 7.0 * s, trachea_y + 13.0 * s, 6.0 * s, 4.5 * s), 35.0)
    elif level == 1:  # ascending and descending aorta, pulmonary trunk, main bronchi
        ascending = (mx - rng.uniform(0.0, 10.0) * s, front + rng.uniform(30.0, 40.0) * s)
        parts += [organ(ellipse(*ascending, 16.0 * s, 16.0 * s), BLOOD),
                  organ(ellipse(ascending[0] + 28.0 * s, ascending[1] - 2.0 * s, 14.0 * s, 14.0 * s), BLOOD),
                  organ(ellipse(*descending, aorta_r, aorta_r), BLOOD),
                  organ(ellipse(ascending[0] - 22.0 * s, ascending[1] + 4.0 * s, 9.0 * s, 10.0 * s), BLOOD)]
        for side in (-1.0, 1.0):
            parts += _airway(organ, mx + side * rng.uniform(14.0, 18.0) * s, trachea_y + 2.0 * s,
                             rng.uniform(5.5, 7.5) * s)
        organ(ellipse(mx + 4.0 * s, vy - vertebra_r - 6.0 * s, 6.0 * s, 4.0 * s), 35.0)
    else:  # the heart in its pericardial fat, descending aorta
        rx, ry, tilt = rng.uniform(42.0, 56.0) * s, rng.uniform(32.0, 42.0) * s, rng.uniform(-35.0, -15.0)
        heart = (mx + rng.uniform(12.0, 30.0) * s, front + ry + rng.uniform(0.0, 12.0) * s)
        fat = rng.uniform(2.0, 7.0)
        parts += [ellipse(*heart, rx + fat, ry + fat, tilt),
                  organ(blob(rng, *heart, rx, ry, roughness=0.04, harmonics=3, angle_deg=tilt), BLOOD),
                  organ(ellipse(*descending, aorta_r, aorta_r), BLOOD)]
        organ(ellipse(mx + 2.0 * s, vy - vertebra_r - 5.0 * s, 6.0 * s, 4.0 * s), 35.0)
    return parts, structures


def _airway(organ: Callable[[np.ndarray, float], np.ndarray], x: float, y: float,
            radius: float) -> list[np.ndarray]:
    """An air-filled tube with a thin soft-tissue wall."""
    wall = organ(ellipse(x, y, radius + 2.0, radius + 1.5), 20.0)
    organ(ellipse(x, y, radius, radius * 0.9), AIR)
    return [wall]


def _draw_fissures(canvas: Canvas, hu: np.ndarray, rng: np.random.Generator, lungs: np.ndarray,
                   midline: float, mid: float, depth: float, scale: float) -> None:
    """Faint oblique fissures: thin curved lines of slightly denser lung."""
    segments, widths = [], []
    for side in (-1.0, 1.0):
        if rng.random() < 0.6:
            x0 = midline + side * rng.uniform(20.0, 40.0) * scale
            t = np.linspace(0.0, 1.0, 10)
            xs = x0 + side * t * rng.uniform(60.0, 90.0) * scale
            ys = mid + depth * (0.7 - 1.1 * t + rng.uniform(-0.15, 0.15) * np.sin(np.pi * t))
            pts = np.stack([xs, ys], axis=1)
            segments += list(np.stack([pts[:-1], pts[1:]], axis=1))
            widths += [0.6] * (len(pts) - 1)
    if segments:
        cover = canvas.strokes(np.array(segments), np.array(widths), np.full(len(widths), 0.6))
        paint(hu, cover * (lungs[0] + lungs[1]), -550.0)
