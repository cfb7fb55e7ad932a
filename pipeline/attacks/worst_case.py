"""Each sample's most adversarial point so far, across steps, restarts and ensemble members.

Keeping the worst case (rather than the last iterate) makes extra work monotone: another step,
restart or member can only make a sample's result stronger, never undo a success.
"""

from __future__ import annotations

import torch


class WorstCase:
    """Per sample: a fooling point beats any other; between equals, the higher loss wins."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x.clone()
        self.success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        self.loss = torch.full((x.shape[0],), float("-inf"), device=x.device)

    def update(self, index: torch.Tensor, candidate: torch.Tensor, loss: torch.Tensor,
               success: torch.Tensor) -> torch.Tensor:
        """Offer ``candidate`` (the samples ``index``) with its per-sample ``loss`` and ``success``;
        return bool ``[len(index)]``, where the candidate was kept (``index`` must not repeat).

        Written with ``torch.where`` over index tensors, so it never synchronises with the GPU.
        """
        loss = loss.detach().float()
        held = self.success[index]
        better = (success & ~held) | ((success == held) & (loss > self.loss[index]))
        self.x[index] = torch.where(better.view(-1, *([1] * (candidate.dim() - 1))), candidate, self.x[index])
        self.loss[index] = torch.where(better, loss, self.loss[index])
        self.success[index] = held | success
        return better

    def remaining(self) -> torch.Tensor:
        """Indices of the samples not fooled yet (one synchronisation)."""
        return (~self.success).nonzero().flatten()
