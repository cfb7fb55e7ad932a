"""Ensembles of saved runs: one model made of several, attacked as a whole and from each member.

Several runs trained on the same data combine their answers in one of three ways
(:data:`COMBINE_RULES`): averaged logits, averaged softmax probabilities, or a majority vote of the
members' predicted classes (ties go to the class with the higher averaged probability). The
:class:`Ensemble` is an ``nn.Module`` like any model here (``[N, 1, H, W]`` in [0, 1] to ``[N, C]``),
so it can be attacked, explained and evaluated wherever a single run can.

An ensemble is only as strong as the attack on the whole ensemble (Tramèr et al. 2018, "Ensemble
Adversarial Training", https://arxiv.org/abs/1705.07204; Athalye, Carlini & Wagner 2018,
https://arxiv.org/abs/1802.00420). Attacking one member and replaying its examples on the ensemble
(transfer) is the naive attack; the adaptive one differentiates the whole ensemble end to end. The
averaged logits and probabilities are differentiable as they stand. A majority vote is not (each
member contributes an argmax): it is attacked through a **differentiable surrogate**, the soft vote
(the members' mean softmax probabilities), straight-through: the forward pass is the vote itself,
the backward pass the soft vote's gradient (BPDA, Athalye et al. 2018). Figures of a vote ensemble
under attack are therefore figures of that surrogate's attack, and say so.

:func:`evaluate_ensemble` crafts the same attack on each member and on the whole ensemble and
measures every member and the ensemble on every crafted set (the transfer matrix of
:mod:`.transfer`), then reports each member's and the ensemble's robust accuracy and how often the
members fail on the same scans (:class:`SharedFailures`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline.data import same_data
from pipeline.errors import CheckpointError, UserInputError
from pipeline.evaluation.batches import resolve_indices
from pipeline.evaluation.defenses import Defense, defence_figures
from pipeline.evaluation.intervals import Interval, proportion_interval
from pipeline.evaluation.robustness import AttackSpec, SpecLike
from pipeline.evaluation.shards import Shards
from pipeline.evaluation.transfer import transfer_matrix
from pipeline.explain import cam_layers
from pipeline.progress import ProgressCallback
from pipeline.store import RunRecord, load_model, read_record, resolve_run
from pipeline.units import format_share

#: How members' answers are combined, in words.
COMBINE_RULES = {
    "logits": "averaged logits",
    "probabilities": "averaged probabilities",
    "vote": "majority vote",
}
#: How the whole-ensemble attack differentiates each rule, in words.
GRADIENTS = {
    "logits": "end to end through the averaged logits",
    "probabilities": "end to end through the averaged probabilities",
    "vote": "through a differentiable surrogate of the vote (the soft vote: the members' mean softmax "
    "probabilities, straight-through), since a vote has no gradient",
}
#: A scan's vote share for the tie-break: votes plus this much of the mean probability (under 1 vote).
TIE_BREAK = 0.5


def combine_rule(name: str) -> str:
    """``name`` checked against :data:`COMBINE_RULES`; :class:`UserInputError` naming them otherwise."""
    rule = str(name).strip().lower()
    if rule not in COMBINE_RULES:
        raise UserInputError(f"unknown ensemble combination {name!r}; choose from {', '.join(COMBINE_RULES)}")
    return rule


def ensemble_name(members: Sequence[str], combine: str) -> str:
    """How an ensemble is named in tables: its members and its rule."""
    return f"ensemble of {' + '.join(members)} ({COMBINE_RULES[combine_rule(combine)]})"


class Ensemble(nn.Module, Defense):
    """Several classifiers as one: ``[N, 1, H, W]`` in [0, 1] to ``[N, C]`` scores whose softmax is
    the ensemble's class probabilities and whose argmax its answer.

    ``combine``: ``"logits"`` returns the members' mean logits; ``"probabilities"`` the log of their
    mean softmax; ``"vote"`` the log of each class's vote share (votes plus half the mean
    probability, which breaks ties, over members plus a half), with the soft vote's gradient
    (straight-through; the vote itself has none). Raises :class:`UserInputError` for fewer than two
    members, names that are not one per member or repeat, or an unknown rule.

    As a :class:`Defense` the ensemble is the evaluated model itself (``wraps_model`` False): the
    naive attack is a transfer from its best member, the adaptive one the attack on the whole.
    """

    naive_attack = (
        "transfer: crafted on each member alone, the strongest member's examples replayed on the ensemble"
    )
    wraps_model = False
    gap_means = (
        "examples crafted on one member fool the ensemble less than an attack on the whole ensemble does; "
        "a transfer understates the threat"
    )
    gap_masks = False

    def __init__(self, members: Sequence[nn.Module], names: Sequence[str], combine: str = "logits") -> None:
        super().__init__()
        if len(members) < 2:
            raise UserInputError("an ensemble needs at least two runs; give two or more")
        names = [str(name) for name in names]
        if len(names) != len(members) or len(set(names)) != len(names):
            raise UserInputError("give each member of the ensemble one name of its own")
        self.members = nn.ModuleList(members)
        self.names = names
        self.combine = combine_rule(combine)
        self.name = ensemble_name(names, self.combine)
        self.adaptive_attack = f"the same attack on the whole ensemble, {GRADIENTS[self.combine]}"

    @property
    def surrogate(self) -> bool:
        """Whether attacks differentiate a surrogate rather than the deployed rule (the vote)."""
        return self.combine == "vote"

    @property
    def cam_layers(self) -> dict[str, nn.Module]:
        """Grad-CAM layers of every member, named ``"<member>: <layer>"``; a map there explains the
        ensemble's score through that one member's features."""
        return {
            f"{name}: {layer}": module
            for name, member in zip(self.names, self.members)
            for layer, module in cam_layers(member).items()
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([member(x) for member in self.members])  # [M, N, C]
        if self.combine == "logits":
            return logits.mean(dim=0)
        mean_probabilities = torch.softmax(logits.float(), dim=-1).mean(dim=0)
        soft = torch.log(mean_probabilities.clamp_min(1e-12))
        if self.combine == "probabilities":
            return soft
        votes = nn.functional.one_hot(logits.argmax(dim=-1), logits.shape[-1]).sum(dim=0).float()
        shares = (votes + TIE_BREAK * mean_probabilities.detach()) / (len(self.members) + TIE_BREAK)
        # straight-through: the forward pass is the vote, the backward pass the soft vote's
        return soft + (torch.log(shares.clamp_min(1e-12)) - soft).detach()

    def deployed(self, model: nn.Module) -> nn.Module:
        return model

    def adaptive_view(self, model: nn.Module, *, eot_samples: int = 8) -> nn.Module:
        return model  # attacked whole; the vote's surrogate gradient is built into its forward


def member_records(runs: Sequence[str | Path], *, runs_dir: str | Path = "runs") -> list[RunRecord]:
    """The records of an ensemble's runs (directories, or names under ``runs_dir``), checked to fit
    together before any weights are read.

    Raises :class:`UserInputError` for fewer than two runs, a run given twice, a missing or
    unreadable run, or runs trained on different data (another :class:`pipeline.data.DataSpec`:
    source, image size, count, seeds, split) or with other classes: an ensemble answers on scans
    every member reads alike and none was trained on.
    """
    run_dirs = [resolve_run(runs_dir, run) for run in runs]
    if len(run_dirs) < 2:
        raise UserInputError("an ensemble needs at least two runs; give two or more")
    if len({path.resolve() for path in run_dirs}) != len(run_dirs):
        raise UserInputError("the same run was given twice for the ensemble; give each member once")
    records = [read_record(run_dir) for run_dir in run_dirs]
    for record in records:
        if record.error:
            raise CheckpointError(record.error)
        if not record.has_model or "data" not in record.config:
            raise CheckpointError(
                f"run {record.name} has no saved model yet; choose runs that have finished an epoch"
            )
    for record in records[1:]:
        check_members(records[0], record)
    return records


def load_ensemble(
    runs: Sequence[str | Path],
    combine: str = "logits",
    *,
    runs_dir: str | Path = "runs",
    device: str | torch.device = "cpu",
) -> tuple[Ensemble, list[RunRecord]]:
    """The runs (directories, or names under ``runs_dir``) as one :class:`Ensemble`, loaded through
    the store, with their records in order; :func:`member_records` says which runs are refused."""
    combine = combine_rule(combine)
    records = member_records(runs, runs_dir=runs_dir)
    models = [load_model(record.run_dir, device=device)[0] for record in records]
    names: list[str] = []
    for record in records:
        name, number = record.name, 2
        while name in names:
            name, number = f"{record.name} ({number})", number + 1
        names.append(name)
    return Ensemble(models, names, combine), records


def check_members(first: RunRecord, other: RunRecord) -> None:
    """Refuse two members that read different scans, or the same scans differently."""
    a, b = first.data, other.data
    if a.image_size != b.image_size:
        raise UserInputError(
            f"runs {first.name} and {other.name} read scans of different sizes ({a.image_size} and "
            f"{b.image_size} px); an ensemble combines runs trained at one image size"
        )
    if a != b or not same_data(first.config.get("dataset"), other.config.get("dataset") or {}):
        raise UserInputError(
            f"runs {first.name} and {other.name} were trained on different data or splits; an ensemble "
            "combines runs trained on one dataset with one split (the same data settings), so that its "
            "test scans are unseen by every member"
        )
    if first.classes != other.classes:
        raise UserInputError(
            f"runs {first.name} and {other.name} name different classes ({', '.join(first.classes)} and "
            f"{', '.join(other.classes)}); combine runs of the same classes"
        )


@dataclass
class SharedFailures:
    """How often the members fail on the same scans under one condition; shares of ``scans``."""

    condition: str  #: "clean", "each member's own attack" or "the whole-ensemble attack"
    scans: int
    all_fail: float  #: every member wrong
    majority_fail: float  #: more than half of the members wrong
    any_fail: float  #: at least one member wrong
    #: Per pair of members, failures in common over failures of either (Jaccard; NaN when neither fails).
    pairs: dict[str, float] = field(default_factory=dict)

    @property
    def mean_pair(self) -> float:
        """Mean of the pairs' agreement of failures (NaN when no pair fails at all)."""
        values = [value for value in self.pairs.values() if np.isfinite(value)]
        return float(np.mean(values)) if values else float("nan")

    @classmethod
    def measure(cls, condition: str, wrong: np.ndarray, names: Sequence[str]) -> SharedFailures:
        """From ``wrong`` (bool ``[M, N]``: member ``m`` wrong on scan ``n``)."""
        counts = wrong.sum(axis=0)
        pairs = {}
        for (i, first), (j, second) in itertools.combinations(enumerate(names), 2):
            union = int((wrong[i] | wrong[j]).sum())
            pairs[f"{first} & {second}"] = int((wrong[i] & wrong[j]).sum()) / union if union else float("nan")
        members = wrong.shape[0]
        return cls(
            condition,
            int(wrong.shape[1]),
            float(np.mean(counts == members)),
            float(np.mean(counts > members / 2)),
            float(np.mean(counts > 0)),
            pairs,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "condition": self.condition,
            "scans": self.scans,
            "all_fail": self.all_fail,
            "majority_fail": self.majority_fail,
            "any_fail": self.any_fail,
            "pairs": dict(self.pairs),
            "mean_pair": self.mean_pair,
        }


