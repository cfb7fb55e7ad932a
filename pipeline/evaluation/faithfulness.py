"""Is the explanation faithful? ROAD scores of Grad-CAM maps on clean and on attacked scans.

A heat map is only worth showing if the pixels it marks are the ones the answer rests on. ROAD
(Rong et al. 2022, "A consistent and efficient evaluation strategy for attribution methods",
https://arxiv.org/abs/2202.00449) removes a share of the pixels, most relevant first (MoRF) or
least relevant first (LeRF), fills them in from their neighbours so that the shape of the hole
does not leak the map, and watches the model's probability for the explained class. Its combined
score, ``(LeRF change - MoRF change) / 2`` averaged over the removed shares, is positive when
removing what the map calls important hurts the answer more than removing the rest, near zero for
a map no better than a random one, and lies in [-0.5, 0.5] (probability units).

The metric is pytorch-grad-cam's (``pytorch_grad_cam.metrics``: ROAD's removal orders and the
average over thresholds, with :class:`ClassifierOutputSoftmaxTarget`), with ROAD's own noisy
linear imputation by default (one sparse linear system per scan and threshold: about half a CPU
second per scan for a ResNet-18 at 96 px, bench/RESULTS.md). ``imputation="blur"`` swaps in
:class:`BlurImputer`, a multi-scale normalised convolution with the same noise, at about half the
cost, for large scans or many of them; its scores are close to, not equal to, the paper's.

On attacked scans the map explains the class the attack made the model answer, so a faithful
map stays faithful to the wrong answer; a fall in the score means the attack also broke the link
between the map and the decision, and the map cannot be trusted to show why the model erred.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Final, Literal, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam.metrics.perturbation_confidence import (
    AveragerAcrossThresholds,
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.metrics.road import NoisyLinearImputer
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from torch import nn
from torch.utils.data import Dataset

from pipeline.errors import UserInputError
from pipeline.evaluation.batches import iter_batches, model_device, predict, resolve_indices
from pipeline.evaluation.intervals import Interval, mean_interval
from pipeline.evaluation.robustness import AttackSpec, SpecLike
from pipeline.explain import default_layer, explain, feature_grids
from pipeline.guard import exclusive_eval
from pipeline.json_object import json_floats
from pipeline.progress import ProgressCallback, report

Imputation = Literal["blur", "linear"]
#: Shares of the pixels (percent) kept by ROAD's removal at each threshold, as ARCC in the package uses.
PERCENTILES: Final[tuple[int, ...]] = (20, 40, 60, 80)
#: ROAD's noise on imputed pixels (image scale), as in the paper's code.
IMPUTATION_NOISE: Final[float] = 0.01


class BlurImputer:
    """Fill the removed pixels from the kept ones by normalised convolution (Knutsson & Westin 1993):
    ``blur(image * kept) / blur(kept)`` with a Gaussian that doubles in width until every hole is
    reached, plus ROAD's Gaussian noise of :data:`IMPUTATION_NOISE`.

    Like ROAD's linear imputation it fills a hole smoothly from its border, so the hole's outline
    does not mark where the map was high; it needs no linear solve. Called as the package's
    imputers are: ``imputer(image [C, H, W], mask [H, W])``, mask 1 where a pixel is kept.
    """

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        image = image.float()
        kept = mask.to(image.dtype).expand_as(image)[None]
        values = image[None] * kept
        filled = image[None].clone()
        missing = kept < 0.5
        sigma = 1.0
        while bool(missing.any()) and sigma <= 4 * max(image.shape[-2:]):
            weight = _blur(kept, sigma)
            estimate = _blur(values, sigma) / weight.clamp_min(1e-12)
            reached = missing & (weight > 1e-3)
            filled[reached] = estimate[reached]
            missing &= ~reached
            sigma *= 2
        noise = torch.randn(image.shape, generator=self.generator) * IMPUTATION_NOISE
        return torch.where(kept[0] > 0.5, image, filled[0] + noise.to(image.dtype))


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[1, C, H, W]`` with zero padding (what normalised convolution needs)."""
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=x.dtype) / sigma) ** 2)
    taps = (taps / taps.sum()).repeat(x.shape[1], 1, 1, 1)
    rows = F.conv2d(x, taps.view(x.shape[1], 1, -1, 1), padding=(radius, 0), groups=x.shape[1])
    return F.conv2d(rows, taps.view(x.shape[1], 1, 1, -1), padding=(0, radius), groups=x.shape[1])


