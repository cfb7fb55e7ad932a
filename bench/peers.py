"""The peer libraries at our attacks' default settings: torchattacks, Foolbox and ART, one adapter each.

Bench extras only (``pip install -r requirements-bench.txt``); nothing in ``pipeline/`` imports them.
Each adapter turns ``(model, x, y)`` (``x`` ``[N, 1, H, W]`` float in ``[0, 1]``, normalisation inside
the model, ``y`` ``[N]`` int64) into an adversarial batch of the same shape, on the same device:
Foolbox gets a ``PyTorchModel`` with bounds ``(0, 1)`` and no preprocessing, ART a
``PyTorchClassifier`` with ``clip_values=(0, 1)`` on numpy arrays (the copies to and from numpy are
part of ART's time: that is how ART is called). Budgets are in the same ``[0, 1]`` image scale.

Papers: torchattacks (Kim 2020, https://arxiv.org/abs/2010.01950), Foolbox (Rauber et al. 2017/2020,
https://arxiv.org/abs/1707.04131), ART (Nicolae et al. 2018, https://arxiv.org/abs/1807.01069).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

EPS = 4 / 255  #: our default L-inf budget (the peers table passes its own, ``eps``)
EPS_L2 = 0.5  #: L2 budget of PGD-L2 (our default)

Run = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]

#: library -> the module whose import says it is installed
LIBRARIES = {"torchattacks": "torchattacks", "Foolbox": "foolbox", "ART": "art"}


@dataclass
class Row:
    """One attack: our registry name and parameters, the norm its size is reported in, and each peer."""

    title: str
    ours: str
    ours_params: dict
    norm: str  #: "linf" or "l2": the size column's norm
    minimal: bool  #: a minimal-perturbation attack (its size is the point), not a budgeted one
    peers: dict[str, Run | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  #: per library: a setting it cannot match


def missing() -> dict[str, str]:
    """Peer libraries that do not import here, with the reason, e.g. ``{"ART": "No module named 'art'"}``."""
    absent = {}
    for library, module in LIBRARIES.items():
        try:
            importlib.import_module(module)
        except Exception as error:  # an ImportError, or a library that breaks on import
            absent[library] = f"{type(error).__name__}: {error}"
    return absent


def _foolbox(make: Callable[[], object], epsilon: float | None) -> Run:
    def run(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import foolbox

        wrapped = foolbox.PyTorchModel(model, bounds=(0, 1), device=x.device)
        _, clipped, _ = make()(wrapped, x, y, epsilons=epsilon)
        return clipped
    return run


def _art(make: Callable[[object, int], object]) -> Run:
    def run(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from art.estimators.classification import PyTorchClassifier

        with torch.no_grad():
            classes = model(x[:1]).shape[1]
        classifier = PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                       nb_classes=classes, clip_values=(0.0, 1.0),
                                       device_type="gpu" if x.device.type == "cuda" else "cpu")
        attack = make(classifier, x.shape[0])
        adversarial = attack.generate(x.cpu().numpy(), y=y.cpu().numpy())
        return torch.from_numpy(adversarial).to(x.device, x.dtype)
    return run


def _torchattacks(make: Callable[[torch.nn.Module], Callable]) -> Run:
    return lambda model, x, y: make(model)(x, y)


def rows(classes: int, eps: float = EPS) -> list[Row]:
    """The side-by-side attacks at our defaults, each peer at the nearest settings it has.

    ``classes``: the model's number of classes (torchattacks' AutoAttack needs at least 4); ``eps``:
    the L-inf budget (image scale) of FGSM, PGD and the ensemble, ours and the peers' alike.
    """
    EPS = eps
    import_ok = {library: library not in missing() for library in LIBRARIES}
    ta = importlib.import_module("torchattacks") if import_ok["torchattacks"] else None
    fb = importlib.import_module("foolbox").attacks if import_ok["Foolbox"] else None
    art = importlib.import_module("art.attacks.evasion") if import_ok["ART"] else None
    table = [
        Row("FGSM", "fgsm", {"eps": EPS}, "linf", False, {
            "torchattacks": ta and _torchattacks(lambda m: ta.FGSM(m, eps=EPS)),
            "Foolbox": fb and _foolbox(lambda: fb.FGSM(), EPS),
            "ART": art and _art(lambda c, n: art.FastGradientMethod(c, norm="inf", eps=EPS, batch_size=n)),
        }),
        Row("PGD-10 L∞", "pgd", {"eps": EPS}, "linf", False, {
            "torchattacks": ta and _torchattacks(
                lambda m: ta.PGD(m, eps=EPS, alpha=EPS / 4, steps=10, random_start=True)),
            "Foolbox": fb and _foolbox(lambda: fb.LinfPGD(abs_stepsize=EPS / 4, steps=10, random_start=True), EPS),
            "ART": art and _art(lambda c, n: art.ProjectedGradientDescent(
                c, norm="inf", eps=EPS, eps_step=EPS / 4, max_iter=10, num_random_init=1, batch_size=n,
                verbose=False)),
        }),
        Row("PGD-10 L2", "pgdl2", {}, "l2", False, {
            "torchattacks": ta and _torchattacks(
                lambda m: ta.PGDL2(m, eps=EPS_L2, alpha=EPS_L2 / 4, steps=10, random_start=True)),
            "Foolbox": fb and _foolbox(lambda: fb.L2PGD(abs_stepsize=EPS_L2 / 4, steps=10, random_start=True),
                                       EPS_L2),
            "ART": art and _art(lambda c, n: art.ProjectedGradientDescent(
                c, norm=2, eps=EPS_L2, eps_step=EPS_L2 / 4, max_iter=10, num_random_init=1, batch_size=n,
                verbose=False)),
        }),
        Row("CW-L2", "cw", {}, "l2", True, {
            "torchattacks": ta and _torchattacks(lambda m: ta.CW(m, c=1, kappa=0, steps=50, lr=0.01)),
            "Foolbox": fb and _foolbox(lambda: fb.L2CarliniWagnerAttack(
                binary_search_steps=5, steps=50, stepsize=0.01, confidence=0, initial_const=1.0), None),
            "ART": art and _art(lambda c, n: art.CarliniL2Method(
                c, confidence=0.0, learning_rate=0.01, binary_search_steps=5, max_iter=50, initial_const=1.0,
                batch_size=n, verbose=False)),
        }, {
            "ours": "c estimated per scan, 5 bisection rounds of at most 50, 25, 12, 6, 3 steps, lr 0.01",
            "torchattacks": "one c = 1 (no bisection), 50 steps",
            "Foolbox": "5 bisection rounds of 50 steps from c = 1",
            "ART": "5 bisection rounds of 50 steps from c = 1 (ART's own step-size line search)",
        }),
        Row("DeepFool", "deepfool", {}, "l2", True, {
            "torchattacks": ta and _torchattacks(lambda m: ta.DeepFool(m, steps=50, overshoot=0.02)),
            "Foolbox": fb and _foolbox(lambda: fb.L2DeepFoolAttack(steps=50, candidates=classes, overshoot=0.02),
                                       None),
            "ART": art and _art(lambda c, n: art.DeepFool(c, max_iter=50, epsilon=0.02, nb_grads=classes,
                                                          batch_size=n, verbose=False)),
        }),
        Row("AutoAttack L∞", "autoattack", {"eps": EPS}, "linf", False, {
            "torchattacks": ta and _torchattacks(
                lambda m: ta.AutoAttack(m, norm="Linf", eps=EPS, version="standard", n_classes=classes, seed=0))
            if classes >= 4 else None,
            "Foolbox": None,
            "ART": art and _art(lambda c, n: art.AutoAttack(c, norm="inf", eps=EPS, eps_step=2 * EPS, batch_size=n,
                                                            attacks=_art_ensemble(art, c, n, EPS))),
        }, {
            "ours": "APGD-CE, APGD-DLR, APGD-T (20 steps each), Square (1,000 queries)",
            "torchattacks": "needs at least 4 classes" if classes < 4 else "its standard version (100 steps, "
                            "5,000 Square queries): more work than ours",
            "Foolbox": "has no ensemble",
            "ART": "APGD-CE, APGD-DLR (20 steps), Square (1,000 queries); no APGD-T (ART's targeted mode "
                   "runs every member against every class)",
        }),
    ]
    return table


def _art_ensemble(art: object, classifier: object, batch: int, eps: float) -> list:
    """ART's AutoAttack members nearest ours: APGD-CE and APGD-DLR (20 steps, one start), Square."""
    apgd = dict(norm="inf", eps=eps, eps_step=2 * eps, max_iter=20, nb_random_init=1, batch_size=batch,
                verbose=False)
    return [art.AutoProjectedGradientDescent(classifier, loss_type="cross_entropy", **apgd),
            art.AutoProjectedGradientDescent(classifier, loss_type="difference_logits_ratio", **apgd),
            art.SquareAttack(classifier, norm="inf", eps=eps, max_iter=1000, nb_restarts=1, batch_size=batch,
                             verbose=False)]
