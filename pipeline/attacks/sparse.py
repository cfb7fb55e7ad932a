"""Sparse (L0) attacks: change a few pixels a lot instead of every pixel a little.

A CT reader would not notice faint noise but might notice a handful of saturated pixels; a model
that survives PGD can still fall to a few of them. Two flavours:

- ``jsma`` (Papernot et al., 2016), white-box: a saliency map from the logits' gradients picks one
  pixel per step (single-pixel variant, as one-channel scans have no colour pairs to pick).
- ``onepixel`` (Su et al., 2019), black-box: differential evolution over ``pixels`` (row, column,
  grey value) triples, a whole population scored in one batched forward pass.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from pipeline.attacks.base import Attack, Param, seed_param
from pipeline.attacks.objectives import label_probability, succeeded
from pipeline.attacks.registry import register
from pipeline.progress import ProgressCallback, report

#: Differential evolution's mutation factor (the paper's value).
MUTATION = 0.5


@register
class JSMA(Attack):
    """Jacobian-based saliency map attack: changes the few pixels the saliency map ranks highest.

    Paper: Papernot, McDaniel, Jha, Fredrikson, Celik and Swami, "The Limitations of Deep Learning in
    Adversarial Settings", IEEE EuroS&P 2016. https://arxiv.org/abs/1511.07528
    """

    name = "jsma"
    title = "JSMA (saliency-map L0 attack)"
    family = "white-box"
    norm = "l0"
    supports_target = True
    description = (
        "Changes the most salient pixels by theta, those whose gradient raises the goal class while "
        "lowering the others; stops at success or when gamma of the pixels have changed."
    )
    theta: float
    gamma: float
    pixels_per_step: int
    params = (
        Param("theta", float, 1.0,
              "change applied to each chosen pixel (image scale; its sign is chosen per pixel)",
              low=1 / 255, high=1.0, grey_levels=True),
        Param("gamma", float, 0.02, "largest fraction of the pixels that may change", low=1e-4, high=1.0),
        Param("pixels_per_step", int, 4,
              "pixels changed per gradient step: 1 is the paper's choice, more is proportionally faster",
              low=1, high=4096),
    )

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
             progress: Optional[ProgressCallback]) -> torch.Tensor:
        n = x.shape[0]
        targeted = target is not None
        goal = y if target is None else target
        budget = max(1, math.floor(self.gamma * x[0].numel()))
        current = x.clone()
        untouched = torch.ones((n, x[0].numel()), dtype=torch.bool, device=x.device)
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        changed = 0
        logits: Optional[torch.Tensor] = None  # every scan's latest logits, for the trace
        while True:
            active = (~done).nonzero().flatten()
            grad_goal, grad_others, active_logits = self._gradients(model, current[active], goal[active],
                                                                    targeted)
            logits = active_logits if logits is None else logits.index_put((active,), active_logits)
            done[active] = succeeded(active_logits, goal[active], targeted)
            self.record(logits, y)
            report(progress, changed, budget, f"{changed} pixels changed, {int(done.sum())}/{n} fooled")
            keep = ~done[active]
            active = active[keep]
            if changed >= budget or active.numel() == 0:
                break
            count = min(self.pixels_per_step, budget - changed)
            pixels = current[active].flatten(1)
            free = untouched[active]
            chosen, sign = saliency_choice(grad_goal[keep], grad_others[keep], free & (pixels < 1),
                                           free & (pixels > 0), count)
            values = (pixels.gather(1, chosen) + sign.to(x.dtype) * self.theta).clamp(0.0, 1.0)
            current[active] = pixels.scatter(1, chosen, values).view_as(current[active])
            untouched[active] = free.scatter(1, chosen, False)
            changed += count
        return current

    @staticmethod
    def _gradients(model: nn.Module, x: torch.Tensor, goal: torch.Tensor, targeted: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gradients ``[k, P]`` of the goal (the target logit, or minus the true logit) and of the
        other logits' sum (negated too when untargeted), and the logits."""
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x)
            own = logits.gather(1, goal[:, None]).sum()
            (grad_own,) = torch.autograd.grad(own, x, retain_graph=True)
            (grad_all,) = torch.autograd.grad(logits.sum(), x)
        sign = 1.0 if targeted else -1.0
        return sign * grad_own.flatten(1), sign * (grad_all - grad_own).flatten(1), logits.detach()


