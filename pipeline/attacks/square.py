"""Square attack (Andriushchenko et al., 2020): L∞ random search that needs only the model's scores.

A white-box attack can be fooled by a model whose gradients are useless (gradient masking); a
score-based search cannot. If Square beats PGD at the same budget, the model's robustness is an
artefact of its gradients. Each query changes one random square of the current best to a vertex of
the L∞ ball and keeps it when the margin loss drops; squares shrink on the paper's schedule.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.attacks.base import Attack, Param, eps_param, seed_param
from pipeline.attacks.objectives import margin
from pipeline.attacks.registry import register
from pipeline.progress import ProgressCallback, report

#: Query counts (rescaled to 10,000) after which the square's area halves, as in the paper.
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, query: int, n_queries: int) -> float:
    """Fraction of the pixels the square covers at ``query``: the paper's schedule, rescaled to the budget."""
    rescaled = int(query / n_queries * 10_000)
    return p_init / 2 ** bisect_left(_HALVINGS, rescaled)


def random_squares(count: int, height: int, width: int, side: int, generator: torch.Generator,
                   device: torch.device) -> torch.Tensor:
    """Boolean masks ``[count, 1, H, W]``, each one square of ``side`` pixels at a random place."""
    top = torch.randint(0, height - side + 1, (count,), generator=generator, device=device)
    left = torch.randint(0, width - side + 1, (count,), generator=generator, device=device)
    return square_masks(top, left, side, height, width)


def square_masks(top: torch.Tensor, left: torch.Tensor, side: int, height: int, width: int) -> torch.Tensor:
    """Boolean masks ``[K, 1, H, W]``: the square of ``side`` pixels whose top-left pixel is at
    (``top[k]``, ``left[k]``), int ``[K]``; it must fit inside the ``height`` x ``width`` image."""
    rows = torch.arange(height, device=top.device)
    cols = torch.arange(width, device=top.device)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def random_signs(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Independent ±1 entries in ``like``'s dtype and device."""
    bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
    return bits.to(like.dtype) * 2 - 1


@register
class Square(Attack):
    """Square attack: black-box random search with square-shaped updates at the ball's vertices.

    Paper: Andriushchenko, Croce, Flammarion and Hein, "Square Attack: a query-efficient black-box
    adversarial attack via random search", ECCV 2020. https://arxiv.org/abs/1912.00049
    """

    name = "square"
    title = "Square attack (L∞, score-based black-box)"
    family = "black-box"
    norm = "linf"
    supports_target = True
    description = (
        "Random search over squares at the corners of the L∞ ball, using only the model's scores. "
        "Query-efficient, and a check for gradient masking: it should never beat PGD."
    )
    eps: float
    n_queries: int
    p_init: float
    loss: str
    seed: int
    params = (
        eps_param(),
        Param("n_queries", int, 1000, "model queries per scan, the first (random start) included",
              low=1, high=100_000),
        Param("p_init", float, 0.8,
              "fraction of the pixels the first squares cover; it shrinks on a schedule",
              low=1e-4, high=1.0),
        Param("loss", str, "margin", "what the search lowers: the logit margin, or the cross-entropy",
              choices=("margin", "ce")),
        seed_param(),
    )

    @torch.no_grad()
    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
             progress: Optional[ProgressCallback]) -> torch.Tensor:
        n, channels, height, width = x.shape
        generator = self.generator(x.device)
        labels = y if target is None else target
        targeted = target is not None

        self.record(model(x), y)  # the trace starts at the clean scan; not a query of the search
        # Random start: vertical stripes of ±eps, the initialisation the paper found strongest.
        best = (x + self.eps * random_signs((n, channels, 1, width), generator, x)).clamp(0.0, 1.0)
        best_logits = model(best)
        best_margin, best_loss = self._objective(best_logits, labels, targeted)
        queries = torch.ones(n, dtype=torch.long, device=x.device)
        self.record(best_logits, y)

        rounds = self.n_queries - 1
        for step in range(rounds):
            active = (best_margin > 0).nonzero().flatten()
            if active.numel() == 0:
                break
            fraction = square_fraction(self.p_init, step, self.n_queries)
            side = min(max(round(math.sqrt(fraction * height * width)), 1), height, width)
            squares = random_squares(active.numel(), height, width, side, generator, x.device)
            vertex = x[active] + self.eps * random_signs((active.numel(), channels, 1, 1), generator, x)
            candidate = torch.where(squares, vertex, best[active]).clamp(0.0, 1.0)

            logits = model(candidate)
            candidate_margin, candidate_loss = self._objective(logits, labels[active], targeted)
            improved = (candidate_loss < best_loss[active]) | (candidate_margin <= 0)
            keep = active[improved]
            best[keep] = candidate[improved]
            best_logits[keep] = logits[improved]
            best_margin[keep] = candidate_margin[improved]
            best_loss[keep] = candidate_loss[improved]
            queries[active] += 1

            self.record(best_logits, y)
            fooled = int((best_margin <= 0).sum())
            report(progress, step + 1, rounds, f"query {step + 2}/{self.n_queries}: {fooled}/{n} fooled")
        self.record_queries(queries)
        return best

    def _objective(self, logits: torch.Tensor, labels: torch.Tensor, targeted: bool
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(margin, loss to lower) per sample."""
        gap = margin(logits, labels, targeted)
        if self.loss == "margin":
            return gap, gap
        cross_entropy = F.cross_entropy(logits.float(), labels, reduction="none")
        return gap, cross_entropy if targeted else -cross_entropy
