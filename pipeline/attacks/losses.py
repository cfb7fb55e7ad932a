"""Per-sample losses that white-box attacks climb: cross-entropy, the CW margin, and DLR.

Each returns a float ``[N]`` to *maximise*; the attacks sum it for the gradient and reuse the
per-sample values for their own bookkeeping (best point so far, step-size control), so nothing
needs a second forward pass. ``target`` switches each one to its targeted form.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from pipeline.attacks.objectives import margin, succeeded


def fooled(logits: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor]) -> torch.Tensor:
    """Bool ``[N]``: the prediction reached ``target``, or left ``y`` when there is none."""
    return succeeded(logits, y if target is None else target, target is not None)


def ce_loss(logits: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Cross-entropy of the true class, or minus the cross-entropy of the target."""
    if target is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, target, reduction="none")


def cw_loss(logits: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor] = None,
            kappa: float = float("inf")) -> torch.Tensor:
    """Carlini-Wagner margin: how far the best wrong class (or the target) leads, capped at ``kappa``.

    The cap is CW's confidence: past it the gradient is zero, so the attack stops pushing.
    """
    lead = -margin(logits, y if target is None else target, target is not None)
    return lead.clamp(max=kappa)


def dlr_scale(logits: torch.Tensor) -> Optional[torch.Tensor]:
    """The per-sample denominator DLR uses for two classes, to be held fixed (None for three or more).

    With two classes every shift- and scale-invariant function of the logits is a function of the
    sign of ``z_1 - z_2`` alone, so its gradient is zero. We divide the margin by its own size at
    the attack's starting point instead, treated as a constant: the loss keeps DLR's invariance at
    the start (it reads -1 there for a correctly classified scan, 0 on the decision boundary), its
    gradient is the margin's, and values along one run stay comparable.
    """
    if logits.shape[1] > 2:
        return None
    return (logits[:, 0] - logits[:, 1]).detach().abs().clamp_min(1e-6)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor] = None,
             scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Difference-of-Logits-Ratio loss (Croce & Hein 2020, ICML, "Reliable evaluation of adversarial
    robustness with an ensemble of diverse parameter-free attacks"), adapted to few classes.

    Untargeted: ``-(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3)``; targeted:
    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, ``pi`` ranking the logits in decreasing order.

    Few classes: the targeted form needs four, so with three we use ``z_pi1 - z_pi3`` (which
    exists) for both forms. With three classes ``z_pi3`` is the one class neither true nor
    runner-up, and the denominator's gradient rewards pushing it down, which raises the loss
    towards 0 without ever crossing the boundary (on our test model that cost APGD-T a tenth of its
    successes at 8/255). So below four classes the denominator is held constant in the gradient:
    the step follows the margin, while the loss values keep DLR's scale invariance for APGD's
    step-size control. With two classes the denominator is ``scale``, from :func:`dlr_scale` at the
    attack's starting point (see there why), or at ``logits`` when unset.
    """
    classes = logits.shape[1]
    if classes == 2:
        denominator = scale if scale is not None else dlr_scale(logits)
    else:
        ranked = logits.sort(dim=1, descending=True).values
        if target is not None and classes >= 4:
            denominator = ranked[:, 0] - (ranked[:, 2] + ranked[:, 3]) / 2
        else:
            denominator = ranked[:, 0] - ranked[:, 2]
        if classes < 4:
            denominator = denominator.detach()
    if target is None:
        gap = margin(logits, y)
    else:
        gap = (logits.gather(1, y[:, None]) - logits.gather(1, target[:, None])).squeeze(1)
    return -gap / (denominator + 1e-12)
