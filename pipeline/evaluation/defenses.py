"""Input-transformation defences and the adaptive attack that sees through them.

JPEG re-encoding, bit-depth reduction and median smoothing applied before the model often look
robust against an attack run straight through them, because they break the attack's gradient
(JPEG has none, rounding has zero gradient) rather than remove adversarial directions (Athalye,
Carlini & Wagner 2018, "Obfuscated gradients give a false sense of security"). The adaptive
attack differentiates :class:`Defended` with ``adaptive=True``: its forward applies the real
transform, its backward treats a non-differentiable transform as the identity (BPDA, written as
``x + (t(x) - x).detach()``), and a randomised transform is averaged over several draws (EOT).
Any attack of the registry becomes adaptive by attacking that wrapper; predictions always come
from the deployed defence. Both figures are reported side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from pipeline.attacks import get_attack
from pipeline.errors import UserInputError
from pipeline.evaluation.robustness import AttackSpec, RobustnessReport, SpecLike, evaluate
from pipeline.progress import ProgressCallback


class InputTransform(nn.Module):
    """A transform of ``[N, 1, H, W]`` scans in [0, 1] applied before the model."""

    name: str = "transform"
    #: Whether autograd through ``forward`` gives a useful gradient (else BPDA replaces it).
    differentiable: bool = True
    #: Whether two calls on the same input may differ (then EOT averages several draws).
    randomised: bool = False


class JPEGDefense(InputTransform):
    """Re-encode as an 8-bit JPEG (OpenCV): removes fine high-frequency detail, has no gradient."""

    differentiable = False

    def __init__(self, quality: int = 75) -> None:
        super().__init__()
        self.codec = get_attack("jpeg", quality=quality)  # the JPEG corruption's codec, reused
        self.name = f"JPEG q={quality}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.codec.corrupt(x)


class BitDepthReduction(InputTransform):
    """Keep ``bits`` bits per pixel (feature squeezing, Xu et al. 2018); rounding has zero gradient."""

    differentiable = False  # torch.round has a gradient in name only: zero everywhere

    def __init__(self, bits: int = 4) -> None:
        super().__init__()
        if not 1 <= bits <= 8:
            raise UserInputError(f"bit depth must be 1 to 8, got {bits}")
        self.levels = 2**bits - 1
        self.name = f"bit depth {bits}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * self.levels) / self.levels


class MedianSmoothing(InputTransform):
    """Median over a ``kernel`` x ``kernel`` window (feature squeezing); its gradient is sparse."""

    def __init__(self, kernel: int = 3) -> None:
        super().__init__()
        if kernel < 2 or kernel > 15:
            raise UserInputError(f"median kernel must be 2 to 15 pixels, got {kernel}")
        self.kernel = kernel
        self.name = f"median {kernel}x{kernel}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel
        padded = F.pad(x, ((k - 1) // 2, k // 2, (k - 1) // 2, k // 2), mode="reflect")
        patches = padded.unfold(2, k, 1).unfold(3, k, 1)
        return patches.reshape(*x.shape, k * k).median(dim=-1).values


class RandomShift(InputTransform):
    """Shift the scan by up to ``pixels`` in each direction (reflect padding), fresh for every call."""

    randomised = True

    def __init__(self, pixels: int = 4, seed: int = 0) -> None:
        super().__init__()
        if not 1 <= pixels <= 64:
            raise UserInputError(f"random shift must be 1 to 64 pixels, got {pixels}")
        self.pixels = pixels
        self.generator = torch.Generator().manual_seed(seed)
        self.name = f"random shift ±{pixels}px"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pixels
        dy, dx = (int(v) for v in torch.randint(0, 2 * p + 1, (2,), generator=self.generator))
        padded = F.pad(x, (p, p, p, p), mode="reflect")
        return padded[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]


class Defended(nn.Module):
    """``model(transform(x))``; with ``adaptive``, the BPDA/EOT view an adaptive attacker uses."""

    def __init__(
        self, model: nn.Module, transform: InputTransform, *, adaptive: bool = False, eot_samples: int = 8
    ) -> None:
        super().__init__()
        self.model = model
        self.transform = transform
        self.adaptive = adaptive
        self.samples = eot_samples if adaptive and transform.randomised else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = 0.0
        for _ in range(self.samples):
            transformed = self.transform(x)
            if self.adaptive and not self.transform.differentiable:
                transformed = x + (transformed - x).detach()  # BPDA: forward t(x), backward identity
            elif not transformed.requires_grad and x.requires_grad:
                transformed = transformed + 0 * x  # no gradient to follow: the naive attack sees zero
            logits = logits + self.model(transformed)
        return logits / self.samples


@dataclass
class DefenseResult:
    """One defence: undefended, naive and adaptive figures under one attack."""

    defense: str
    attack: AttackSpec
    naive: RobustnessReport  #: attack run straight through the defence
    adaptive: RobustnessReport  #: BPDA/EOT attack; predictions from the deployed defence

    def to_dict(self) -> dict[str, Any]:
        return {
            "defense": self.defense,
            "attack": self.attack.to_dict(),
            "clean_accuracy": self.naive.clean.accuracy,
            "naive_accuracy": self.naive.attacks[0].accuracy,
            "adaptive_accuracy": self.adaptive.attacks[0].accuracy,
        }


DEFENSES = {
    "jpeg": JPEGDefense,
    "bitdepth": BitDepthReduction,
    "median": MedianSmoothing,
    "shift": RandomShift,
}


def make_defense(name: str, **params: Any) -> InputTransform:
    """A defence by name (``jpeg``, ``bitdepth``, ``median``, ``shift``) with its parameters."""
    try:
        cls = DEFENSES[name.strip().lower()]
    except KeyError:
        raise UserInputError(f"unknown defence {name!r}; choose from {', '.join(DEFENSES)}") from None
    return cls(**params)


def evaluate_defense(
    model: nn.Module,
    transform: InputTransform,
    dataset: Dataset,
    indices: Optional[Sequence[int]],
    attack: SpecLike,
    *,
    eot_samples: int = 8,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: Optional[ProgressCallback] = None,
) -> DefenseResult:
    """The defended model's accuracy under ``attack`` run naively and adaptively."""
    spec = AttackSpec.coerce(attack)
    deployed = Defended(model, transform)
    common = dict(batch_size=batch_size, device=device, progress=progress)
    naive = evaluate(
        deployed, dataset, indices, [spec], model_name=f"{transform.name} (naive attack)", **common
    )
    adaptive = evaluate(
        deployed,
        dataset,
        indices,
        [spec],
        model_name=f"{transform.name} (adaptive attack)",
        attack_model=Defended(model, transform, adaptive=True, eot_samples=eot_samples),
        **common,
    )
    return DefenseResult(transform.name, spec, naive, adaptive)