@dataclass
class Faithfulness:
    """ROAD scores of one set of maps, one per scan measured (float ``[n]``, probability units)."""

    condition: str  #: "clean" or the attack's label
    indices: np.ndarray  #: int [n]: the dataset scans measured
    explained: np.ndarray  #: int [n]: the class each map explains (the model's answer)
    road: np.ndarray  #: combined score per scan, (LeRF - MoRF) / 2
    morf: np.ndarray  #: change of the explained class's probability, most relevant removed first
    lerf: np.ndarray  #: the same, least relevant removed first
    unreadable: int = 0  #: maps left out because they cannot localise (empty, constant, NaN, too coarse)
    problem: Optional[str] = None  #: why the first map left out was, in :meth:`Explanation.problem`'s words

    @property
    def mean(self) -> Interval:
        """The mean ROAD score with its 95% bootstrap interval over the scans."""
        return mean_interval(self.road)

    def to_dict(self) -> dict[str, Any]:
        return {
            "condition": self.condition,
            "scans": int(self.road.size),
            "unreadable": self.unreadable,
            "problem": self.problem,
            "road": self.mean.to_dict(),
            "morf": float(self.morf.mean()) if self.morf.size else None,
            "lerf": float(self.lerf.mean()) if self.lerf.size else None,
            "per_scan": {
                "indices": self.indices.tolist(),
                "explained": self.explained.tolist(),
                "road": self.road.tolist(),
                "morf": self.morf.tolist(),
                "lerf": self.lerf.tolist(),
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Faithfulness":
        scans = data["per_scan"]
        return cls(
            condition=str(data["condition"]),
            indices=np.asarray(scans["indices"], dtype=np.int64),
            explained=np.asarray(scans["explained"], dtype=np.int64),
            road=json_floats(scans["road"]).astype(np.float32),
            morf=json_floats(scans["morf"]).astype(np.float32),
            lerf=json_floats(scans["lerf"]).astype(np.float32),
            unreadable=int(data.get("unreadable") or 0),
            problem=data.get("problem"),
        )


@dataclass
class FaithfulnessReport:
    """ROAD scores of one model's maps on the same scans, clean and attacked."""

    model: str
    method: str
    layer: str  #: the layer explained (:func:`pipeline.explain.cam_layers`' name)
    grid: tuple[int, int]  #: its cells (rows, columns) at the scans' size
    imputation: Imputation
    percentiles: tuple[int, ...]
    clean: Faithfulness
    attacked: Faithfulness

    @property
    def change(self) -> Interval:
        """Attacked minus clean mean ROAD score, paired by scan, with its 95% bootstrap interval."""
        both = np.intersect1d(self.clean.indices, self.attacked.indices)
        clean = self.clean.road[np.searchsorted(self.clean.indices, both)].astype(np.float64)
        attacked = self.attacked.road[np.searchsorted(self.attacked.indices, both)].astype(np.float64)
        return mean_interval(attacked - clean)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "method": self.method,
            "layer": self.layer,
            "grid": list(self.grid),
            "imputation": self.imputation,
            "percentiles": list(self.percentiles),
            "clean": self.clean.to_dict(),
            "attacked": self.attacked.to_dict(),
            "change": self.change.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FaithfulnessReport":
        return cls(
            model=str(data["model"]),
            method=str(data["method"]),
            layer=str(data["layer"]),
            grid=(int(data["grid"][0]), int(data["grid"][1])),
            imputation=data["imputation"],
            percentiles=tuple(int(p) for p in data["percentiles"]),
            clean=Faithfulness.from_dict(data["clean"]),
            attacked=Faithfulness.from_dict(data["attacked"]),
        )


def road_scores(
    model: nn.Module,
    x: torch.Tensor,
    maps: np.ndarray,
    classes: Sequence[int],
    *,
    percentiles: Sequence[int] = PERCENTILES,
    imputation: Imputation = "linear",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROAD of ``maps`` (float ``[N, H, W]`` in [0, 1]) for scans ``x`` (``[N, 1, H, W]``) explaining
    ``classes`` (``[N]``): (combined, MoRF, LeRF), float ``[N]`` each, through pytorch-grad-cam's
    metric classes; the imputation noise is drawn from ``seed``, so the same call gives the same
    scores in any process. Raises UserInputError for mismatched shapes or an unknown imputation."""
    if maps.shape != (x.shape[0], *x.shape[-2:]) or len(classes) != x.shape[0]:
        raise UserInputError(
            f"ROAD needs one map [H, W] and one class per scan; got {x.shape[0]} scans, maps {maps.shape} "
            f"and {len(classes)} classes"
        )
    if imputation == "blur":
        imputer: Any = BlurImputer(seed)
    elif imputation == "linear":
        imputer = NoisyLinearImputer(noise=IMPUTATION_NOISE)
    else:
        raise UserInputError(f"unknown imputation {imputation!r}; choose blur or linear")
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]

    def averaged(removal: type) -> np.ndarray:
        metric = AveragerAcrossThresholds(
            lambda percentile: PerturbationConfidenceMetric(removal(percentile, imputer)), list(percentiles)
        )
        return np.asarray(metric(x, maps, targets, model), dtype=np.float32).reshape(-1)

    # The package's linear imputer draws its noise from torch's global generator, whose seed differs
    # from process to process: seeded here from ``seed`` (and restored after), ROAD repeats exactly.
    devices = [x.device] if x.device.type == "cuda" else []
    with exclusive_eval(model), torch.no_grad(), warnings.catch_warnings(), torch.random.fork_rng(devices):
        torch.manual_seed(seed)
        # The package thresholds a torch map with numpy, which NumPy 2 warns about; harmless here.
        warnings.filterwarnings("ignore", message="__array_wrap__", category=DeprecationWarning)
        morf = averaged(RemoveMostRelevantFirst)
        lerf = averaged(RemoveLeastRelevantFirst)
    return (lerf - morf) / 2, morf, lerf


def explanation_faithfulness(
    model: nn.Module,
    dataset: Dataset,
    indices: Optional[Sequence[int]],
    attack: SpecLike,
    *,
    limit: int = 16,
    method: str = "gradcam",
    layer: Optional[str] = None,
    percentiles: Sequence[int] = PERCENTILES,
    imputation: Imputation = "linear",
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: Optional[ProgressCallback] = None,
    model_name: str = "model",
) -> FaithfulnessReport:
    """ROAD scores of the ``method`` maps of ``layer`` (:func:`pipeline.explain.explain`; by default
    the layer it picks for the scans' size) on up to ``limit`` correctly classified scans of
    ``dataset[indices]`` (in order), clean and under ``attack``. Clean maps explain the answer (the
    true class); attacked maps explain the answer under attack. Maps :func:`explain` calls
    unreadable are counted, never measured. Raises UserInputError for a bad limit, method or layer.
    """
    if limit < 1:
        raise UserInputError(f"measure faithfulness on at least one scan, got limit={limit}")
    spec = AttackSpec.coerce(attack)
    attacker = spec.build()
    chosen = resolve_indices(dataset, indices)
    device = model_device(model, device)
    clean_parts: list[tuple[np.ndarray, np.ndarray, torch.Tensor]] = []
    attacked_parts: list[tuple[np.ndarray, np.ndarray, torch.Tensor]] = []
    found = 0
    for span, x, y in iter_batches(dataset, chosen, batch_size, device):
        with exclusive_eval(model):
            right = (predict(model, x) == y).cpu().numpy()
        take = np.flatnonzero(right)[: limit - found]
        if take.size:
            rows = torch.as_tensor(take, device=x.device)
            x_ok, y_ok = x[rows], y[rows]
            x_adv = attacker(model, x_ok, y_ok)
            with exclusive_eval(model):
                answer = predict(model, x_adv)
            where = chosen[span][take]
            clean_parts.append((where, y_ok.cpu().numpy(), x_ok))
            attacked_parts.append((where, answer.cpu().numpy(), x_adv))
            found += take.size
        report(progress, found, limit, f"{found}/{limit} scans attacked for the explanations")
        if found >= limit:
            break
    size = tuple(clean_parts[0][2].shape[-2:]) if clean_parts else (1, 1)
    layer = layer or default_layer(model, size)
    grid = feature_grids(model, size).get(layer, (0, 0)) if clean_parts else (0, 0)
    total = 2 * len(clean_parts)
    measured = []
    for number, (condition, parts) in enumerate((("clean", clean_parts), (spec.title, attacked_parts))):
        start = number * len(parts)
        measured.append(
            _measure(model, condition, parts, method, layer, percentiles, imputation, progress, start, total)
        )
    report(progress, total, total, "explanations measured")
    return FaithfulnessReport(
        model_name, method, layer, grid, imputation, tuple(percentiles), measured[0], measured[1]
    )


def _measure(
    model: nn.Module,
    condition: str,
    parts: list[tuple[np.ndarray, np.ndarray, torch.Tensor]],
    method: str,
    layer: str,
    percentiles: Sequence[int],
    imputation: Imputation,
    progress: Optional[ProgressCallback],
    done: int,
    total: int,
) -> Faithfulness:
    """Maps and ROAD scores for the batches in ``parts`` (dataset indices, explained classes, scans)."""
    indices, explained, road, morf, lerf = [], [], [], [], []
    unreadable, problem = 0, None
    for number, (where, classes, x) in enumerate(parts):
        report(progress, done + number, total, f"ROAD of {condition} maps, batch {number + 1}/{len(parts)}")
        explanation = explain(model, x, classes, method=method, layer=layer)
        maps = explanation.maps
        readable = np.array([quality == "ok" for quality in explanation.quality])
        unreadable += int((~readable).sum())
        if problem is None and not readable.all():
            problem = explanation.problem(int(np.flatnonzero(~readable)[0]))
        if not readable.any():
            continue
        keep = torch.as_tensor(np.flatnonzero(readable), device=x.device)
        scores = road_scores(
            model, x[keep], maps[readable], classes[readable], percentiles=percentiles, imputation=imputation
        )
        indices.append(where[readable])
        explained.append(classes[readable])
        for store, values in zip((road, morf, lerf), scores):
            store.append(values)

    def joined(values: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(values).astype(dtype) if values else np.zeros(0, dtype=dtype)

    return Faithfulness(
        condition,
        joined(indices, np.int64),
        joined(explained, np.int64),
        joined(road, np.float32),
        joined(morf, np.float32),
        joined(lerf, np.float32),
        unreadable,
        problem,
    )
