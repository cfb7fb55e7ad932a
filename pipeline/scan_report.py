"""Everything the dashboard shows about one attacked scan, from one call.

``analyse_scan`` composes existing pieces and adds no math of its own: the attack (with its
step-by-step trace), the model's probabilities before and after, Grad-CAM of both scans with
the explanation shift (only when both maps can be read), perturbation sizes, PSNR/SSIM,
optionally the smallest budget at which the same attack flips the scan, and, given the run's
validation profile, whether the scan is out of the model's training distribution, whether the
model is a trained classifier at all, and whether each adversarial-example detector flags the
original and the attacked scan. Keeping the composition here keeps the page thin and
lets the CLI, tests and the concurrency checks run exactly what the dashboard runs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.attacks import get_attack, minimal_epsilon, search_refusal
from pipeline.errors import UserInputError
from pipeline.evaluation.degenerate import AnswerCheck
from pipeline.evaluation.detectors import ScanDetection, check_scan
from pipeline.evaluation.metrics import psnr, ssim
from pipeline.evaluation.ood import OODResult
from pipeline.evaluation.profile import ValidationProfile
from pipeline.explain import explain, explanation_shift
from pipeline.guard import exclusive_eval
from pipeline.progress import STAGE_STEPS, ProgressCallback, report, staged

#: The largest budget the minimal-epsilon search tries: 32 grey levels, far beyond what stays invisible.
MINIMAL_EPS_HIGH = 32 / 255
#: The norm of the budgets that search varies: L∞, in grey levels like every budget on the pages.
MINIMAL_EPS_NORM = "linf"


@dataclass
class ScanReport:
    """One attack on one scan, ready to draw. Images are float ``[H, W]`` in ``[0, 1]``."""

    attack: str
    params: dict[str, Any]
    classes: tuple[str, ...]
    label: int  #: the class attacked away from: the true class when known, else the clean prediction
    label_known: bool
    target: Optional[int]
    clean: np.ndarray
    attacked: np.ndarray
    probs_clean: np.ndarray  #: [C]
    probs_attacked: np.ndarray  #: [C]
    trace: np.ndarray  #: probability of ``label`` after each attack step; [0] is the clean scan
    success: bool
    linf: float
    l2: float
    l0: float
    psnr: float
    ssim: float
    cam_clean: np.ndarray
    cam_attacked: np.ndarray
    cam_method: str
    cam_layer: str  #: the layer explained, one of :func:`pipeline.explain.cam_layers`
    cam_grid: tuple[int, int]  #: its grid (rows, columns) at this input size
    cam_problem: Optional[str]  #: why the maps must not be read or compared, with what to do
    shift: Optional[dict[str, float]]  #: None when ``cam_problem`` is set: never measured then
    minimal_eps: Optional[float] = None  #: inf when even the search's largest budget fails
    queries: Optional[int] = None
    seconds: float = 0.0
    ood: Optional[OODResult] = None  #: the clean scan against the model's training distribution
    trained: Optional[AnswerCheck] = None  #: the model's answers on its validation split
    unchecked: Optional[str] = None  #: why ``ood`` and ``trained`` are missing
    #: Each adversarial-example detector of the profile on the original and the attacked scan.
    detections: list[ScanDetection] = field(default_factory=list)
    #: Hounsfield units one grey level of the scan spans (a CT slice in a known window), else None:
    #: then no figure of the report is said in Hounsfield units
    hu_per_grey_level: Optional[float] = None
    modality: str = "CT"  #: what the scan shows (``CT``, ``MR``, ...; empty when the file does not say)
    extra: dict[str, Any] = field(default_factory=dict)
    #: The attack's budget in its own units (grey levels, or degrees and pixels, or a patch's side).
    budget: str = ""
    #: What the attack did in those units, where grey levels do not say it (a move, a patch), else None.
    change: Optional[str] = None

    @property
    def prediction_clean(self) -> int:
        return int(np.argmax(self.probs_clean))

    @property
    def prediction_attacked(self) -> int:
        return int(np.argmax(self.probs_attacked))

    @property
    def delta(self) -> np.ndarray:
        """Attacked minus clean, in image scale."""
        return self.attacked - self.clean

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record of what was done and what came out (no pixels, no patient data)."""

        def number(value: float) -> Optional[float]:
            return float(value) if math.isfinite(value) else None

        unchecked = {"checked": False, "why": self.unchecked}

        return {
            "attack": self.attack,
            "params": self.params,
            "classes": list(self.classes),
            "label": self.classes[self.label],
            "label_known": self.label_known,
            "target": None if self.target is None else self.classes[self.target],
            "prediction_clean": self.classes[self.prediction_clean],
            "prediction_attacked": self.classes[self.prediction_attacked],
            "probabilities_clean": dict(zip(self.classes, map(float, self.probs_clean))),
            "probabilities_attacked": dict(zip(self.classes, map(float, self.probs_attacked))),
            "success": self.success,
            "linf": self.linf,
            "l2": self.l2,
            "l0": self.l0,
            "psnr_db": number(self.psnr),
            "ssim": self.ssim,
            "explanation": {
                "method": self.cam_method,
                "layer": self.cam_layer,
                "grid": list(self.cam_grid),
                "readable": self.cam_problem is None,
                "problem": self.cam_problem,
            },
            "explanation_shift": self.shift,
            "out_of_distribution": self.ood.to_dict() if self.ood else unchecked,
            "model_check": self.trained.to_dict() if self.trained else unchecked,
            "detectors": [detection.to_dict() for detection in self.detections] if self.trained else unchecked,
            "minimal_eps": None if self.minimal_eps is None else number(self.minimal_eps),
            #: False when even the largest budget searched left the answer unchanged (JSON has no infinity)
            "minimal_eps_found": None if self.minimal_eps is None else math.isfinite(self.minimal_eps),
            "minimal_eps_attack": self.attack if self.minimal_eps is not None else None,
            "queries": self.queries,
            "budget": self.budget,
            "change": self.change,
            "seconds": round(self.seconds, 3),
        }


