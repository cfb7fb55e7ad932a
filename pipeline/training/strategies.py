"""What one training step optimises: clean, adversarial, or a mix; one class per strategy.

Every adversarial example comes from the attack engine (``get_attack``), never from a second
implementation here. Attacks run on the plain model (not the DistributedDataParallel or
compiled wrapper) in eval mode, as the engine guarantees; the loss is then computed by one
forward pass of the training network over everything the step needs, which keeps batch-norm
statistics and DDP's gradient hooks to one pass per step.

Inner maximisations follow the papers: PGD on the cross-entropy for PGD-AT and MART, PGD on
the KL divergence to the clean prediction (the engine's ``pgd-kl``) for TRADES.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Optional, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.attacks import get_attack
from pipeline.errors import UserInputError
from pipeline.progress import ProgressCallback, report
from pipeline.store import load_model

if TYPE_CHECKING:
    from pipeline.training.config import TrainConfig

#: Returned by a step: the loss to minimise, logits and labels to count training accuracy on.
StepResult = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
#: Every strategy by name, in registration order: the only list of them (see :func:`available`).
STRATEGY_CLASSES: dict[str, type[Strategy]] = {}
S = TypeVar("S", bound="type[Strategy]")


def register(cls: S) -> S:
    """Class decorator: make a strategy available to training configurations under its ``name``."""
    if cls.name in STRATEGY_CLASSES:
        raise RuntimeError(f"strategy name {cls.name!r} is registered twice")
    STRATEGY_CLASSES[cls.name] = cls
    return cls


def available() -> tuple[str, ...]:
    """Names of all training strategies, in registration order."""
    return tuple(STRATEGY_CLASSES)


def strategy_class(name: str) -> type[Strategy]:
    """The strategy registered as ``name``; an unknown name raises :class:`UserInputError`."""
    try:
        return STRATEGY_CLASSES[name]
    except KeyError:
        choices = ", ".join(STRATEGY_CLASSES)
        raise UserInputError(f"unknown strategy {name!r}; choose one of {choices}") from None


@register
class Strategy:
    """Standard training: cross-entropy on the (augmented) clean batch."""

    name: ClassVar[str] = "standard"
    #: One or two plain sentences for people choosing a strategy (the Train page shows them).
    description: ClassVar[str] = (
        "Normal training: no attacks. Accurate on clean scans, usually fragile under attack."
    )
    #: Whether the accuracy counted during training is on adversarial examples.
    adversarial: ClassVar[bool] = False
    #: The training settings (TrainConfig fields) beyond the common ones that this strategy reads;
    #: a run's page lists only these of the strategy-specific settings.
    uses: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: TrainConfig, class_weights: Optional[torch.Tensor]) -> None:
        self.config = config
        self.class_weights = class_weights
        #: Share of the configured budget the training attacks use now (the loop's eps warm-up).
        self.budget_scale = 1.0

    @property
    def eps(self) -> float:
        """The training attacks' budget at this step."""
        return self.config.eps * self.budget_scale

    @property
    def step_size(self) -> float:
        """The training attacks' step at this step: it shrinks with the budget during warm-up."""
        return self.config.step_size * self.budget_scale

    def cross_entropy(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.float(), y, weight=self.class_weights, label_smoothing=self.config.label_smoothing
        )

    def answers(
        self, x: torch.Tensor, y: torch.Tensor, progress: Optional[ProgressCallback] = None
    ) -> torch.Tensor:
        """The labels (int64 ``[N]``) the model learns and is validated against, for the training and
        validation scans ``x``: the data's own ``y`` for every strategy but extraction, whose are
        another model's answers."""
        return y

    def prepare(
        self, x: torch.Tensor, y: torch.Tensor, progress: Optional[ProgressCallback] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The training set this strategy trains on (transfer adds its examples here). The targets are
        labels ``[N]``, or soft targets (float ``[N, C]``, rows summing to 1) for a strategy that learns
        probabilities and says so in its :meth:`step`."""
        return x, y

    def passes_per_image(self) -> float:
        """Forward-and-backward passes one training scan costs a step (a forward alone counts a
        third): what the time-left estimate prices an epoch of this strategy by before it has run."""
        return 1.0

    def step(
        self, net: nn.Module, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int
    ) -> StepResult:
        """Loss for one batch; ``net`` trains (maybe wrapped), ``model`` is the plain module for attacks."""
        logits = net(x)
        return self.cross_entropy(logits, y), logits, y

    # ------------------------------------------------------------------ attack helpers
    def pgd(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, steps: Optional[int] = None
    ) -> torch.Tensor:
        """PGD with a random start at the training budget and step size."""
        return attack(
            "pgd",
            model,
            x,
            y,
            eps=self.eps,
            alpha=self.step_size,
            steps=steps or self.config.steps,
            random_start=True,
            seed=seed,
        )


@register
class PGDTraining(Strategy):
    """Madry et al. 2018: train on PGD examples only."""

    name = "pgd"
    description = (
        "PGD adversarial training (Madry et al.): every batch is attacked with PGD "
        "first. Robust, slow."
    )
    adversarial = True
    #: PGD iterations per batch; None means the configured ``steps``.
    inner_steps: ClassVar[Optional[int]] = None
    uses = ("eps", "alpha", "steps", "eps_warmup")

    def step(
        self, net: nn.Module, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int
    ) -> StepResult:
        return super().step(net, model, self.pgd(model, x, y, seed, self.inner_steps), y, seed)

    def passes_per_image(self) -> float:
        return 1.0 + (self.inner_steps or self.config.steps)


@register
class FastTraining(PGDTraining):
    """Wong et al. 2020: one FGSM step of 1.25 eps from a uniform random start in the eps-ball.

    That is exactly one PGD step with a random start (``step_size`` defaults to 1.25 eps for
    this strategy), so the engine's PGD produces it. The catastrophic-overfitting guard lives in
    the loop, which runs the validation PGD check it needs.
    """

    name = "fgsm-rs"
    description = (
        "Fast adversarial training (Wong et al.): one FGSM step from a random start, "
        "guarded against catastrophic overfitting. Nearly as robust as PGD, several times faster."
    )
    inner_steps = 1
    uses = ("eps", "alpha", "eps_warmup", "co_tolerance")


class PairedTraining(Strategy):
    """Losses that compare the clean and the PGD prediction of each scan (one forward pass for both)."""

    adversarial = True
    uses = ("eps", "alpha", "steps", "eps_warmup")

    def adversary(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
        """The attacked copy of the batch the pair loss compares with the clean one."""
        return self.pgd(model, x, y, seed)

    def step(
        self, net: nn.Module, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int
    ) -> StepResult:
        x_adv = self.adversary(model, x, y, seed)
        clean, adv = net(torch.cat([x, x_adv])).float().chunk(2)
        return self.pair_loss(clean, adv, y), adv, y

    def pair_loss(self, clean: torch.Tensor, adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def passes_per_image(self) -> float:
        return 2.0 + self.config.steps


@register
class TradesTraining(PairedTraining):
    """Zhang et al. 2019: clean cross-entropy + beta * KL(clean prediction || adversarial one)."""

    name = "trades"
    uses = (*PairedTraining.uses, "trades_beta")
    description = "TRADES: trades clean accuracy against robustness with a weight β."

    def adversary(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
        """The paper's inner step: PGD that maximises the KL term the outer loss then penalises."""
        return attack("pgd-kl", model, x, y, eps=self.eps, alpha=self.step_size, steps=self.config.steps,
                      seed=seed)

    def pair_loss(self, clean: torch.Tensor, adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        robust = F.kl_div(F.log_softmax(adv, dim=1), F.softmax(clean, dim=1), reduction="batchmean")
        return self.cross_entropy(clean, y) + self.config.trades_beta * robust


@register
class MartTraining(PairedTraining):
    """Wang et al. 2020: boosted cross-entropy on adversarial examples + a KL term weighted
    towards misclassified clean scans."""

    name = "mart"
    uses = (*PairedTraining.uses, "mart_beta")
    description = "MART: like TRADES, with extra weight on the scans the model gets wrong."

    def pair_loss(self, clean: torch.Tensor, adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        adv_probs = F.softmax(adv, dim=1)
        top_two = adv_probs.argsort(dim=1)[:, -2:]
        runner_up = torch.where(top_two[:, -1] == y, top_two[:, -2], top_two[:, -1])
        boosted = self.cross_entropy(adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), runner_up)
        clean_probs = F.softmax(clean, dim=1)
        true_probs = clean_probs.gather(1, y[:, None]).squeeze(1)
        kl = F.kl_div(torch.log(adv_probs + 1e-12), clean_probs, reduction="none").sum(dim=1)
        return boosted + self.config.mart_beta * (kl * (1.0000001 - true_probs)).mean()


@register
class MixedTraining(Strategy):
    """The reference study's recipe: each batch is trained as clean + FGSM + PGD + CW copies.

    CW runs ``cw_steps`` Adam iterations (10 by default; the reference used 1,000) at its default
    constant, without the binary search over it: enough to give the minimal-perturbation
    examples their character at a fraction of the cost. Scans CW cannot fool in so few steps
    come back unchanged and count as clean copies.
    """

    name = "mixed"
    uses = ("eps", "alpha", "steps", "eps_warmup", "cw_steps")
    description = (
        "The reference study's recipe: each batch is clean + FGSM + PGD + CW-L2 versions "
        "of the scans."
    )
    adversarial = True

    def step(
        self, net: nn.Module, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int
    ) -> StepResult:
        x_fgsm = attack("fgsm", model, x, y, eps=self.eps)
        x_pgd = self.pgd(model, x, y, seed)
        x_cw = attack("cw", model, x, y, steps=self.config.cw_steps, binary_search_steps=1)
        everything, labels = torch.cat([x, x_fgsm, x_pgd, x_cw]), y.repeat(4)
        return super().step(net, model, everything, labels, seed)

    def passes_per_image(self) -> float:
        return 4.0 + 1.0 + self.config.steps + self.config.cw_steps


@register
class TransferTraining(Strategy):
    """Adversarial examples crafted once on another saved run's model, added to the training set.

    As in the ResNet18 -> ResNet50/101 study: one copy of the training scans per budget in
    ``transfer_eps``, made with ``transfer_attack`` on the source model; the step itself is
    standard (augmentation then applies to original and adversarial scans alike).
    """

    name = "transfer"
    uses = ("transfer_run", "transfer_attack", "transfer_eps", "steps")
    description = (
        "Adds adversarial scans crafted on another saved model (the cross-architecture "
        "recipe)."
    )

    def prepare(
        self, x: torch.Tensor, y: torch.Tensor, progress: Optional[ProgressCallback] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        source, record = load_model(self.config.transfer_run, device=x.device)
        batch = max(2, self.config.batch_size)
        copies, total = [x], len(self.config.transfer_eps) * len(x)
        for round_, eps in enumerate(self.config.transfer_eps):
            parts = []
            for start in range(0, len(x), batch):
                params: dict[str, Any] = {"eps": eps}
                if self.config.transfer_attack == "pgd":
                    params.update(
                        alpha=eps / 4, steps=self.config.steps, random_start=True, seed=self.config.seed
                    )
                parts.append(
                    attack(
                        self.config.transfer_attack,
                        source,
                        x[start : start + batch],
                        y[start : start + batch],
                        **params,
                    )
                )
                report(
                    progress,
                    round_ * len(x) + start + len(parts[-1]),
                    total,
                    f"crafting transfer examples on {record.name}",
                )
            copies.append(torch.cat(parts))
        return torch.cat(copies), y.repeat(len(copies))


@register
class DistillationTraining(Strategy):
    """Defensive distillation (Papernot et al. 2016, "Distillation as a Defense to Adversarial
    Perturbations against Deep Neural Networks", https://arxiv.org/abs/1511.04508).

    The student learns the teacher's soft labels with its own logits divided by the temperature
    ``T`` (``temperature``); deployed, it runs at T=1: the model returns its raw logits, which end
    up about T times larger than an ordinary model's. Its softmax then saturates, and the gradient
    of the cross-entropy on it underflows to zero on most scans: PGD on the softmax stalls while the
    decision is as fragile as before (Carlini & Wagner 2017, https://arxiv.org/abs/1608.04644). The
    evaluation therefore reports it as a defence, beside an attack on its logits (``cw-linf``, or
    PGD on the logits divided by T).

    The paper trains the teacher at T as well and takes its soft labels at T. A teacher trained at T
    has logits about T times those of the same network trained at T=1, so its soft labels at T are
    an ordinary run's probabilities at T=1: any saved run serves as the teacher, its soft labels
    read at the temperature it was trained at (1, or its own T for a distilled teacher). The loss is
    the soft cross-entropy at T, times T² as in Hinton et al. 2015 (https://arxiv.org/abs/1503.02531)
    so that its gradients keep their size whatever T is; class weights (``imbalance="weights"``)
    weigh each scan by its true class, as the standard loss does.
    """

    name = "distillation"
    uses = ("teacher_run", "temperature")
    description = (
        "Defensive distillation (Papernot et al.): learns a saved model's soft labels at a high "
        "temperature. Looks robust to plain PGD only because its gradients vanish; the evaluation "
        "shows the attack that sees through it."
    )

    def prepare(
        self, x: torch.Tensor, y: torch.Tensor, progress: Optional[ProgressCallback] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        teacher, record = load_model(self.config.teacher_run, device=x.device)
        with torch.no_grad():
            classes = teacher(x[:1]).shape[1]
        if classes <= int(y.max()):
            raise UserInputError(
                f"teacher run {record.name} tells apart {classes} classes, this data at least "
                f"{int(y.max()) + 1}: choose a teacher trained on the same classes"
            )
        self.teacher = teacher.eval().requires_grad_(False)
        self.teacher_temperature = training_temperature(record.config)
        return x, y

    def soft_labels(self, x: torch.Tensor) -> torch.Tensor:
        """float32 ``[N, C]``: the teacher's class probabilities at its own training temperature."""
        with torch.no_grad():
            return F.softmax(self.teacher(x).float() / self.teacher_temperature, dim=1)

    def step(
        self, net: nn.Module, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int
    ) -> StepResult:
        targets = self.soft_labels(x)
        logits = net(x)
        temperature = self.config.temperature
        loss = soft_cross_entropy(logits.float() / temperature, targets, self.class_weights, y)
        return temperature**2 * loss, logits, y


@register
class ExtractionTraining(Strategy):
    """Model extraction: a surrogate learns only what a deployed model answers, never the labels.

    Tramèr et al. 2016, "Stealing Machine Learning Models via Prediction APIs"
    (https://arxiv.org/abs/1609.02943); Papernot et al. 2017, "Practical Black-Box Attacks against
    Machine Learning" (https://arxiv.org/abs/1602.02697). The victim (``victim_run``) is queried once
    per training and validation scan, as deployed (eval mode, softmax at T=1): those scans are the
    query budget. It answers with its class (``victim_answers="labels"``, the usual API) or with every
    class's probability (``"probabilities"``, learnt by soft cross-entropy as in distillation). The
    labels of the data are never read: the validation that keeps the best epoch measures agreement
    with the victim's answers, class weights count its answers, and augmentation reuses the answer of
    the scan it varies (no new query).
    """

    name = "extraction"
    uses = ("victim_run", "victim_answers")
    description = (
        "Model extraction (Tramèr et al.): learns only a saved model's answers on these scans, never "
        "their labels: a stolen copy, for attacks crafted offline and replayed on the original."
    )

    def answers(
        self, x: torch.Tensor, y: torch.Tensor, progress: Optional[ProgressCallback] = None
    ) -> torch.Tensor:
        return self.victim_probabilities(x, y, progress).argmax(dim=1)

    def prepare(
        self, x: torch.Tensor, y: torch.Tensor, progress: Optional[ProgressCallback] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.victim_answers == "labels":
            return x, y  # already the victim's answers (:meth:`answers`)
        return x, self.victim_probabilities(x, y, progress)

    def victim_probabilities(
        self, x: torch.Tensor, y: torch.Tensor, progress: Optional[ProgressCallback] = None
    ) -> torch.Tensor:
        """float32 ``[N, C]``: the deployed victim's class probabilities for the scans ``x``, batch by
        batch (``y``, their labels ``[N]``, only checks that the victim knows as many classes).
        Raises :class:`UserInputError` when the victim reads scans of another size or fewer classes."""
        victim, record = load_model(self.config.victim_run, device=x.device)
        size = (record.config.get("data") or {}).get("image_size")
        if size is not None and int(size) != x.shape[-1]:
            raise UserInputError(
                f"victim run {record.name} reads {size} px scans, these are {x.shape[-1]} px: query it "
                "with scans of its own size"
            )
        victim.eval().requires_grad_(False)
        batch, parts = max(2, self.config.batch_size), []
        with torch.no_grad():
            for start in range(0, len(x), batch):
                parts.append(F.softmax(victim(x[start : start + batch]).float(), dim=1))
                report(progress, start + len(parts[-1]), len(x), f"querying the victim {record.name}")
        answered = torch.cat(parts)
        if answered.shape[1] <= int(y.max()):
            raise UserInputError(
                f"victim run {record.name} tells apart {answered.shape[1]} classes, this data at least "
                f"{int(y.max()) + 1}: choose a victim trained on the same classes"
            )
        return answered

    def step(
        self, net: nn.Module, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int
    ) -> StepResult:
        if y.ndim == 1:
            return super().step(net, model, x, y, seed)
        labels = y.argmax(dim=1)
        logits = net(x)
        return soft_cross_entropy(logits.float(), y, self.class_weights, labels), logits, labels


def soft_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, class_weights: Optional[torch.Tensor], labels: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` (float ``[N, C]``) against soft ``targets`` (``[N, C]``, rows
    summing to 1); with ``class_weights`` (``[C]``) each scan weighs as its class in ``labels`` (``[N]``)
    does, as the standard loss weighs it."""
    per_scan = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1)
    if class_weights is None:
        return per_scan.mean()
    weights = class_weights[labels]
    return (per_scan * weights).sum() / weights.sum()


def training_temperature(config: Mapping[str, Any]) -> float:
    """The softmax temperature a run with these stored settings was trained at: its ``temperature``
    for a distilled run, 1 for every other strategy. Its deployed model always runs at 1."""
    if config.get("strategy") == DistillationTraining.name:
        return float(config.get("temperature") or 1.0)
    return 1.0


def attack(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, **params: Any) -> torch.Tensor:
    """Run one engine attack and return the adversarial batch."""
    return get_attack(name, **params)(model, x, y)  # type: ignore[return-value]


def build_strategy(config: TrainConfig, class_weights: Optional[torch.Tensor]) -> Strategy:
    return strategy_class(config.strategy)(config, class_weights)