def saliency_choice(a: torch.Tensor, b: torch.Tensor, can_rise: torch.Tensor, can_fall: torch.Tensor,
                    count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the ``count`` pixels ``[k, count]`` the saliency map picks and the sign (+1 raise,
    -1 lower) of their change.

    ``a`` is the gradient of the goal, ``b`` that of the other classes' (signed) sum. Raising a
    pixel is salient when ``a > 0 > b``, lowering it when ``a < 0 < b``, with score ``|a * b|``
    (Papernot et al., eq. 8); either way the useful sign is that of ``a - b``. Salient pixels come
    first; after them the plain gain ``|a - b|`` ranks the rest, so the attack keeps going instead
    of stalling. Pixels already changed, or saturated in their useful direction, come last.
    """
    sign = torch.where(a >= b, 1, -1)
    allowed = torch.where(sign > 0, can_rise, can_fall)
    salient = torch.where(((a > 0) & (b < 0)) | ((a < 0) & (b > 0)), (a * b).abs(), 0.0)
    gain = (a - b).abs()
    key = torch.where(salient > 0, 2 + salient / salient.amax(dim=1, keepdim=True).clamp_min(1e-30),
                      gain / gain.amax(dim=1, keepdim=True).clamp_min(1e-30))
    chosen = key.masked_fill(~allowed, -1.0).topk(count, dim=1).indices
    return chosen, sign.gather(1, chosen)


@register
class OnePixel(Attack):
    """One-pixel attack: differential evolution over a few pixels' positions and values.

    Paper: Su, Vargas and Sakurai, "One Pixel Attack for Fooling Deep Neural Networks", IEEE TEVC 2019.
    https://arxiv.org/abs/1710.08864
    """

    name = "onepixel"
    title = "One-pixel / few-pixel attack (differential evolution)"
    family = "black-box"
    norm = "l0"
    supports_target = True
    description = (
        "Searches, with differential evolution and the model's probabilities only, for a few pixels "
        "(position and grey value) whose change flips the prediction."
    )
    pixels: int
    steps: int
    popsize: int
    inf_batch: int
    seed: int
    params = (
        Param("pixels", int, 1, "number of pixels the attack may change", low=1, high=256),
        Param("steps", int, 10, "generations of differential evolution", low=1, high=1000),
        Param("popsize", int, 100, "candidate pixel sets per scan in each generation", low=4, high=4000),
        Param("inf_batch", int, 512, "largest number of images scored in one forward pass",
              low=1, high=65_536),
        seed_param(),
    )

    @torch.no_grad()
    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
             progress: Optional[ProgressCallback]) -> torch.Tensor:
        n, _, height, width = x.shape
        targeted = target is not None
        goal = y if target is None else target
        generator = self.generator(x.device)
        scale = torch.tensor([height, width, 1.0], device=x.device, dtype=x.dtype)
        self.record(model(x), y)  # the trace starts at the clean scan; not a query of the search
        # Each candidate: `pixels` rows of (row, column, grey value), scaled to [0, 1) for the search.
        population = torch.rand((n, self.popsize, self.pixels, 3), generator=generator, device=x.device,
                                dtype=x.dtype)
        fitness, logits = self._fitness(model, x, population, goal, targeted, scale)
        queries = torch.full((n,), self.popsize, dtype=torch.long, device=x.device)
        best, best_logits = self._best(population, fitness, logits)
        done = succeeded(best_logits, goal, targeted)
        self.record(best_logits, y)

        for step in range(self.steps):
            active = (~done).nonzero().flatten()
            if active.numel() == 0:
                break
            parents = population[active]
            picks = torch.randint(0, self.popsize, (active.numel(), self.popsize, 3), generator=generator,
                                  device=x.device)
            chosen = [parents.gather(1, picks[..., k, None, None].expand_as(parents)) for k in range(3)]
            trial = (chosen[0] + MUTATION * (chosen[1] - chosen[2])).clamp(0.0, 1.0 - 1e-6)
            trial_fitness, trial_logits = self._fitness(model, x[active], trial, goal[active], targeted,
                                                        scale)
            queries[active] += self.popsize
            better = trial_fitness <= fitness[active]
            population[active] = torch.where(better[..., None, None], trial, parents)
            fitness[active] = torch.where(better, trial_fitness, fitness[active])
            logits[active] = torch.where(better[..., None], trial_logits, logits[active])
            best, best_logits = self._best(population, fitness, logits)
            done = succeeded(best_logits, goal, targeted)
            self.record(best_logits, y)
            report(progress, step + 1, self.steps, f"generation {step + 1}: {int(done.sum())}/{n} fooled")
        self.record_queries(queries)
        return self._apply(x, best, scale)

    def _fitness(self, model: nn.Module, x: torch.Tensor, population: torch.Tensor, goal: torch.Tensor,
                 targeted: bool, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Score every candidate ``[k, P]`` (lower is better) with logits ``[k, P, classes]``.

        Images are built chunk by chunk, so memory stays at ``inf_batch`` images whatever the population.
        """
        k, size = population.shape[:2]
        candidates = population.flatten(0, 1)
        owner = torch.arange(k, device=x.device).repeat_interleave(size)
        logits = torch.cat([
            model(self._apply(x[owner[chunk]], candidates[chunk], scale))
            for chunk in torch.arange(k * size, device=x.device).split(self.inf_batch)
        ]).view(k, size, -1)
        own = label_probability(logits, goal[:, None].expand(-1, size))
        return (-own if targeted else own), logits

    @staticmethod
    def _apply(x: torch.Tensor, candidates: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Copies of ``x`` ``[m, C, H, W]`` with candidate ``m``'s pixels ``[m, pixels, 3]`` set."""
        m, channels, width = x.shape[0], x.shape[1], x.shape[-1]
        decoded = candidates * scale
        index = (decoded[..., 0].long() * width + decoded[..., 1].long())[:, None, :].expand(m, channels, -1)
        values = decoded[..., 2][:, None, :].expand(m, channels, -1).to(x.dtype)
        return x.flatten(2).scatter(2, index, values).view_as(x)

    @staticmethod
    def _best(population: torch.Tensor, fitness: torch.Tensor, logits: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each scan's fittest candidate ``[n, pixels, 3]`` and its logits."""
        index = fitness.argmin(dim=1)
        rows = torch.arange(population.shape[0], device=population.device)
        return population[rows, index], logits[rows, index]
