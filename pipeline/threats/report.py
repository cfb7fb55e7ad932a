"""Saving a threat's result: ``result.json`` (everything, what the dashboard reads back) and a
self-contained ``report.html`` (tables with 95% intervals, plotly figures with plotly.js inlined once),
in the job's folder, beside the models it trained.

Synthetic data carries a banner at the top and the bottom of the page and a mark in every figure's title.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Final, Union

import plotly.graph_objects as go
import plotly.offline

from pipeline.constants import SYNTHETIC_BANNER
from pipeline.errors import CheckpointError, UserInputError
from pipeline.evaluation.intervals import Interval, percent_text
from pipeline.evaluation.report import STYLE, jsonable
from pipeline.json_object import parse_json_object
from pipeline.store import atomic_write_bytes
from pipeline.threats import extraction, membership
from pipeline.threats.extraction import ExtractionResult
from pipeline.threats.figures import agreement_curve, auc_bars, roc_curves, transfer_curve
from pipeline.threats.membership import ATTACKS, MembershipResult
from pipeline.threats.roc import FPR_TARGETS

ThreatResult = Union[ExtractionResult, MembershipResult]
FILES: Final[dict[str, str]] = {"json": "result.json", "html": "report.html"}
EXTRACTION_NOTE: Final[str] = (
    "The attacker sends the victim scans of their own (here phantom scans of another seed than the victim's, "
    "standing in for public data) and trains a surrogate by the lab's training loop on the answers alone "
    "(Tramèr et al. 2016, https://arxiv.org/abs/1609.02943). Agreement is over the victim's held-out test scans; "
    "attack success is over the test scans the victim classifies correctly, the attack crafted on the surrogate "
    "with white-box access to it and replayed on the victim (Papernot et al. 2017, "
    "https://arxiv.org/abs/1602.02697). White-box: the same attack with the victim's own weights, what a "
    "stolen copy can at best approach. Random noise of the same L∞ budget is chance."
)
MEMBERSHIP_NOTE: Final[str] = (
    "Members are scans of the target's training split; non-members as many of its test split, leaving out any "
    "test scan related to a training scan (a duplicate, a near-duplicate, a neighbouring slice, the same "
    "patient). Shadow models are trained by the lab's training loop with the target's own settings on phantom "
    "scans of another seed, none of them a candidate (LiRA's offline variant, Carlini et al. 2022, "
    "https://arxiv.org/abs/2112.03570). Loss threshold: Yeom et al. 2018 (https://arxiv.org/abs/1709.01604); "
    "confidence threshold: Salem et al. 2019 (https://arxiv.org/abs/1806.01246). Adversarial training is known to "
    "raise the risk (Song et al. 2019, https://arxiv.org/abs/1905.10291). Intervals: percentile bootstrap over the "
    "candidates (over their groups where the split grouped related scans). With n non-members no false-positive "
    "rate between 0 and 1/n can be observed: a TPR at a lower rate is the TPR at zero false positives."
)


def save_result(result: ThreatResult, out_dir: Path | str) -> dict[str, Path]:
    """Write ``result.json`` and ``report.html`` into ``out_dir`` (created); returns their paths.

    Raises :class:`UserInputError` when the folder cannot be written."""
    out_dir = Path(out_dir)
    paths = {kind: out_dir / name for kind, name in FILES.items()}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(paths["json"], json.dumps(jsonable(result.to_dict()), indent=1).encode())
        atomic_write_bytes(paths["html"], report_html(result).encode())
        for path in paths.values():
            path.chmod(0o644)  # reports are for reading and sharing
    except OSError as error:
        raise UserInputError(
            f"cannot write the results to {out_dir} ({error.strerror or error}); choose a folder you can write to"
        ) from error
    return paths


def read_result(path: Path | str) -> ThreatResult:
    """The extraction or membership result a ``result.json`` holds; :class:`CheckpointError` when it is
    unreadable or of another kind."""
    path = Path(path)
    try:
        data = parse_json_object(path.read_bytes(), f"{path.name} in {path.parent}")
        kind = data.get("kind")
        if kind == extraction.KIND:
            return ExtractionResult.from_dict(data)
        if kind == membership.KIND:
            return MembershipResult.from_dict(data)
        raise ValueError(f"unknown kind {kind!r}")
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable threat result ({error}); run the threat again") from None


def summary_lines(result: ThreatResult) -> list[str]:
    """The result in a few plain lines (what the command line prints)."""
    lines = [SYNTHETIC_BANNER.upper()] if result.synthetic else []
    if isinstance(result, ExtractionResult):
        lines.append(
            f"victim {result.victim}: accuracy {result.victim_accuracy.format()} on {result.scans} test scans; "
            f"{result.attack_label}: white-box success {result.white_box.format()}, random noise "
            f"{result.noise.format()}"
        )
        for s in result.surrogates:
            lines.append(
                f"  {s.queries:>6} queries: agreement {s.agreement.format():<22} transfer success "
                f"{s.transfer.format():<22} surrogate accuracy {s.accuracy.format()}  ({s.seconds:.0f} s)"
            )
        return lines
    for target in result.targets:
        lines.append(
            f"{target.name}: accuracy on members {target.member_accuracy.format()}, on non-members "
            f"{target.non_member_accuracy.format()}; {len(target.shadows)} shadow models ({target.variance} variance)"
        )
        for key, summary in target.attacks.items():
            rates = ", ".join(f"TPR at {fpr:.1%} FPR {interval.format()}" for fpr, interval in summary.tpr.items())
            lines.append(f"  {ATTACKS[key][0]:<22} AUC {auc_text(summary.auc)}; {rates}")
    return lines


def auc_text(interval: Interval) -> str:
    """``0.84 (95% CI 0.73–0.93)``: an AUC is read as a number between 0 and 1, not a share."""
    if not math.isfinite(interval.estimate):
        return "—"
    return f"{interval.estimate:.2f} (95% CI {interval.low:.2f}–{interval.high:.2f})"


# ------------------------------------------------------------------------------------ HTML
def report_html(result: ThreatResult) -> str:
    """The result as one HTML document that needs no network: plotly.js is inlined exactly once."""
    title = "Model extraction" if isinstance(result, ExtractionResult) else "Membership inference"
    parts = [
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_e(title)}</title><style>{STYLE}</style>",
        f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script></head><body>",
    ]
    banner = [f"<div class='banner'>{_e(SYNTHETIC_BANNER)}</div>"] if result.synthetic else []
    parts += banner
    parts += extraction_section(result) if isinstance(result, ExtractionResult) else membership_section(result)
    parts += banner
    parts.append("</body></html>\n")
    return "\n".join(parts)


def extraction_section(result: ExtractionResult) -> list[str]:
    """The extraction's part of a report: what the attacker had, a row per budget, the two figures."""
    settings = result.settings
    rows = "".join(
        f"<tr><td>{s.queries}</td><td>{_ci(s.agreement)}</td><td>{_ci(s.transfer)}</td><td>{_ci(s.accuracy)}</td>"
        f"<td>{s.seconds:.0f}</td></tr>"
        for s in result.surrogates
    )
    references = (
        f"<tr class='ref'><td class='l'>white-box (the victim's own weights)</td><td></td>"
        f"<td>{_ci(result.white_box)}</td><td></td><td></td></tr>"
        f"<tr class='ref'><td class='l'>random ±ε noise (chance)</td><td></td><td>{_ci(result.noise)}</td>"
        "<td></td><td></td></tr>"
    )
    return [
        f"<h1>Model extraction of {_e(result.victim)}</h1>",
        f"<p>{result.scans} held-out test scans of the victim ({_e(result.victim_info.get('arch'))}, "
        f"{_e(result.victim_info.get('strategy'))} training), which classifies {_ci(result.victim_accuracy)} of them "
        f"correctly. The victim answers with {_e(settings.get('answers'))}; each surrogate is a "
        f"{_e(settings.get('arch'))} trained {settings.get('epochs')} epochs on the answers to its queries. "
        f"Attack: {_e(result.attack_label)}. {_e(result.created)}; {result.seconds:.0f} s.</p>",
        "<table><tr><th>queries</th><th>agreement with the victim</th><th>transfer success</th>"
        f"<th>surrogate's accuracy</th><th>training (s)</th></tr>{rows}{references}</table>",
        f"<p class='note'>{_e(EXTRACTION_NOTE)}</p>",
        _plot(agreement_curve(result)),
        _plot(transfer_curve(result)),
    ]