@dataclass
class EnsembleResult:
    """An ensemble and its members under one attack on the same scans, per scan.

    Rows ``0..M-1`` of ``clean`` and ``robust`` are the members in order, row ``M`` the ensemble.
    A scan counts as robust for a model only if the model is right on it clean and attacked (the
    convention of :mod:`.robustness`: accuracy under attack is never above clean accuracy). Also a
    defence result for the verdict table (:mod:`.verdict`): naive = the best transfer from a member,
    adaptive = the whole-ensemble attack.
    """

    defense: str  #: the ensemble's name
    combine: str
    members: list[str]
    attack: AttackSpec  #: crafted in full (no early stop) on each member and on the whole ensemble
    indices: np.ndarray  #: int ``[N]``: the dataset index of each scan
    clean: np.ndarray  #: bool ``[M + 1, N]``: right on the clean scan
    #: bool ``[M + 1, M + 1, N]``: ``[source, target, scan]``: target right on the clean scan and on it
    #: as attacked through source.
    robust: np.ndarray
    naive_attack: str = Ensemble.naive_attack
    adaptive_attack: str = ""
    adaptive_attacks: tuple[str, ...] = ()
    wraps_model: bool = False
    gap_means: str = Ensemble.gap_means
    gap_masks: bool = False

    @property
    def scans(self) -> int:
        return int(self.indices.size)

    @property
    def surrogate(self) -> bool:
        """True for a vote, attacked through its soft-vote surrogate."""
        return self.combine == "vote"

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean[-1].mean())

    @property
    def member_clean(self) -> list[float]:
        return [float(row.mean()) for row in self.clean[:-1]]

    @property
    def member_robust(self) -> list[float]:
        """Each member's robust accuracy under the attack crafted on itself (white-box)."""
        return [float(self.robust[m, m].mean()) for m in range(len(self.members))]

    @property
    def transfer(self) -> list[float]:
        """The ensemble's robust accuracy under the attack crafted on each member alone."""
        return [float(self.robust[m, -1].mean()) for m in range(len(self.members))]

    @property
    def whole(self) -> float:
        """The ensemble's robust accuracy under the attack on the whole ensemble."""
        return float(self.robust[-1, -1].mean())

    @property
    def members_under_whole(self) -> list[float]:
        """Each member's accuracy on the scans crafted against the whole ensemble."""
        return [float(self.robust[-1, m].mean()) for m in range(len(self.members))]

    @property
    def best_member(self) -> str:
        """The member whose examples transfer best to the ensemble (its lowest transfer accuracy)."""
        return self.members[int(np.argmin(self.transfer))]

    # the verdict's view (:class:`.verdict.DefenceFigures`)
    @property
    def naive_accuracy(self) -> float:
        return min(self.transfer)

    @property
    def adaptive_accuracy(self) -> float:
        return self.whole

    def intervals(self) -> dict[str, Interval]:
        """Every robust accuracy above with its 95% interval, keyed as the figures label them."""
        found = {}
        for m, name in enumerate(self.members):
            found[f"{name}, own attack"] = proportion_interval(self.robust[m, m])
        for m, name in enumerate(self.members):
            found[f"ensemble, transfer from {name}"] = proportion_interval(self.robust[m, -1])
        found["ensemble, whole-ensemble attack"] = proportion_interval(self.robust[-1, -1])
        return found

    def shared_failures(self) -> list[SharedFailures]:
        """How often the members fail together: clean, each under its own attack, and all on the
        scans crafted against the whole ensemble."""
        members = range(len(self.members))
        return [
            SharedFailures.measure("clean", ~self.clean[:-1], self.members),
            SharedFailures.measure(
                "each member's own attack", ~np.stack([self.robust[m, m] for m in members]), self.members
            ),
            SharedFailures.measure("the whole-ensemble attack", ~self.robust[-1, :-1], self.members),
        ]

    def sentence(self) -> str:
        """The finding in one sentence, with the surrogate named for a vote."""
        shown = format_share(self.whole, self.scans), format_share(self.naive_accuracy, self.scans)
        how = " (through its soft-vote surrogate)" if self.surrogate else ""
        stronger = "at least as strong as" if self.whole <= self.naive_accuracy else "weaker than"
        return (
            f"Attacked whole{how}, the ensemble keeps {shown[0]}; the best transfer from a member "
            f"({self.best_member}) leaves {shown[1]}: the whole-ensemble attack is {stronger} the best "
            "transfer."
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "ensemble",
            **defence_figures(self),
            "combine": self.combine,
            "combine_words": COMBINE_RULES[self.combine],
            "gradient": GRADIENTS[self.combine],
            "surrogate": self.surrogate,
            "members": list(self.members),
            "best_member": self.best_member,
            "member_clean": self.member_clean,
            "member_robust": self.member_robust,
            "transfer": self.transfer,
            "whole": self.whole,
            "members_under_whole": self.members_under_whole,
            "shared_failures": [shared.to_dict() for shared in self.shared_failures()],
            "sentence": self.sentence(),
            "indices": self.indices.tolist(),
            "clean": self.clean.astype(int).tolist(),
            "robust": self.robust.astype(int).tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EnsembleResult:
        """The result :meth:`to_dict` wrote (a saved report's), per-scan answers and all."""
        return cls(
            str(data["defense"]),
            combine_rule(data["combine"]),
            [str(name) for name in data["members"]],
            AttackSpec.from_dict(data["attack"]),
            np.asarray(data["indices"], dtype=np.int64),
            np.asarray(data["clean"], dtype=bool),
            np.asarray(data["robust"], dtype=bool),
            naive_attack=str(data.get("naive_attack", Ensemble.naive_attack)),
            adaptive_attack=str(data.get("adaptive_attack", "")),
        )


def evaluate_ensemble(
    ensemble: Ensemble,
    dataset: Dataset,
    indices: Optional[Sequence[int]],
    attack: SpecLike,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: Optional[ProgressCallback] = None,
    shards: Shards = Shards(),
) -> EnsembleResult:
    """Craft ``attack`` on each member and on the whole ensemble, and measure every member and the
    ensemble on every crafted set, scan by scan (:func:`.transfer.transfer_matrix`; ``shards`` splits
    its batches among torchrun's processes).

    Run the attack in full (no early stop): stopping at a member's boundary weakens its transfer.
    Raises :class:`UserInputError` for an empty selection of scans.
    """
    spec = AttackSpec.coerce(attack)
    models = {**dict(zip(ensemble.names, ensemble.members)), ensemble.name: ensemble}
    matrix = transfer_matrix(
        models, dataset, indices, spec, batch_size=batch_size, device=device, progress=progress, shards=shards
    )
    assert matrix.clean_correct is not None and matrix.correct is not None
    return EnsembleResult(
        ensemble.name,
        ensemble.combine,
        list(ensemble.names),
        spec,
        resolve_indices(dataset, indices),
        matrix.clean_correct,
        matrix.correct & matrix.clean_correct[None],
        naive_attack=ensemble.naive_attack,
        adaptive_attack=ensemble.adaptive_attack,
    )


#: The columns of an ensemble's accuracy table, as the HTML report and the dashboard show them.
ACCURACY_COLUMNS = ("model", "clean", "robust accuracy", "attack crafted on")


def accuracy_rows(result: EnsembleResult) -> list[dict[str, str]]:
    """Each member under its own attack, then the ensemble under the transfer from each member and
    under the whole-ensemble attack: one formatting for the HTML report and the dashboard."""
    scans = result.scans
    rows = [
        {
            "model": f"member {name}",
            "clean": format_share(clean, scans),
            "robust accuracy": proportion_interval(result.robust[m, m]).format(),
            "attack crafted on": f"{name} itself (white-box)",
        }
        for m, (name, clean) in enumerate(zip(result.members, result.member_clean))
    ]
    ensemble_clean = format_share(result.clean_accuracy, scans)
    rows += [
        {
            "model": "ensemble",
            "clean": ensemble_clean,
            "robust accuracy": proportion_interval(result.robust[m, -1]).format(),
            "attack crafted on": f"member {name} (transfer)"
            + (" — the best" if name == result.best_member else ""),
        }
        for m, name in enumerate(result.members)
    ]
    rows.append(
        {
            "model": "ensemble",
            "clean": ensemble_clean,
            "robust accuracy": proportion_interval(result.robust[-1, -1]).format(),
            "attack crafted on": "the whole ensemble, " + GRADIENTS[result.combine],
        }
    )
    return rows


def shared_rows(result: EnsembleResult) -> list[dict[str, str]]:
    """How often the members fail on the same scans, one row per condition: the shares of scans where
    all, a majority and any of them are wrong, and each pair's agreement of failures (Jaccard)."""
    rows = []
    for shared in result.shared_failures():
        row = {
            "condition": shared.condition,
            "all members wrong": format_share(shared.all_fail, shared.scans),
            "a majority wrong": format_share(shared.majority_fail, shared.scans),
            "any member wrong": format_share(shared.any_fail, shared.scans),
        }
        for pair, value in shared.pairs.items():
            row[f"shared failures {pair}"] = f"{value:.2f}" if np.isfinite(value) else "— (neither fails)"
        rows.append(row)
    return rows


#: Under the ensemble's tables, in the HTML report and on the dashboard.
ENSEMBLE_NOTE = (
    "Every model is measured on the same scans under the same attack, crafted on each member alone and "
    "on the whole ensemble, run in full; a scan counts as robust only if the model is right on it clean "
    "and attacked. An ensemble is only as strong as the attack on the whole ensemble: a transfer from a "
    "member understates the threat. A majority vote has no gradient: it is attacked through a "
    "differentiable surrogate, the soft vote (the members' mean softmax probabilities, straight-through), "
    "and its figure is that surrogate attack's. 'Shared failures' of a pair is the share of the scans "
    "either member fails on that both fail on (Jaccard): near 1, the members fail together and the "
    "ensemble adds little; near 0, their failures differ."
)
