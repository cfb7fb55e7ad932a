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

A defence that is a way of training rather than a wrapper declares the same two views through
:class:`Defense`: defensive distillation (:class:`DistillationDefense`, Papernot et al. 2016,
https://arxiv.org/abs/1511.04508) deploys the model as trained, and its adaptive attacker
differentiates the logits divided by the training temperature, where the saturated softmax no longer
hides the gradient (Carlini & Wagner 2017, https://arxiv.org/abs/1608.04644). :mod:`.verdict` puts
every defence's naive and adaptive figures in one table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from pipeline.attacks import get_attack
from pipeline.errors import UserInputError
from pipeline.evaluation.robustness import AttackSpec, RobustnessReport, SpecLike, evaluate
from pipeline.evaluation.shards import Shards
from pipeline.progress import ProgressCallback


class Defense:
    """What an evaluation needs of a defence: the model it deploys, the model its adaptive attacker
    differentiates instead, and both attacks in words for the verdict table (:mod:`.verdict`)."""

    name: str = "defence"
    #: How the naive attack meets the defence, in words.
    naive_attack: str = "the attack run straight on the deployed defence"
    #: What the adaptive attack does differently, in words.
    adaptive_attack: str = "the attack run on the defence's adaptive view"
    #: Registry attacks that are adaptive to this defence even when run straight on the deployed
    #: model; the verdict takes the lowest of their figures and the adaptive view's.
    adaptive_attacks: tuple[str, ...] = ()
    #: True when the deployed defence wraps the evaluated model: that model's strength checks then
    #: describe the undefended model, not the defence, and the verdict does not quote their flags.
    wraps_model: bool = True
    #: What a naive figure clearly above the adaptive one means, and whether that is gradient masking.
    gap_means: str = "the naive attack is defeated by the defence's masked gradients, not by robustness"
    gap_masks: bool = True

    def deployed(self, model: nn.Module) -> nn.Module:
        """The defended model whose predictions count: ``[N, 1, H, W]`` in [0, 1] to logits ``[N, C]``."""
        raise NotImplementedError

    def adaptive_view(self, model: nn.Module, *, eot_samples: int = 8) -> nn.Module:
        """What the adaptive attack differentiates; its predictions never count."""
        raise NotImplementedError


class InputTransform(nn.Module, Defense):
    """A transform of ``[N, 1, H, W]`` scans in [0, 1] applied before the model."""

    name: str = "transform"
    naive_attack = "through the transform (zero or broken gradient)"
    adaptive_attack = "BPDA (identity backward) and EOT over random draws"
    #: Whether autograd through ``forward`` gives a useful gradient (else BPDA replaces it).
    differentiable: bool = True
    #: Whether two calls on the same input may differ (then EOT averages several draws).
    randomised: bool = False

    def deployed(self, model: nn.Module) -> nn.Module:
        return Defended(model, self)

    def adaptive_view(self, model: nn.Module, *, eot_samples: int = 8) -> nn.Module:
        return Defended(model, self, adaptive=True, eot_samples=eot_samples)


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
    """Shift the scan by up to ``pixels`` in each direction (reflect padding), fresh for every call.

    The shifts are one stream from ``seed``; an evaluation restarts it for every batch
    (:meth:`reseed`), so a batch's shifts do not depend on the batches before it.
    """

    randomised = True

    def __init__(self, pixels: int = 4, seed: int = 0) -> None:
        super().__init__()
        if not 1 <= pixels <= 64:
            raise UserInputError(f"random shift must be 1 to 64 pixels, got {pixels}")
        self.pixels = pixels
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.name = f"random shift ±{pixels}px"

    def reseed(self, position: int) -> None:
        """Restart the stream for the batch whose first scan is at ``position`` (:func:`.batches.reseed`)."""
        self.generator.manual_seed(self.seed + position)

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


class TemperatureScaled(nn.Module):
    """``model(x) / temperature``: a distilled model's logits at its training temperature."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


class DistillationDefense(Defense):
    """Defensive distillation (Papernot et al. 2016, https://arxiv.org/abs/1511.04508): a model
    trained at temperature ``T`` and deployed at T=1, so its logits are about T times an ordinary
    model's and its softmax saturates.

    The naive attack, PGD on the cross-entropy of the deployed softmax, meets gradients that
    underflow to zero and barely moves; the adaptive one differentiates the logits divided by T
    (and CW's margin loss on the logits, ``cw-linf``, is adaptive as it is: a margin does not
    saturate). Carlini & Wagner 2017, https://arxiv.org/abs/1608.04644.
    Raises :class:`UserInputError` for a temperature below 1.
    """

    naive_attack = "PGD on the cross-entropy of the deployed softmax (T=1), where the gradients vanish"
    adaptive_attacks = ("cw-linf",)
    wraps_model = False

    def __init__(self, temperature: float) -> None:
        if not temperature >= 1.0:
            raise UserInputError(f"a distillation temperature is at least 1, got {temperature}")
        self.temperature = float(temperature)
        self.name = f"defensive distillation T={self.temperature:g}"
        self.adaptive_attack = f"the same PGD on the logits divided by T={self.temperature:g}"

    def deployed(self, model: nn.Module) -> nn.Module:
        return model

    def adaptive_view(self, model: nn.Module, *, eot_samples: int = 8) -> nn.Module:
        return TemperatureScaled(model, self.temperature)


def training_defenses(info: Mapping[str, Any]) -> list[Defense]:
    """The defences a model is by the way it was trained, from its run's facts (``strategy``,
    ``temperature``): defensive distillation for a distilled run, none otherwise."""
    if info.get("strategy") == "distillation":
        return [DistillationDefense(float(info.get("temperature") or 1.0))]
    return []


@dataclass
class DefenseResult:
    """One defence: undefended, naive and adaptive figures under one attack."""

    defense: str
    attack: AttackSpec
    naive: RobustnessReport  #: attack run straight through the defence
    adaptive: RobustnessReport  #: the attack on the adaptive view; predictions from the deployed defence
    naive_attack: str = Defense.naive_attack  #: in words, from :class:`Defense`
    adaptive_attack: str = Defense.adaptive_attack
    adaptive_attacks: tuple[str, ...] = ()
    wraps_model: bool = True
    gap_means: str = Defense.gap_means
    gap_masks: bool = True

    # The figures the verdict table reads of every defence result (an ensemble's too).
    @property
    def scans(self) -> int:
        return self.naive.size

    @property
    def clean_accuracy(self) -> float:
        return self.naive.clean.accuracy

    @property
    def naive_accuracy(self) -> float:
        return self.naive.attacks[0].accuracy

    @property
    def adaptive_accuracy(self) -> float:
        return self.adaptive.attacks[0].accuracy

    def to_dict(self) -> dict[str, Any]:
        return defence_figures(self)


def defence_figures(result: Any) -> dict[str, Any]:
    """What every defence result saves of itself (a :class:`DefenseResult`, an ensemble's result):
    its name, attack, the figures the verdict reads, and both attacks in words."""
    return {
        "defense": result.defense,
        "attack": result.attack.to_dict(),
        "clean_accuracy": result.clean_accuracy,
        "naive_accuracy": result.naive_accuracy,
        "adaptive_accuracy": result.adaptive_accuracy,
        "naive_attack": result.naive_attack,
        "adaptive_attack": result.adaptive_attack,
        "adaptive_attacks": list(result.adaptive_attacks),
        "wraps_model": result.wraps_model,
        "scans": result.scans,
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
    transform: Defense,
    dataset: Dataset,
    indices: Optional[Sequence[int]],
    attack: SpecLike,
    *,
    eot_samples: int = 8,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: Optional[ProgressCallback] = None,
    shards: Shards = Shards(),
) -> DefenseResult:
    """The defended model's accuracy under ``attack`` run naively (on the deployed defence) and
    adaptively (on its :meth:`Defense.adaptive_view`), predictions always from the deployed one;
    ``transform`` is any :class:`Defense`: an input transformation or a way of training. ``shards``
    as in :func:`.evaluate`."""
    spec = AttackSpec.coerce(attack)
    deployed = transform.deployed(model)
    common = dict(batch_size=batch_size, device=device, progress=progress, shards=shards)
    naive = evaluate(
        deployed, dataset, indices, [spec], model_name=f"{transform.name} (naive attack)", **common
    )
    adaptive = evaluate(
        deployed,
        dataset,
        indices,
        [spec],
        model_name=f"{transform.name} (adaptive attack)",
        attack_model=transform.adaptive_view(model, eot_samples=eot_samples),
        **common,
    )
    return DefenseResult(
        transform.name,
        spec,
        naive,
        adaptive,
        naive_attack=transform.naive_attack,
        adaptive_attack=transform.adaptive_attack,
        adaptive_attacks=transform.adaptive_attacks,
        wraps_model=transform.wraps_model,
        gap_means=transform.gap_means,
        gap_masks=transform.gap_masks,
    )
