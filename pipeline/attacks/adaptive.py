"""PGD against a classifier and its adversarial-example detector together: the detector's adaptive attack.

A detector that flags PGD's scans has only shown that PGD did not try to hide. The attack that
tests it knows the detector and optimises both at once (Carlini & Wagner 2017, "Adversarial
examples are not easily detected: bypassing ten detection methods", https://arxiv.org/abs/1705.07263;
Tramèr, Carlini, Brendel & Madry 2020, "On adaptive attacks to adversarial example defenses",
https://arxiv.org/abs/2002.08347): its loss is the classifier's loss minus λ times the detector's
score, and a point counts as found only when it is misclassified *and* the detector lets it
through. The detector must be differentiable for this (non-differentiable parts through BPDA);
:mod:`pipeline.evaluation.detectors` builds such a :class:`ScoredModel` for each detector.

Not in the registry: it needs a scored model, not any model, so it is not offered by name.
"""

from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

import torch
from torch import nn

from pipeline.attacks.base import Param, eps_param, seed_param, steps_param
from pipeline.attacks.losses import cw_loss, fooled
from pipeline.attacks.pgd import (
    PGD,
    alpha_param,
    early_stop_param,
    kappa_param,
    restarts_param,
)
from pipeline.errors import AttackParameterError
from pipeline.progress import ProgressCallback, staged


@runtime_checkable
class ScoredModel(Protocol):
    """A classifier wrapped with its detector: ``model(x)`` returns the logits ``[N, C]`` and leaves in
    ``relative_score`` the detector's score of the same scans over its threshold, float ``[N, K]``,
    differentiable with respect to ``x``. ``K`` is ``C`` for a detector whose score is a minimum over
    the classes (the Mahalanobis distance to the nearest class mean: column ``c`` is the distance to
    class ``c``'s), else 1; the detector flags a scan when the row's minimum is above 1."""

    relative_score: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


class DetectorAwarePGD(PGD):
    """PGD in the L∞ ball on ``CW margin (capped at kappa) − λ · max(0, s_t(x)/τ − aim)``, where
    ``s_t(x)/τ`` is the detector's score over its threshold (flagged above 1), taken for the class
    ``t`` the attack is heading to (the target, else the best wrong class) where the score has one.

    The class matters: the Mahalanobis score is the distance to the *nearest* class mean, which at
    the start is the true class's, so descending it would pull the scan back to where it came
    from. The distance to the mean of the class the attack heads to bounds the score from above
    and agrees with the classifier's goal, so both terms pull the same way (the feature-space
    attack of Sabour et al. 2016, https://arxiv.org/abs/1511.05122, as Carlini & Wagner 2017 use
    it against such detectors). The margin term stops pulling once the wrong class leads by
    ``kappa`` logits, the detector term once the score is under ``aim`` times the threshold. No one
    λ suits every detector and scan (a confident wrong answer is what fools feature squeezing, a
    small step toward the wrong class's features what fools Mahalanobis), so the attack tries the
    ``weights`` in turn on the scans still caught. It starts at the scan itself, not at a random
    point: on the lab's tiny CNN a random start at 16/255 halved the scans that got past the
    Mahalanobis detector (uniform noise over the ball is itself unusual in feature space); and its
    steps are small (ε/16), for it creeps along the detector's boundary where PGD's ε/4 overshoots
    (50 steps of ε/16 got past it on 45 of 48 scans, 50 of ε/8 on 27). A scan is kept as soon as it is both
    misclassified and under the threshold (with ``early_stop`` it stops there); the model must be a
    :class:`ScoredModel`.

    Papers: Carlini & Wagner 2017, https://arxiv.org/abs/1705.07263; Tramèr et al. 2020,
    https://arxiv.org/abs/2002.08347. Example::

        >>> attack = DetectorAwarePGD(eps=8/255, steps=20)
        >>> x_adv = attack(scored_model, x, y)  # x: float [N, 1, H, W] in [0, 1]; y: int64 [N]
    """

    name = "pgd-detector-aware"
    title = "PGD against classifier and detector"
    description = ("PGD that misleads the classifier and keeps the detector's score under its threshold "
                   "at once (the detector's adaptive attack, Carlini & Wagner 2017).")
    kappa: float
    weights: tuple[float, ...]
    aim: float
    params = (
        eps_param(), alpha_param(unset="eps/16"), steps_param(40),
        Param("random_start", bool, False, "start from a uniformly random point inside the ball (off: noise "
              "that fills the ball is itself unusual to a feature-space detector)"),
        restarts_param(),
        kappa_param(5.0),
        Param("weights", float, (0.1, 1.0, 10.0), "λ, the detector score's weight against the classifier's "
              "margin: one run of ``steps`` per value, in turn, on the scans no earlier value got through",
              low=0.0, high=1e6, many=True),
        Param("aim", float, 0.5, "push the detector's score down to this share of its threshold",
              low=0.0, high=1.0),
        seed_param(), early_stop_param(),
    )

    @property
    def step_size(self) -> float:
        return self.alpha if self.alpha is not None else self.eps / 16

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor],
             progress: Optional[ProgressCallback]) -> torch.Tensor:
        """One PGD run per weight in ``weights``, each on the scans not yet both misclassified and
        unflagged (a search over λ, as Carlini & Wagner search their constant); a scan keeps the
        first point that gets through, else the first that is misclassified (flagged), else the first
        weight's result."""
        if not isinstance(model, ScoredModel):
            raise AttackParameterError(
                f"{self.title} needs the model wrapped with its detector (a ScoredModel, e.g. "
                "pipeline.evaluation.detectors.Scored), not a bare classifier"
            )
        self._scored = model
        result = x.clone()
        wrong = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)  # held point misclassified
        left = torch.arange(x.shape[0], device=x.device)
        for number, weight in enumerate(self.weights):
            self._weight = weight
            goal = None if target is None else target[left]
            found = super()._run(model, x[left], y[left], goal,
                                 staged(progress, number, len(self.weights), f"{self.title}, λ={weight:g}"))
            with torch.no_grad():
                logits = model(found)
            through = self.succeeded(logits, y[left], goal)
            misled = fooled(logits, y[left], goal)
            better = through | (misled & ~wrong[left]) | (number == 0)
            result[left[better]] = found[better]
            wrong[left] |= misled
            left = left[~through]
            if left.numel() == 0:
                break
        return result

    def objective(self, logits: torch.Tensor, y: torch.Tensor,
                  target: Optional[torch.Tensor]) -> torch.Tensor:
        """Per scan, to maximise: the capped CW margin minus the weighted excess of the detector's score
        toward the class the attack heads to (read from the scored model's forward pass that made
        ``logits``)."""
        scores = self._scored.relative_score
        if scores.shape[1] > 1:
            toward = target
            if toward is None:  # the best wrong class
                toward = logits.detach().scatter(1, y[:, None], float("-inf")).argmax(1)
            scores = scores.gather(1, toward[:, None])
        excess = (scores[:, 0] - self.aim).clamp(min=0.0)
        return cw_loss(logits, y, target, self.kappa) - self._weight * excess

    def succeeded(self, logits: torch.Tensor, y: torch.Tensor,
                  target: Optional[torch.Tensor]) -> torch.Tensor:
        """Misclassified (or on target) and not flagged by the detector."""
        return fooled(logits, y, target) & (self._scored.relative_score.detach().amin(dim=1) <= 1.0)
