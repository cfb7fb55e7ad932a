"""SPSA (Uesato et al. 2018): a gradient-free L∞ attack, the standard check on unreliable gradients.

A defence whose gradients are masked, shattered or random can look robust to PGD while SPSA, which
never asks for a gradient, still breaks it. Each step estimates the gradient of the logit margin
from ``samples`` random ±1 directions ``v`` (simultaneous perturbation: two queries each,
``(L(x + δv) - L(x - δv)) / 2δ · v``), takes an Adam step on the perturbation, and projects it
into the ball. A scan stops being queried once it is fooled (the paper's early stop at margin 0).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from pipeline.attacks.base import Attack, Param, eps_param, seed_param, steps_param
from pipeline.attacks.objectives import margin
from pipeline.attacks.registry import register
from pipeline.attacks.square import random_signs
from pipeline.progress import ProgressCallback, report

#: Adam's moment decays and its denominator's guard, as in the paper (Kingma and Ba's defaults).
BETAS = (0.9, 0.999)
ADAM_EPSILON = 1e-8
#: Most scans in one forward pass (the two sides of every direction of every scan count; bounds memory).
BATCH = 256


@register
class SPSA(Attack):
    """SPSA: gradient-free L∞ attack from finite differences along random ±1 directions, with Adam.

    Reports the model queries each scan cost (``2 * samples`` per step plus one to check the step,
    after one for the start). The paper's ImageNet runs used far more samples per step; the defaults
    here are sized for a CPU, and more ``samples`` or ``steps`` make it stronger.

    Paper: Uesato, O'Donoghue, van den Oord and Kohli, "Adversarial Risk and the Dangers of Evaluating
    Against Weak Attacks", ICML 2018. https://arxiv.org/abs/1802.05666
    """

    name = "spsa"
    title = "SPSA (L∞, gradient-free)"
    family = "black-box"
    norm = "linf"
    supports_target = True
    description = (
        "Estimates the gradient from pairs of queries along random ±1 directions and climbs it with Adam "
        "inside the L∞ ball; needs only the model's scores, so masked gradients do not stop it."
    )
    eps: float
    steps: int
    samples: int
    delta: float
    lr: float
    seed: int
    params = (
        eps_param(),
        steps_param(20),
        Param("samples", int, 64, "random directions per step; each costs two queries", low=1, high=8192),
        Param("delta", float, 0.01, "finite-difference step along each direction (image scale)",
              low=1e-5, high=0.5),
        Param("lr", float, 0.01, "Adam learning rate on the perturbation (image scale)", low=1e-5, high=1.0),
        seed_param(),
    )

    @torch.no_grad()
    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
             progress: Optional[ProgressCallback]) -> torch.Tensor:
        generator = self.generator(x.device)
        labels = y if target is None else target
        targeted = target is not None
        self.record_clean(model, x, y)
        # A random start inside the ball, as the paper's implementation (cleverhans) does.
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
        current = self.project(x, x + self.eps * noise)
        logits = model(current)
        queries = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
        first = torch.zeros_like(x)
        second = torch.zeros_like(x)
        for step in range(self.steps):
            active = (margin(logits, labels, targeted) > 0).nonzero().flatten()
            if active.numel() == 0:
                break
            grad = self._estimate(model, current[active], labels[active], targeted, generator)
            queries[active] += 2 * self.samples
            first[active] = BETAS[0] * first[active] + (1 - BETAS[0]) * grad
            second[active] = BETAS[1] * second[active] + (1 - BETAS[1]) * grad**2
            corrected = first[active] / (1 - BETAS[0] ** (step + 1))
            scale = (second[active] / (1 - BETAS[1] ** (step + 1))).sqrt() + ADAM_EPSILON
            # Lower the margin: step against its gradient.
            current[active] = self.project(x[active], current[active] - self.lr * corrected / scale)
            logits[active] = model(current[active])
            queries[active] += 1
            self.record(logits, y)
            fooled = int((margin(logits, labels, targeted) <= 0).sum())
            report(progress, step + 1, self.steps, f"spsa: step {step + 1}, {fooled}/{x.shape[0]} fooled")
        self.record_queries(queries)
        return current

    def _estimate(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, targeted: bool,
                  generator: torch.Generator) -> torch.Tensor:
        """SPSA's estimate ``[k, C, H, W]`` of the margin's gradient at ``x`` (``2 * samples`` queries a
        scan)."""
        estimate = torch.zeros_like(x)
        per_pass = max(1, BATCH // (2 * x.shape[0]))
        for start in range(0, self.samples, per_pass):
            count = min(per_pass, self.samples - start)
            directions = random_signs((x.shape[0], count, *x.shape[1:]), generator, x)
            points = x[:, None] + self.delta * torch.stack([directions, -directions])  # [2, k, count, ...]
            flat = points.clamp(0.0, 1.0).flatten(0, 2)
            repeated = labels[None, :, None].expand(2, -1, count).flatten()
            losses = margin(model(flat), repeated, targeted).view(2, x.shape[0], count)
            slope = (losses[0] - losses[1]) / (2 * self.delta)
            estimate += (slope.view(*slope.shape, 1, 1, 1) * directions).sum(dim=1)
        return estimate / self.samples
