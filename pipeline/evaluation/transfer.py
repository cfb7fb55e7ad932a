"""Transferability: adversarial scans crafted on one model, shown to another.

Row ``i``, column ``j`` of the matrix is model ``j``'s accuracy on scans attacked through model
``i``; the diagonal is the white-box case. Every scan is attacked with its true label (not only
those the source gets right), so the entries of a column compare directly. A robust model that
also resists examples from other models is robust for real; one that only resists its own
gradients is masking them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline.errors import UserInputError
from pipeline.evaluation.batches import iter_batches, model_device, predict, resolve_indices
from pipeline.evaluation.robustness import AttackSpec, SpecLike
from pipeline.evaluation.shards import Shards
from pipeline.guard import exclusive_eval
from pipeline.progress import ProgressCallback, report


@dataclass
class TransferResult:
    """``accuracy[source, target]`` over the same scans; ``clean[target]`` for reference."""

    models: list[str]
    attack: AttackSpec
    accuracy: np.ndarray
    clean: np.ndarray
    scans: int
    #: bool ``[T, N]``: each target right on each clean scan, scans in the order given; kept in memory
    #: for per-scan analyses (an ensemble's shared failures), not saved.
    clean_correct: Optional[np.ndarray] = field(default=None, repr=False)
    #: bool ``[S, T, N]``: target ``t`` right on scan ``n`` as attacked through source ``s``; not saved.
    correct: Optional[np.ndarray] = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": self.models,
            "attack": self.attack.to_dict(),
            "scans": self.scans,
            "clean": dict(zip(self.models, self.clean.tolist())),
            "accuracy": {
                source: dict(zip(self.models, row))
                for source, row in zip(self.models, self.accuracy.tolist())
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TransferResult:
        """The result :meth:`to_dict` wrote (a saved report's)."""
        models = [str(name) for name in data["models"]]
        accuracy = np.array([[data["accuracy"][source][target] for target in models] for source in models])
        clean = np.array([data["clean"][name] for name in models], dtype=np.float64)
        attack = AttackSpec.from_dict(data["attack"])
        return cls(models, attack, accuracy.astype(np.float64), clean, int(data["scans"]))


def transfer_matrix(
    models: Mapping[str, nn.Module],
    dataset: Dataset,
    indices: Optional[Sequence[int]],
    attack: SpecLike,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: Optional[ProgressCallback] = None,
    shards: Shards = Shards(),
) -> TransferResult:
    """Craft ``attack`` on every model and measure every model on the result, batch by batch; the
    result keeps each answer's correctness per scan too (``clean_correct``, ``correct``). ``shards``
    splits the batches among torchrun's processes, as in :func:`.evaluate`."""
    if len(models) < 2:
        raise UserInputError("a transfer matrix needs at least two models")
    spec = AttackSpec.coerce(attack)
    crafted_by = spec.build()
    chosen = resolve_indices(dataset, indices)
    names = list(models)
    devices = {model_device(model, device) for model in models.values()}
    if len(devices) != 1:
        raise UserInputError("all models must be on one device; pass device= to move them")
    (where,) = devices
    correct = np.zeros((len(names), len(names), chosen.size), dtype=bool)
    clean = np.zeros((len(names), chosen.size), dtype=bool)
    batches = shards.share(-(-chosen.size // batch_size))
    for number, (rows, x, y) in enumerate(iter_batches(dataset, chosen, batch_size, where, shards)):
        report(progress, number, batches, f"transfer, batch {number + 1}/{batches}")
        for j, name in enumerate(names):
            with exclusive_eval(models[name]):
                clean[j, rows] = (predict(models[name], x) == y).cpu().numpy()
        for i, source in enumerate(names):
            x_adv = crafted_by(models[source], x, y)
            for j, target in enumerate(names):
                with exclusive_eval(models[target]):
                    correct[i, j, rows] = (predict(models[target], x_adv) == y).cpu().numpy()
    if shards.active:
        found = shards.gather_rows(int(chosen.size), batch_size, {"correct": correct, "clean": clean},
                                   "the transfer matrix's answers", axes={"correct": 2, "clean": 1})
        correct, clean = found["correct"], found["clean"]
    report(progress, batches, batches, "done")
    return TransferResult(
        names, spec, correct.mean(axis=2), clean.mean(axis=1), int(chosen.size), clean, correct
    )