def membership_section(result: MembershipResult) -> list[str]:
    """The membership part of a report: a table per target, the AUC bars and the ROC curves."""
    settings = result.settings
    header = "".join(f"<th>TPR at {fpr:.1%} FPR</th>" for fpr in FPR_TARGETS)
    parts = [
        "<h1>Membership inference</h1>",
        f"<p>Targets: {', '.join(_e(t.name) for t in result.targets)}; {settings.get('shadows')} shadow models "
        f"each; {_e(result.created)}; {result.seconds:.0f} s.</p>",
    ]
    for target in result.targets:
        info = target.info
        floor = target.attacks["loss"].fpr_floor
        rows = "".join(
            f"<tr><td class='l'>{_e(ATTACKS[key][0])} <span class='ci'>({_e(ATTACKS[key][1])})</span></td>"
            f"<td>{_e(auc_text(summary.auc))}</td>"
            + "".join(f"<td>{_ci(summary.tpr[fpr])}</td>" for fpr in FPR_TARGETS)
            + "</tr>"
            for key, summary in target.attacks.items()
        )
        parts += [
            f"<h2>{_e(target.name)}</h2>",
            f"<p>{_e(info.get('arch'))}, {_e(info.get('strategy'))} training (ε {_e(info.get('training_eps'))}), "
            f"{info.get('epochs')} epochs on {info.get('training_scans')} scans. Candidates: "
            f"{target.attacks['loss'].members} members and {target.attacks['loss'].non_members} non-members; accuracy "
            f"on members {_ci(target.member_accuracy)}, on non-members {_ci(target.non_member_accuracy)} (the gap is "
            f"how much it overfits). {len(target.shadows)} shadow models of {target.shadow_epochs} epochs, "
            f"{_e(target.variance)} variance.</p>",
            f"<table><tr><th class='l'>attack</th><th>ROC AUC</th>{header}</tr>{rows}</table>",
            f"<p class='note'>The lowest false-positive rate {target.attacks['loss'].non_members} non-members can show "
            f"is {percent_text(floor, 1)}%.</p>",
        ]
    parts += [
        f"<p class='note'>{_e(MEMBERSHIP_NOTE)}</p>",
        _plot(auc_bars(result)),
        _plot(roc_curves(result)),
    ]
    return parts


def _e(text: Any) -> str:
    return html.escape(str(text))


def _ci(interval: Interval) -> str:
    """A share with its 95% interval, the interval in a quieter tone."""
    text = interval.format()
    if "(" not in text:
        return _e(text)
    value, bounds = text.split(" (", 1)
    return f"{_e(value)} <span class='ci'>({_e(bounds)}</span>"


def _plot(figure: go.Figure) -> str:
    """A figure as a fragment of the page; plotly.js itself is inlined once, in the head."""
    return figure.to_html(full_html=False, include_plotlyjs=False)

