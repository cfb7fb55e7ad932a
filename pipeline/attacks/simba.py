"""SimBA (Guo et al., 2019): a score-based black-box attack that walks one basis direction at a time.

The simplest attack that works with probabilities alone, so it shows what an attacker without the
weights achieves with a few hundred queries. Each round picks a fresh direction of an orthonormal
basis (low-frequency DCT patterns first, or single pixels) and steps ``±eps`` along it, keeping the
step when the true-class probability drops. Directions are orthonormal, so the L2 size of the
result is ``eps`` times the square root of the accepted steps; there is no norm ball to respect.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.attacks.base import Attack, Param, seed_param
from pipeline.attacks.objectives import label_probability, succeeded
from pipeline.attacks.registry import register
from pipeline.progress import ProgressCallback, report


def dct_matrix(size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Orthonormal DCT-II basis: row ``k`` is the ``k``-th cosine pattern of length ``size``."""
    positions = torch.arange(size, device=device, dtype=torch.float64)
    frequencies = torch.arange(size, device=device, dtype=torch.float64)[:, None]
    basis = torch.cos(math.pi * (2 * positions + 1) * frequencies / (2 * size)) * math.sqrt(2 / size)
    basis[0] /= math.sqrt(2)
    return basis.to(dtype)


@register
class SimBA(Attack):
    """SimBA: black-box search along orthonormal (DCT or pixel) directions, one query per try.

    Paper: Guo, Gardner, You, Wilson and Weinberger, "Simple Black-box Adversarial Attacks", ICML 2019.
    https://arxiv.org/abs/1905.07121
    """

    name = "simba"
    title = "SimBA (score-based black-box)"
    family = "black-box"
    norm = None
    supports_target = True
    description = (
        "Steps ±eps along one random basis direction per round (low-frequency DCT or single pixels) and "
        "keeps the step when the true-class probability falls. Needs only the model's probabilities."
    )
    eps: float
    n_queries: int
    basis: str
    freq_ratio: float
    seed: int
    params = (
        Param("eps", float, 0.2, "L2 size of each step along a basis direction (image scale)",
              low=1e-3, high=2.0),
        Param("n_queries", int, 1000, "model queries per scan, the first (clean) one included",
              low=1, high=100_000),
        Param("basis", str, "dct", "directions to search: low-frequency DCT patterns or single pixels",
              choices=("dct", "pixel")),
        Param("freq_ratio", float, 0.125, "DCT basis: side of the low-frequency block tried first, "
              "as a fraction of the image side", low=0.01, high=1.0),
        seed_param(),
    )

    @torch.no_grad()
    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
             progress: Optional[ProgressCallback]) -> torch.Tensor:
        n, _, height, width = x.shape
        labels = y if target is None else target
        targeted = target is not None
        order = self._order(n, height, width, x.device)
        patterns = (dct_matrix(height, x.device, x.dtype), dct_matrix(width, x.device, x.dtype))

        current = x.clone()
        logits = model(current)
        score = self._score(logits, labels, targeted)
        done = succeeded(logits, labels, targeted)
        queries = torch.ones(n, dtype=torch.long, device=x.device)
        self.record(logits, y)

        for coordinate in range(height * width):
            active = (~done & (queries < self.n_queries)).nonzero().flatten()
            if active.numel() == 0:
                break
            direction = self._direction(order[active, coordinate], patterns, x)
            for sign in (-1.0, 1.0):
                if active.numel() == 0:
                    break
                candidate = (current[active] + sign * direction).clamp(0.0, 1.0)
                candidate_logits = model(candidate)
                queries[active] += 1
                candidate_score = self._score(candidate_logits, labels[active], targeted)
                better = candidate_score < score[active]
                keep = active[better]
                current[keep] = candidate[better]
                logits[keep] = candidate_logits[better]
                score[keep] = candidate_score[better]
                # Directions that did not help are tried the other way, while the budget lasts.
                still = ~better & (queries[active] < self.n_queries)
                active, direction = active[still], direction[still]
            done = succeeded(logits, labels, targeted)
            self.record(logits, y)
            report(progress, int(queries.max()), self.n_queries,
                   f"{int(done.sum())}/{n} fooled after {coordinate + 1} directions")
        self.record_queries(queries)
        return current

    def _order(self, n: int, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Per scan, the coordinates ``u * width + v`` in search order: random, low frequencies first."""
        keys = torch.rand((n, height * width), generator=self.generator(device), device=device)
        if self.basis == "dct":
            rows = torch.arange(height, device=device)[:, None]
            cols = torch.arange(width, device=device)[None, :]
            side_rows = max(1, round(self.freq_ratio * height))
            side_cols = max(1, round(self.freq_ratio * width))
            high = (rows >= side_rows) | (cols >= side_cols)
            keys = keys + high.flatten().to(keys.dtype)
        return keys.argsort(dim=1)

    def _direction(self, coordinates: torch.Tensor, patterns: tuple[torch.Tensor, torch.Tensor],
                   like: torch.Tensor) -> torch.Tensor:
        """Basis directions ``[k, 1, H, W]`` of L2 size ``eps`` for the given coordinates.

        ``patterns`` are the vertical and horizontal DCT matrices (unused for the pixel basis).
        """
        height, width = like.shape[-2:]
        if self.basis == "dct":
            vertical, horizontal = patterns[0][coordinates // width], patterns[1][coordinates % width]
            pattern = vertical[:, :, None] * horizontal[:, None, :]
        else:
            pattern = F.one_hot(coordinates, height * width).to(like.dtype).view(-1, height, width)
        return self.eps * pattern[:, None]

    @staticmethod
    def _score(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
        """What the search lowers: the true-class probability, or minus the target's."""
        probability = label_probability(logits, labels)
        return -probability if targeted else probability