def analyse_scan(
    model: nn.Module,
    image: torch.Tensor,
    attack: str,
    params: Optional[Mapping[str, Any]] = None,
    *,
    label: Optional[int] = None,
    target: Optional[int] = None,
    classes: tuple[str, ...],
    find_minimal_eps: bool = False,
    cam_layer: Optional[str] = None,
    profile: Optional[ValidationProfile] = None,
    unchecked: Optional[str] = None,
    hu_per_grey_level: Optional[float] = None,
    modality: str = "CT",
    progress: Optional[ProgressCallback] = None,
) -> ScanReport:
    """Attack ``image`` (``[1, H, W]`` or ``[H, W]`` in ``[0, 1]``) on ``model`` and measure everything.

    ``label`` is the scan's true class when known; without it the attack moves the scan away
    from the model's own clean prediction. ``target`` asks a targeted attack for that class.
    ``cam_layer`` is the layer Grad-CAM explains (default: the deepest fine enough to localise).
    ``profile`` is the run's :func:`pipeline.evaluation.profile.validation_profile`; without it
    the report says ``unchecked`` (why) instead of the out-of-distribution and model checks.
    ``hu_per_grey_level`` and ``modality`` say what the scan is (a CT slice in the lung window:
    :data:`pipeline.constants.LUNG_HU_PER_GREY_LEVEL`), for the words that describe the change.
    ``find_minimal_eps`` also searches the smallest L∞ budget at which the same attack, with the
    same other settings, changes the answer (:func:`pipeline.attacks.minimal_epsilon`: up to
    :func:`pipeline.attacks.search_runs` more runs of the attack); an attack without an L∞ budget
    raises :class:`UserInputError` saying why (:func:`pipeline.attacks.search_refusal`).
    """
    started = time.monotonic()
    params = dict(params or {})
    attacker = get_attack(attack, **params)  # validates the name and every parameter first
    refusal = search_refusal(attack, MINIMAL_EPS_NORM) if find_minimal_eps else None
    if refusal is not None:
        raise UserInputError(f"the smallest flipping budget cannot be searched: {refusal}")
    device = next(model.parameters()).device
    x = _as_batch(image).to(device)
    probs_clean = _probabilities(model, x)
    if len(classes) != probs_clean.shape[0]:
        raise UserInputError(
            f"the model predicts {probs_clean.shape[0]} classes but {len(classes)} were named"
        )
    known = label is not None
    if label is None:
        label = int(probs_clean.argmax())
    if not 0 <= int(label) < len(classes) or (target is not None and not 0 <= int(target) < len(classes)):
        raise UserInputError(f"classes are numbered 0..{len(classes) - 1}")
    y = torch.tensor([int(label)], device=device)
    stages = 3 if find_minimal_eps else 2
    x_adv, info = attacker(
        model,
        x,
        y,
        target=None if target is None else torch.tensor([int(target)], device=device),
        progress=staged(progress, 0, stages, attacker.title),
        return_info=True,
    )
    report(progress, STAGE_STEPS, STAGE_STEPS * stages, "explaining both scans")
    explained = explain(model, torch.cat([x, x_adv]), layer=cam_layer)
    problem = explained.problem(0) or explained.problem(1)
    minimal = None
    if find_minimal_eps:
        minimal = float(
            minimal_epsilon(
                model,
                x,
                y,
                attacker.name,
                high=MINIMAL_EPS_HIGH,
                progress=staged(progress, 2, stages, "smallest flipping budget"),
                **{name: value for name, value in params.items() if name != "eps"},
            )[0]
        )
    report(progress, STAGE_STEPS * stages, STAGE_STEPS * stages, "done")
    return ScanReport(
        attack=attacker.name,
        params=dict(attacker.config),
        classes=tuple(classes),
        label=int(label),
        label_known=known,
        target=None if target is None else int(target),
        clean=_array(x[0, 0]),
        attacked=_array(x_adv[0, 0]),
        probs_clean=probs_clean,
        probs_attacked=_probabilities(model, x_adv),
        trace=_array(info.trace[:, 0]),
        success=bool(info.success[0]),
        linf=float(info.linf[0]),
        l2=float(info.l2[0]),
        l0=float(info.l0[0]),
        psnr=float(psnr(x, x_adv)[0]),
        ssim=float(ssim(x, x_adv)[0]),
        cam_clean=explained.maps[0],
        cam_attacked=explained.maps[1],
        cam_method=explained.method,
        cam_layer=explained.layer,
        cam_grid=explained.grid,
        cam_problem=problem,
        shift=None if problem else explanation_shift(explained.maps[0], explained.maps[1]),
        minimal_eps=minimal,
        queries=None if info.queries is None else int(info.queries[0]),
        seconds=time.monotonic() - started,
        ood=profile.detector.judge(model, x) if profile else None,
        trained=profile.trained if profile else None,
        unchecked=None if profile else unchecked or "the model's validation profile was not computed",
        detections=[check_scan(d, model, x, x_adv) for d in profile.detectors()] if profile else [],
        hu_per_grey_level=hu_per_grey_level,
        modality=modality,
        budget=attacker.describe_budget(),
        change=attacker.describe_change(info, 0),
    )


def _as_batch(image: torch.Tensor) -> torch.Tensor:
    image = torch.as_tensor(image)
    if image.dim() == 2:
        image = image[None]
    if image.dim() != 3 or image.shape[0] != 1 or not image.is_floating_point():
        raise UserInputError("analyse_scan needs one grey scan: a float tensor [1, H, W] or [H, W] in [0, 1]")
    return image[None].float()


def _probabilities(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with exclusive_eval(model), torch.no_grad():
        return _array(F.softmax(model(x).float(), dim=1)[0])


def _array(tensor: torch.Tensor) -> np.ndarray:
    """A NumPy copy that owns its memory: a report kept in a session must not pin torch tensors."""
    return tensor.detach().cpu().numpy().copy()
