"""Boundary attack (Brendel et al., 2018): a decision-based attack that sees only the predicted label.

The weakest threat model there is, an attacker who gets a label back and nothing else, still finds
adversarial scans: start from random noise that is already misclassified, pull it onto the decision
boundary by bisection, then walk along the boundary towards the clean scan, keeping only steps that
stay adversarial and come closer. Step sizes adapt to the recent success rate, as in the paper.
The result is a minimal-perturbation attack (no norm ball); its L2 size is what to read.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from pipeline.attacks.base import Attack, Param, seed_param
from pipeline.attacks.objectives import succeeded
from pipeline.attacks.registry import register
from pipeline.progress import ProgressCallback, report

#: Random noise images tried per scan to find a misclassified starting point.
INIT_TRIES = 25
#: Bisection steps that pull the starting point onto the decision boundary.
BISECTION_STEPS = 10
#: Steps between step-size adaptations, and the success rates that trigger them.
ADAPT_EVERY = 10
ADAPT_UP, ADAPT_DOWN = 0.5, 0.2

#: ``oracle(candidates, charged) -> (is_adversarial, logits)``; counts a query for the ``charged`` scans.
Oracle = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@register
class Boundary(Attack):
    """Boundary attack: a decision-based walk along the boundary towards the scan, labels only.

    Paper: Brendel, Rauber and Bethge, "Decision-Based Adversarial Attacks: Reliable Attacks Against
    Black-Box Machine Learning Models", ICLR 2018. https://arxiv.org/abs/1712.04248
    """

    name = "boundary"
    title = "Boundary attack (decision-based black-box)"
    family = "black-box"
    norm = None
    supports_target = True
    description = (
        "Starts from misclassified noise and walks along the decision boundary towards the scan, "
        "seeing only the predicted label. Reports the smallest adversarial change it found."
    )
    n_queries: int
    spherical_step: float
    source_step: float
    step_adaptation: float
    seed: int
    params = (
        Param("n_queries", int, 1000, "label queries per scan, the search for a starting point included",
              low=1 + INIT_TRIES + BISECTION_STEPS, high=100_000),
        Param("spherical_step", float, 0.01, "first size of the random step along the boundary, "
              "relative to the distance to the scan", low=1e-4, high=1.0),
        Param("source_step", float, 0.01, "first size of the step towards the scan, relative to the distance",
              low=1e-4, high=0.5),
        Param("step_adaptation", float, 1.5,
              "factor by which both steps grow or shrink with the success rate",
              low=1.01, high=5.0),
        seed_param(),
    )

    @torch.no_grad()
    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
             progress: Optional[ProgressCallback]) -> torch.Tensor:
        # Every query runs the whole batch so each scan is always scored in the same batch context;
        # only the scans that take part are charged for it.
        n = x.shape[0]
        labels = y if target is None else target
        targeted = target is not None
        generator = self.generator(x.device)
        queries = torch.zeros(n, dtype=torch.long, device=x.device)

        def adversarial(candidate: torch.Tensor, charged: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = model(candidate)
            queries[charged] += 1
            return succeeded(logits, labels, targeted), logits

        start, found, logits = self._find_start(x, labels, targeted, adversarial, generator)
        self.record(logits, y)
        best, logits = self._bisect(x, start, found, adversarial, logits.clone())
        self.record(logits, y)

        spherical = torch.full((n,), self.spherical_step, device=x.device, dtype=x.dtype)
        source = torch.full((n,), self.source_step, device=x.device, dtype=x.dtype)
        on_boundary = torch.zeros(n, device=x.device)  # spherical candidates still adversarial
        accepted = torch.zeros(n, device=x.device)
        rounds = (self.n_queries - int(queries.max())) // 2
        for step in range(rounds):
            spherical_candidate, candidate = self._propose(x, best, spherical, source, generator)
            spherical_ok, _ = adversarial(spherical_candidate, found)
            candidate_ok, candidate_logits = adversarial(candidate, found)
            closer = (candidate - x).flatten(1).norm(dim=1) < (best - x).flatten(1).norm(dim=1)
            accept = found & candidate_ok & closer
            best[accept] = candidate[accept]
            logits[accept] = candidate_logits[accept]
            on_boundary += spherical_ok.float()
            accepted += accept.float()
            if (step + 1) % ADAPT_EVERY == 0:
                spherical, source = self._adapt(spherical, source, on_boundary / ADAPT_EVERY,
                                                accepted / ADAPT_EVERY)
                on_boundary.zero_()
                accepted.zero_()
            self.record(logits, y)
            mean_l2 = (best - x)[found].flatten(1).norm(dim=1).mean() if found.any() else float("nan")
            report(progress, step + 1, rounds, f"{int(found.sum())}/{n} adversarial, mean L2 {mean_l2:.3f}")
        self.record_queries(queries)
        return best

    def _adapt(self, spherical: torch.Tensor, source: torch.Tensor, spherical_rate: torch.Tensor,
               accept_rate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The paper's rule: the spherical success rate scales both steps, the acceptance rate the
        step towards the scan alone, so their ratio follows the boundary's local curvature."""
        up, down = self.step_adaptation, 1.0 / self.step_adaptation
        both = torch.where(spherical_rate > ADAPT_UP, up, torch.where(spherical_rate < ADAPT_DOWN, down, 1.0))
        towards = torch.where(accept_rate > ADAPT_UP, up, torch.where(accept_rate < ADAPT_DOWN, down, 1.0))
        return (spherical * both).clamp(max=1.0), (source * both * towards).clamp(max=0.5)

    @staticmethod
    def _find_start(x: torch.Tensor, labels: torch.Tensor, targeted: bool, adversarial: Oracle,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A misclassified starting point per scan: (start, found, logits of the clean scans).

        The nearest scan of the batch that the model already puts in another class (or in the
        target) is the best start, as it is a real image; otherwise uniform noise, tried until one
        is misclassified. A scan the model already gets wrong starts (and ends) at itself.
        """
        n = x.shape[0]
        _, clean_logits = adversarial(x, torch.ones(n, dtype=torch.bool, device=x.device))
        prediction = clean_logits.argmax(dim=1)
        same = prediction[None, :] == labels[:, None]  # [i, j]: scan j is predicted as scan i's label
        usable = same if targeted else ~same
        distance = torch.cdist(x.flatten(1).float(), x.flatten(1).float()).masked_fill(~usable, float("inf"))
        nearest = distance.argmin(dim=1)
        found = usable.any(dim=1)
        start = torch.where(found.view(-1, 1, 1, 1), x[nearest], x)
        for _ in range(INIT_TRIES):
            if found.all():
                break
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            candidate = torch.where(found.view(-1, 1, 1, 1), start, noise)
            is_adversarial, _ = adversarial(candidate, ~found)
            new = ~found & is_adversarial
            start[new] = noise[new]
            found |= new
        return start, found, clean_logits

    @staticmethod
    def _bisect(x: torch.Tensor, start: torch.Tensor, found: torch.Tensor, adversarial: Oracle,
                logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Blend each start towards its scan, to the last blend that is still adversarial."""
        low = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        high = torch.ones_like(low)
        for _ in range(BISECTION_STEPS):
            middle = (low + high) / 2
            blend = x + middle.view(-1, 1, 1, 1) * (start - x)
            is_adversarial, blend_logits = adversarial(blend, found)
            keep = found & is_adversarial
            high = torch.where(keep, middle, high)
            low = torch.where(keep, low, middle)
            logits[keep] = blend_logits[keep]
        best = x + high.view(-1, 1, 1, 1) * (start - x)
        return torch.where(found.view(-1, 1, 1, 1), best, x), logits

    @staticmethod
    def _propose(x: torch.Tensor, best: torch.Tensor, spherical: torch.Tensor, source: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A random step along the sphere around ``x`` through ``best``, and that step followed by
        one towards ``x``: (spherical candidate, candidate)."""
        towards = (x - best).flatten(1)
        distance = towards.norm(dim=1, keepdim=True).clamp_min(1e-12)
        unit = towards / distance
        noise = torch.randn(towards.shape, generator=generator, device=x.device, dtype=x.dtype)
        noise = noise - (noise * unit).sum(dim=1, keepdim=True) * unit
        noise = noise / noise.norm(dim=1, keepdim=True).clamp_min(1e-12) * spherical[:, None] * distance
        on_sphere = noise - towards
        on_sphere = on_sphere / on_sphere.norm(dim=1, keepdim=True).clamp_min(1e-12) * distance
        spherical_candidate = (x + on_sphere.view_as(x)).clamp(0.0, 1.0)
        candidate = (x + (on_sphere * (1 - source[:, None])).view_as(x)).clamp(0.0, 1.0)
        return spherical_candidate, candidate
