"""The scanner: resolution, reconstruction-kernel edge enhancement, quantum noise, and the lung window.

Noise is simulated, not painted: filtered back-projection is linear, so the noise of a scan is the
FBP of the noise in its sinogram. A small bank of such fields is reconstructed once (with
skimage's iradon), split by projection angle into sectors. Each scan then weights the sectors by how
strongly its own body attenuates along those directions (a coarse forward projection, with partial
tube-current modulation), which gives the anisotropic, streaky noise of real CT: noisier along the
long lateral paths through the chest than front to back.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
from skimage.transform import iradon, radon


_SECTORS = 8
_REALISATIONS = 2
_BANK_SEED = 20190101  # fixed: the bank is part of the scanner, not of the patient
_MU_WATER = 0.0192  # linear attenuation of water per mm at about 70 keV
#: central projection angle (degrees, skimage's convention) of each sector of views
_SECTOR_ANGLES = (np.arange(_SECTORS) + 0.5) * (180.0 / _SECTORS)


@lru_cache(maxsize=4)
def noise_bank(size: int) -> np.ndarray:
    """FBP of white sinogram noise, [realisations, sectors, M, M] float32 with M > size.

    Summed over sectors, a realisation has unit standard deviation. Larger than the image so that
    each scan can take its own crop.
    """
    rng = np.random.default_rng(_BANK_SEED)
    side = size + max(size // 2, 32)
    views = max(2 * size, 8 * _SECTORS) // _SECTORS * _SECTORS
    theta = np.arange(views) * (180.0 / views)
    detectors = int(np.ceil(side * np.sqrt(2.0))) + 2
    bank = np.empty((_REALISATIONS, _SECTORS, side, side), np.float32)
    for r in range(_REALISATIONS):
        sinogram = rng.standard_normal((detectors, views))
        for k, views_k in enumerate(np.array_split(np.arange(views), _SECTORS)):
            # iradon divides by the number of views it was given; undo that so sectors add up to the whole
            field = iradon(sinogram[:, views_k], theta=theta[views_k], output_size=side, circle=False,
                           filter_name="shepp-logan")
            bank[r, k] = field * (views_k.size / views)
        bank[r] /= bank[r].sum(axis=0).std()
    return bank




def acquire(hu: np.ndarray, rng: np.random.Generator, mm_per_px: float) -> np.ndarray:
    """What a scanner would reconstruct from the phantom ``hu``: blurred, edge-enhanced, noisy HU."""
    size = hu.shape[0]
    blurred = cv2.GaussianBlur(hu, (0, 0), rng.uniform(0.5, 0.8))
    # a sharp lung kernel overshoots at edges: dark rims beside bright vessels
    image = blurred + rng.uniform(0.2, 0.5) * (blurred - cv2.GaussianBlur(blurred, (0, 0), 1.6))
    weights = _sector_weights(hu, mm_per_px, rng.uniform(0.3, 0.7))
    bank = noise_bank(size)
    r = rng.integers(_REALISATIONS)
    top, left = rng.integers(0, bank.shape[-1] - size + 1, 2)
    crop = bank[r, :, top:top + size, left:left + size]
    noise = np.zeros((size, size), np.float32)
    for weight, field in zip(weights, crop):  # not tensordot: a BLAS call here spins idle threads
        noise += np.float32(weight) * field
    return image + np.float32(rng.uniform(15.0, 40.0)) * noise


def _sector_weights(hu: np.ndarray, mm_per_px: float, modulation: float) -> np.ndarray:
    """Relative noise of each sector's views, with RMS 1.

    Quantum noise of a ray grows as exp(line integral / 2); tube-current modulation takes back a
    fraction ``modulation`` of that (in the exponent) by raising the current on the thick views.
    """
    coarse = 64
    mu = _MU_WATER * np.clip(1.0 + cv2.resize(hu, (coarse, coarse), interpolation=cv2.INTER_AREA) / 1000.0,
                             0.0, None)
    line_integrals = radon(mu.astype(np.float64), theta=_SECTOR_ANGLES, circle=False)
    line_integrals *= mm_per_px * hu.shape[0] / coarse
    std = np.exp((1.0 - modulation) * line_integrals.max(axis=0) / 2.0)
    return std / np.sqrt(np.mean(std ** 2))
