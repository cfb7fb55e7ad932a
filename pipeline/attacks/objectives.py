"""What attacks measure on the logits: margins, success, the probability of a class.

Shared by the attacks so that "fooled" means the same everywhere: the prediction left the true
class (untargeted) or reached the target (targeted), exactly as :class:`AttackInfo` reports it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def margin(logits: torch.Tensor, labels: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    """Per-sample logit margin ``[N]``, positive while the attack has not yet succeeded.

    Untargeted: true-class logit minus the best other logit; targeted: best other logit minus the
    target's logit.
    """
    own = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
    return others - own if targeted else own - others


def succeeded(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Per sample: the prediction reached the target (``labels`` are targets), or left the true class."""
    prediction = logits.argmax(dim=-1)
    return prediction == labels if targeted else prediction != labels


def label_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax probability of ``labels`` (any leading shape, classes last)."""
    return F.softmax(logits.float(), dim=-1).gather(-1, labels[..., None]).squeeze(-1)
