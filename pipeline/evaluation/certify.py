"""Certified robustness by randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019).

The smoothed classifier predicts the class the model returns most often under Gaussian noise of
scale ``sigma``. If that class has probability at least ``p`` (a Clopper-Pearson lower bound from
``n`` samples, valid with probability ``1 - alpha``), no L2 perturbation smaller than
``sigma * Φ⁻¹(p)`` can change the smoothed prediction. Unlike attack-based figures this is a
guarantee, not an upper bound; it holds for the smoothed classifier, whose accuracy is what the
curve reports. Noise is added in the scans' [0, 1] scale and not clipped, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from scipy.stats import beta, norm
from torch import nn
from torch.utils.data import Dataset

from pipeline.constants import NUM_CLASSES
from pipeline.errors import UserInputError
from pipeline.evaluation.batches import iter_batches, model_device, resolve_indices
from pipeline.evaluation.shards import Shards
from pipeline.guard import exclusive_eval
from pipeline.progress import ProgressCallback, report

#: The smoothed classifier declines to predict; never counted as correct.
ABSTAIN = -1


@dataclass
class Certificate:
    """The smoothed prediction (or :data:`ABSTAIN`) and its certified L2 radius per scan."""

    prediction: np.ndarray  #: int [N]
    radius: np.ndarray  #: float [N]; 0 where abstaining
    p_lower: np.ndarray  #: float [N]: lower confidence bound of the top class's probability


def certify(
    model: nn.Module,
    x: torch.Tensor,
    sigma: float,
    n0: int = 100,
    n: int = 1000,
    alpha: float = 0.001,
    batch: int = 200,
    *,
    seed: int = 0,
    progress: Optional[ProgressCallback] = None,
) -> Certificate:
    """CERTIFY of Cohen et al. for each scan of ``x`` ``[N, 1, H, W]`` (or one ``[1, H, W]``).

    ``n0`` noisy samples choose the class, ``n`` fresh ones bound its probability; the radius is
    valid with probability at least ``1 - alpha``. ``batch`` is how many noisy copies go through
    the model at once.
    """
    check_settings(sigma, n0, n, alpha, batch)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    generator = torch.Generator(device=x.device)
    generator.manual_seed(seed)
    predictions, radii, bounds = [], [], []
    with exclusive_eval(model):
        for index in range(x.shape[0]):
            report(progress, index, x.shape[0], f"certifying scan {index + 1}/{x.shape[0]}")
            guess = int(np.argmax(_sample_counts(model, x[index], sigma, n0, batch, generator)))
            count = int(_sample_counts(model, x[index], sigma, n, batch, generator)[guess])
            p_lower = float(beta.ppf(alpha, count, n - count + 1)) if count > 0 else 0.0
            certified = p_lower > 0.5
            predictions.append(guess if certified else ABSTAIN)
            radii.append(sigma * float(norm.ppf(p_lower)) if certified else 0.0)
            bounds.append(p_lower)
    report(progress, x.shape[0], x.shape[0], "done")
    return Certificate(np.asarray(predictions, dtype=np.int64), np.asarray(radii), np.asarray(bounds))


@torch.no_grad()
def _sample_counts(
    model: nn.Module, image: torch.Tensor, sigma: float, samples: int, batch: int, generator: torch.Generator
) -> np.ndarray:
    """How often each class wins over ``samples`` noisy copies of one scan."""
    counts = torch.zeros(NUM_CLASSES, dtype=torch.long, device=image.device)
    remaining = samples
    while remaining > 0:
        size = min(batch, remaining)
        noisy = image.unsqueeze(0).expand(size, *image.shape)
        noise = torch.randn(noisy.shape, generator=generator, device=image.device, dtype=image.dtype)
        winners = model(noisy + sigma * noise).argmax(dim=1)
        counts += torch.bincount(winners, minlength=NUM_CLASSES)[:NUM_CLASSES]
        remaining -= size
    return counts.cpu().numpy()


@dataclass
class CertifiedCurve:
    """Certified accuracy against L2 radius for one model and one ``sigma``."""

    sigma: float
    n: int
    alpha: float
    radii: list[float]
    accuracy: list[float]  #: share of scans predicted correctly with a radius of at least r
    certificate: Certificate
    labels: np.ndarray

    @property
    def abstained(self) -> float:
        return float(np.mean(self.certificate.prediction == ABSTAIN))

    def to_dict(self) -> dict[str, Any]:
        return {
            "sigma": self.sigma,
            "n": self.n,
            "alpha": self.alpha,
            "radii": self.radii,
            "certified_accuracy": self.accuracy,
            "abstained": self.abstained,
            "predictions": self.certificate.prediction.tolist(),
            "radius": self.certificate.radius.tolist(),
            "p_lower": self.certificate.p_lower.tolist(),
            "labels": self.labels.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CertifiedCurve:
        """The curve :meth:`to_dict` wrote; reports older than ``p_lower`` in it read it as NaN (unknown)."""
        prediction = np.asarray(data["predictions"], dtype=np.int64)
        p_lower = data.get("p_lower")
        certificate = Certificate(
            prediction,
            np.asarray(data["radius"], dtype=np.float64),
            np.full(prediction.shape, np.nan) if p_lower is None else np.asarray(p_lower, dtype=np.float64),
        )
        return cls(
            float(data["sigma"]),
            int(data["n"]),
            float(data["alpha"]),
            [float(r) for r in data["radii"]],
            [float(a) for a in data["certified_accuracy"]],
            certificate,
            np.asarray(data["labels"], dtype=np.int64),
        )


def certified_accuracy_curve(
    model: nn.Module,
    dataset: Dataset,
    indices: Optional[Sequence[int]],
    sigma: float,
    radii: Sequence[float],
    n: int = 1000,
    *,
    n0: int = 100,
    alpha: float = 0.001,
    batch: int = 200,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: Optional[ProgressCallback] = None,
    shards: Shards = Shards(),
) -> CertifiedCurve:
    """Certify every scan, then count those correct with a radius of at least each ``r``; each scan's
    noise is drawn from ``seed`` plus its position, and ``shards`` splits the scans among torchrun's
    processes (:mod:`.shards`)."""
    chosen = resolve_indices(dataset, indices)
    device = model_device(model, device)
    found = {
        "prediction": np.zeros(chosen.size, dtype=np.int64),
        "radius": np.zeros(chosen.size),
        "p_lower": np.zeros(chosen.size),
        "labels": np.zeros(chosen.size, dtype=np.int64),
    }
    mine = shards.share(chosen.size)
    for number, (span, x, y) in enumerate(iter_batches(dataset, chosen, 1, device, shards)):
        report(progress, number, mine, f"certifying scan {number + 1}/{mine}")
        scan = certify(model, x, sigma, n0, n, alpha, batch, seed=seed + span.start)
        for name in ("prediction", "radius", "p_lower"):
            found[name][span] = getattr(scan, name)
        found["labels"][span] = y.cpu().numpy()
    found = shards.gather_rows(chosen.size, 1, found, "the certificates")
    report(progress, mine, mine, "done")
    certificate = Certificate(found["prediction"], found["radius"], found["p_lower"])
    truth = found["labels"]
    correct = certificate.prediction == truth
    accuracy = [float(np.mean(correct & (certificate.radius >= r))) for r in radii]
    return CertifiedCurve(float(sigma), n, alpha, [float(r) for r in radii], accuracy, certificate, truth)


def check_settings(sigma: float, n0: int, n: int, alpha: float = 0.001, batch: int = 1) -> None:
    """Refuse settings that cannot give a meaningful certificate, with the usual values in the message."""
    if not 0 < sigma <= 10:
        raise UserInputError(f"sigma must lie in (0, 10] (image scale; 0.25 is usual), got {sigma}")
    if not (1 <= n0 <= 1_000_000 and 1 <= n <= 10_000_000):
        raise UserInputError(
            f"sample counts must be positive (n0 ~100, n ~1,000-100,000), got n0={n0}, n={n}"
        )
    if not 0 < alpha < 0.5:
        raise UserInputError(f"alpha is a failure probability in (0, 0.5), e.g. 0.001; got {alpha}")
    if batch < 1:
        raise UserInputError(f"batch must be at least 1, got {batch}")
