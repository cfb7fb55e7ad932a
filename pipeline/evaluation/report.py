"""Saving an evaluation: ``report.json`` (everything), ``report.csv`` (one row per figure) and a
self-contained ``report.html`` (tables, plotly figures with plotly.js inlined once, example scans
as embedded PNGs) that opens offline and can be mailed as one file.

Synthetic data carries a banner in every format; the reference study's figures are always
labelled as reported by the study, obtained with weak attacks.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import cv2
import numpy as np
import plotly.graph_objects as go
import plotly.offline

from pipeline.attacks import attack_class
from pipeline.constants import CLASSES, GREY_LEVEL, SYNTHETIC_BANNER
from pipeline.errors import UserInputError
from pipeline.evaluation import figures
from pipeline.evaluation.defenses import DefenseResult
from pipeline.evaluation.ensemble import (
    ACCURACY_COLUMNS,
    ENSEMBLE_NOTE,
    EnsembleResult,
    accuracy_rows,
    shared_rows,
)
from pipeline.evaluation.detectors import (
    CONDITIONS,
    DETECTOR_COLUMNS,
    DETECTOR_NOTE,
    detection_sentence,
    detector_table,
)
from pipeline.evaluation.reference import (
    COLUMN_LABELS,
    COLUMNS,
    REFERENCE_CAVEAT,
    REFERENCE_SOURCE,
    REFERENCE_STUDY,
    STUDY_COLUMNS,
    ReferenceRow,
    ReferenceTable,
)
from pipeline.evaluation.calibration import CONFIDENT
from pipeline.evaluation.corruption import SEVERITIES
from pipeline.evaluation.intervals import Interval, percent_text
from pipeline.evaluation.robustness import AttackResult, Example, Outcome
from pipeline.evaluation.strength import StrengthCheck
from pipeline.evaluation.suite import EvaluationSuite, ModelEvaluation, SuiteSettings
from pipeline.evaluation.verdict import VERDICT_COLUMNS, VERDICT_NOTE, verdict_table
from pipeline.json_object import parse_json_object
from pipeline.store import atomic_write_bytes
from pipeline.units import format_epsilon, format_share, share_decimals

FILES = {"json": "report.json", "csv": "report.csv", "html": "report.html"}
#: Above a report of an evaluation that has not finished all its sections (still running, or stopped).
INCOMPLETE = (
    "Incomplete: this evaluation is still running or stopped before its end (cancelled or failed); only "
    "the sections that finished are shown."
)
OURS = "this evaluation"


def save_report(suite: EvaluationSuite, out_dir: Path | str) -> dict[str, Path]:
    """Write the three files side by side in ``out_dir`` (created); returns their paths."""
    out_dir = Path(out_dir)
    paths = {kind: out_dir / name for kind, name in FILES.items()}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(paths["json"], report_json(suite).encode())
        atomic_write_bytes(paths["csv"], report_csv(suite).encode())
        atomic_write_bytes(paths["html"], report_html(suite).encode())
        for path in paths.values():
            path.chmod(0o644)  # reports are for reading and sharing, unlike a run's private temporaries
    except OSError as error:
        raise UserInputError(
            f"cannot write the reports to {out_dir} ({error.strerror or error}); choose a folder you can "
            "write to (--out)"
        ) from error
    return paths


# ------------------------------------------------------------------------------------ JSON
def jsonable(value: Any) -> Any:
    """Plain JSON values: NaN and infinities become null, numpy scalars and arrays plain numbers."""
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def report_json(suite: EvaluationSuite) -> str:
    return json.dumps(jsonable(suite.to_dict()), indent=1, allow_nan=False, ensure_ascii=False) + "\n"


def read_report(path: Path | str) -> dict[str, Any]:
    """A saved ``report.json`` in the current layout; a damaged file raises :class:`UserInputError`.

    Reports written before the attack names were made one-to-one keyed our reference tables'
    CW-L∞ column ``cw`` (now the registry's CW-L2); they are read with that column as ``cw-linf``.
    """
    path = Path(path)
    report = parse_json_object(path.read_bytes(), f"{path.name} in {path.parent}", error=UserInputError)
    for table in report.get("reference_tables") or []:
        if "cw" in table.get("columns", []):
            table["columns"] = ["cw-linf" if column == "cw" else column for column in table["columns"]]
            for row in table.get("rows", []):
                row["cw-linf"] = row.pop("cw", None)
    return report


# ------------------------------------------------------------------------------------- CSV
CSV_FIELDS = (
    "source",
    "synthetic",
    "model",
    "eps",
    "eps_label",
    "attack",
    "accuracy",
    "success_rate",
    "attacked",
    "fooled",
    "linf_mean",
    "linf_median",
    "l2_mean",
    "l2_median",
    "psnr_mean",
    "ssim_mean",
    "seconds",
    *(f"recall_{name}" for name in CLASSES),
    "strength_verdict",
    "trained_classifier",
    # 95% intervals of the figures above (see pipeline.evaluation.intervals)
    "accuracy_low",
    "accuracy_high",
    "success_rate_low",
    "success_rate_high",
    *(f"recall_{name}_{end}" for name in CLASSES for end in ("low", "high")),
    "interval_method",
    # the sections beyond accuracy: one figure per row, its interval and, for comparisons, the test
    "section",
    "figure",
    "value",
    "value_low",
    "value_high",
    "p_value",
)


def report_csv(suite: EvaluationSuite) -> str:
    """One row per figure: per (model, attack) clean, each attack, the worst case per epsilon (each
    with its 95% interval), then calibration, corruptions, faithfulness and paired comparisons
    (``section``, ``figure``, ``value`` and its interval), then the study's rows."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in _csv_rows(suite):
        writer.writerow({key: _csv_value(value) for key, value in row.items()})
    return buffer.getvalue()


def _csv_rows(suite: EvaluationSuite) -> Iterable[dict[str, Any]]:
    for model in suite.models:
        trained = model.report.trained
        base = {
            "source": OURS,
            "synthetic": suite.synthetic,
            "model": model.name,
            "trained_classifier": trained.reason if trained.flagged else "yes",
        }
        clean = model.report.clean
        yield {
            **base,
            "section": "robustness",
            "attack": "clean",
            "accuracy": clean.accuracy,
            **_recalls(clean),
            "seconds": model.report.clean_seconds,
        }
        for result in model.report.attacks:
            check = model.strength_at(result.spec.eps) if result.spec.eps is not None else None
            success = result.success_interval
            yield {
                **base,
                **_eps(result.spec.eps),
                "section": "robustness",
                "attack": result.label,
                "accuracy": result.accuracy,
                "success_rate": result.success_rate,
                "success_rate_low": success.low,
                "success_rate_high": success.high,
                "attacked": int(result.clean_correct.sum()),
                "fooled": int(result.fooled.sum()),
                **result.size_summary(),
                "seconds": result.seconds,
                **_recalls(result.outcome),
                "strength_verdict": check.verdict if check else None,
            }
        for combined in model.report.combined:
            yield {
                **base,
                **_eps(combined.eps),
                "section": "robustness",
                "attack": "worst case over: " + " + ".join(combined.attacks),
                "accuracy": combined.accuracy,
                **_recalls(combined.outcome),
            }
        for check in model.strength:
            yield {
                **base,
                **_eps(check.eps),
                "section": "robustness",
                "attack": f"worst case over all attacks incl. strength checks ({check.scans} scans)",
                "accuracy": check.worst_case.accuracy,
                **_recalls(check.worst_case.outcome),
                "strength_verdict": check.verdict,
            }
        yield from _section_rows(model, base)
    for verdict in suite.verdicts:  # the defence verdict table: naive and adaptive, which to believe
        for side, accuracy, attack in (
            ("naive", verdict.naive, verdict.naive_attack),
            ("adaptive", verdict.adaptive, verdict.adaptive_attack),
        ):
            yield {
                "source": OURS,
                "synthetic": suite.synthetic,
                "model": verdict.model,
                **_eps(verdict.eps),
                "section": "defence verdict",
                "figure": f"{verdict.defense or 'no defence'}: {side} attack",
                "attack": attack,
                "accuracy": accuracy,
                "strength_verdict": verdict.believe,
            }
    for model in suite.models:  # an ensemble: each member, each transfer, the whole, shared failures
        result = model.ensemble
        if result is None:
            continue
        base = {"source": OURS, "synthetic": suite.synthetic, "model": model.name, **_eps(result.attack.eps),
                "section": "ensemble", "attack": result.attack.title}
        for label, interval in result.intervals().items():
            yield {**base, "figure": f"robust accuracy: {label}", **_value(interval)}
        for shared in result.shared_failures():
            for key, words in (("all_fail", "all members wrong"), ("any_fail", "any member wrong")):
                yield {**base, "attack": shared.condition, "figure": f"share of scans, {words}",
                       "value": getattr(shared, key)}
            for pair, value in shared.pairs.items():
                yield {**base, "attack": shared.condition, "figure": f"shared failures (Jaccard) {pair}",
                       "value": value}
    for comparison in suite.comparisons:
        yield {
            "source": OURS,
            "synthetic": suite.synthetic,
            "model": f"{comparison.second} − {comparison.first}",
            "section": "comparison",
            "attack": comparison.condition,
            "figure": "difference in accuracy",
            **_value(comparison.difference),
            "p_value": comparison.p_value,
        }
    for name, values in REFERENCE_STUDY.items():
        for column, value in zip(STUDY_COLUMNS, values):
            yield {
                "source": REFERENCE_SOURCE,
                "synthetic": False,
                "model": f"reference study: {name}",
                "attack": column,
                "accuracy": value / 100,
                "eps_label": "not stated",
            }


def _section_rows(model: ModelEvaluation, base: dict[str, Any]) -> Iterable[dict[str, Any]]:
    """Calibration, corruption and faithfulness figures of one model, one row each."""
    for result in model.calibration:
        row = {**base, "section": "calibration", "attack": result.condition}
        yield {**row, "figure": "expected calibration error", "value": result.ece}
        yield {**row, "figure": "mean confidence", "value": result.mean_confidence}
        yield {**row, "figure": "mean confidence of wrong answers", "value": result.wrong_confidence}
        wrong = result.confidently_wrong
        yield {**row, "figure": f"share confidently wrong (>= {CONFIDENT:.0%})", **_value(wrong)}
    if model.corruption is not None:
        report = model.corruption
        for c, name in enumerate(report.corruptions):
            row = {**base, "section": "corruption", "attack": name}
            for s, severity in enumerate(SEVERITIES):
                error = report.error_interval(c, s)
                yield {**row, "figure": f"error at severity {severity}", **_value(error)}
            yield {**row, "figure": "mean error over severities", **_value(report.mean_error_interval(c))}
    if model.corruption_errors is not None:
        errors = model.corruption_errors
        row = {**base, "section": "corruption error", "attack": f"relative to {errors.baseline}"}
        for name, ce, relative in zip(errors.corruptions, errors.ce, errors.relative_ce):
            yield {**row, "figure": f"CE {name}", **_value(ce)}
            yield {**row, "figure": f"relative CE {name}", **_value(relative)}
        yield {**row, "figure": "mCE", **_value(errors.mce)}
        yield {**row, "figure": "relative mCE", **_value(errors.relative_mce)}
    if model.faithfulness is not None:
        faithful = model.faithfulness
        for side in (faithful.clean, faithful.attacked):
            row = {**base, "section": "faithfulness", "attack": side.condition}
            figure = f"ROAD score of {faithful.method} maps ({faithful.layer})"
            yield {**row, "figure": figure, **_value(side.mean)}
        yield {
            **base,
            "section": "faithfulness",
            "attack": faithful.attacked.condition,
            "figure": "ROAD change, attacked minus clean",
            **_value(faithful.change),
        }
    for detector in model.detectors:
        row = {**base, **_eps(detector.eps), "section": "detector", "attack": detector.name}
        yield {**row, "figure": "false positives on clean scans", **_value(detector.false_positives)}
        for condition, attack in zip(CONDITIONS[1:], (detector.attack, detector.adaptive_attack)):
            yield {**row, "figure": f"detection rate, {attack}", **_value(detector.detection(condition))}
            yield {**row, "figure": f"wrong and undetected, {attack}", **_value(detector.missed(condition))}


def _value(interval: Interval) -> dict[str, Any]:
    return {"value": interval.estimate, "value_low": interval.low, "value_high": interval.high,
            "interval_method": interval.method}


def _eps(eps: Optional[float]) -> dict[str, Any]:
    return {"eps": eps, "eps_label": format_epsilon(eps)}


def _recalls(outcome: Outcome) -> dict[str, Any]:
    """Recall per class, and the accuracy's and each recall's 95% interval."""
    accuracy = outcome.accuracy_interval
    values: dict[str, Any] = {
        "accuracy_low": accuracy.low,
        "accuracy_high": accuracy.high,
        "interval_method": accuracy.method,
    }
    for name, value, interval in zip(CLASSES, outcome.recall, outcome.recall_intervals):
        values[f"recall_{name}"] = value
        values[f"recall_{name}_low"], values[f"recall_{name}_high"] = interval.low, interval.high
    return values


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    return "" if value is None else value


# ------------------------------------------------------------------------------------ HTML
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
color:#1d2b36;padding:0 1em}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #d5dde3;padding-bottom:.2em}h3{margin-top:1.4em}
table{border-collapse:collapse;margin:.6em 0 1em}
td,th{border:1px solid #d5dde3;padding:.25em .6em;text-align:right}
th{background:#f1f5f8}td.l,th.l{text-align:left}tr.ref td{color:#6b7780;font-style:italic}
.banner{background:#b2432f;color:#fff;font-weight:700;font-size:1.2em;padding:.6em 1em;border-radius:4px;
text-transform:uppercase;letter-spacing:.03em}
.flag{color:#b2432f;font-weight:600}.ok{color:#3f7f3f}.note{color:#4f5f6b;font-size:.92em;max-width:70em}
.examples{display:flex;flex-wrap:wrap;gap:1.2em}.examples figure{margin:0}.examples img{width:160px;
image-rendering:pixelated;border:1px solid #d5dde3}figcaption{font-size:.85em;max-width:500px}
.cm{display:inline-block;margin-right:1.2em;vertical-align:top}.cm table{font-size:.85em}
.ci{color:#6b7780;font-size:.85em;white-space:nowrap}
"""


def report_html(suite: EvaluationSuite) -> str:
    """The report as one HTML document that needs no network: plotly.js is inlined exactly once."""
    parts = [
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>",
        f"<title>Robustness evaluation — {_e(suite.dataset)}</title><style>{STYLE}</style>",
        f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script></head><body>",
    ]
    if suite.synthetic:
        parts.append(f"<div class='banner'>{_e(SYNTHETIC_BANNER)}</div>")
    if not suite.complete:
        parts.append(f"<div class='banner'>{_e(stopped_note(suite.stopped))}</div>")
    parts += _summary(suite)
    for table in suite.tables:
        parts += _reference_table(table, suite.settings)
    parts += _verdicts(suite)
    parts += _ensembles(suite)
    parts += _detectors(suite)
    parts += _comparisons(suite)
    parts += _figures(suite)
    parts += _calibration(suite)
    parts += _corruptions(suite)
    parts += _faithfulness(suite)
    for model in suite.models:
        parts += _model_section(model)
    parts += _timing(suite)
    if suite.synthetic:
        parts.append(f"<div class='banner'>{_e(SYNTHETIC_BANNER)}</div>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _e(text: Any) -> str:
    return html.escape(str(text))


def _ci(interval: Interval, digits: Optional[int] = None, *, unit: str = "%") -> str:
    """A share with its 95% interval: ``43% (35–51)``, the interval in a quieter tone. Values are shown
    in hundredths, as precise as the scans behind them allow (:func:`pipeline.units.share_decimals`)
    unless ``digits`` is given; ``unit`` follows the figure ("%" for shares, "" otherwise)."""
    if not math.isfinite(interval.estimate):
        return "—"
    digits = share_decimals(interval.scans) if digits is None else digits
    estimate, low, high = (percent_text(v, digits) for v in (interval.estimate, interval.low, interval.high))
    return f"{estimate}{unit} <span class='ci'>({low} to {high})</span>"


def _cell(row: ReferenceRow, column: str) -> str:
    """One figure of a reference table's row, with its interval where the row has one."""
    if column in row.intervals:
        return _ci(row.intervals[column])
    return format_share(row.values[column], row.scans)


def _plot(figure: go.Figure) -> str:
    """A figure as a fragment of the page; plotly.js itself is inlined once, in the head."""
    return figure.to_html(full_html=False, include_plotlyjs=False)


def _num(value: Optional[float], digits: int = 3) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def _summary(suite: EvaluationSuite) -> list[str]:
    settings = suite.settings
    return [
        f"<h1>Adversarial robustness evaluation</h1><p>{suite.indices.size} {_e(suite.split)} scans of "
        f"<b>{_e(suite.dataset)}</b>; models: {', '.join(_e(m.name) for m in suite.models)}; device "
        f"{_e(suite.device)}{_e(processes_note(suite.processes))}; {_e(suite.created)}; "
        f"{suite.seconds:.0f} s.</p>",
        "<p class='note'>Epsilons are L∞ budgets on scans in [0, 1], shown as grey levels k/255: "
        f"{', '.join(format_epsilon(e) for e in settings.epsilons)}. Attacks: "
        f"{_e(', '.join(settings.attacks))} ({settings.steps} steps for the iterative ones; CW-L∞ is the "
        "Carlini-Wagner margin loss inside the same L∞ ball, the study's CW-L2 had no bound). Only scans "
        "the model classifies correctly are attacked; accuracy under attack counts the others as errors, and the success rate is over the "
        "correctly classified scans. Perturbation sizes, PSNR and SSIM are over the adversarial examples "
        f"that succeeded{_early_stop_note(settings)}. A robust accuracy from attacks is an upper bound: the "
        "strength checks beside each figure say how far to trust it.</p>",
        f"<p class='note'>{_e(interval_note(suite))}</p>",
        f"<p class='note'>{_e(strength_note(settings))}</p>" if settings.strength else "",
    ]


def _early_stop_note(settings: SuiteSettings) -> str:
    if not settings.early_stop:
        return ""
    return (
        " (each attack stops on a scan once it is fooled, so these are the sizes of the first fooling "
        "step, and accuracies are what they would be without stopping)"
    )


def stopped_note(stopped: Optional[str]) -> str:
    """The banner of an incomplete report, with why it stopped when that is known."""
    return f"{INCOMPLETE} Stopped: {stopped}." if stopped else INCOMPLETE


def processes_note(processes: int) -> str:
    """How the scans were shared among torchrun's processes; empty for one process."""
    if processes <= 1:
        return ""
    return (
        f", the scans shared by {processes} processes (torchrun; every figure as one process gives it, "
        "the faithfulness check on the first process alone, attack times summed over all)"
    )


def interval_note(suite: EvaluationSuite) -> str:
    """How the intervals were made, in one sentence."""
    unit = (
        f"resampling the {suite.groups} groups of related scans (slices of one patient, near-duplicates) "
        "that the grouped split found, since such scans are not independent"
        if suite.groups is not None
        else "Wilson score intervals (bootstrap for ratios and means), the scans counted as independent"
    )
    return (
        f"Every figure in brackets is a 95% interval: {unit}. On {suite.indices.size} scans a difference "
        "between two models is only a difference when its interval excludes zero (see the paired comparison)."
    )


def strength_note(settings: SuiteSettings) -> str:
    """Which strength the checks ran at, and how to run them at full strength."""
    strength = settings.strength_settings
    where = "every epsilon" if strength.every_epsilon else f"ε={format_epsilon(max(settings.epsilons))} only"
    scans = (
        "every scan"
        if not strength.scans
        else f"at most {strength.scans} scans, classes in turn (the transfer matrix too)"
    )
    return (
        f"Strength checks at the {strength.level} level: PGD {strength.strong_steps} steps ×"
        f"{strength.strong_restarts}, APGD {strength.ensemble_steps} steps, Square {strength.square_queries} "
        f"queries, at {where}, on {scans}."
        + (
            " The full level (--strength-level full, or 'full' on the Evaluate page) runs the literature's "
            "settings at every epsilon on every scan, for a GPU or a figure to publish."
            if strength.level != "full"
            else ""
        )
    )


def _reference_table(table: ReferenceTable, settings: SuiteSettings) -> list[str]:
    header = (
        "<tr><th class='l'>model</th>"
        + "".join(f"<th>{_e(COLUMN_LABELS[c])}</th>" for c in COLUMNS)
        + "<th>worst case, all attacks</th><th class='l'>strength checks</th></tr>"
    )
    study_header = (
        "<tr><th class='l'>model</th>"
        + "".join(f"<th>{_e(COLUMN_LABELS[c])}</th>" for c in STUDY_COLUMNS)
        + "<th>worst case, all attacks</th><th class='l'>strength checks</th></tr>"
    )
    rows = []
    for row in table.rows:
        check = row.strength
        verdict = (
            f"<span class='{'flag' if check.flagged else 'ok'}'>{_e(check.verdict)}</span>"
            "<ul>" + "".join(_check_item(c) for c in check.checks) + "</ul>"
            if check
            else _not_checked(table.eps, settings)
        )
        if row.trained is not None and row.trained.flagged and not (check and check.degenerate):
            verdict = f"<span class='flag'>{_e(row.trained.reason)}</span><br>{verdict}"
        worst = "—"
        if check is not None:
            worst = _ci(check.worst_case.outcome.accuracy_interval)
            if check.scans != row.scans:
                worst += f"<br><span class='ci'>on the {check.scans} scans of the checks</span>"
        rows.append(
            f"<tr><td class='l'>{_e(row.model)}</td>"
            + "".join(f"<td>{_cell(row, column)}</td>" for column in COLUMNS)
            + f"<td>{worst}</td><td class='l'>{verdict}</td></tr>"
        )
    reference = [
        f"<tr class='ref'><td class='l'>{_e(name)}</td>"
        + "".join(f"<td>{v:.2f}%</td>" for v in values)
        + "<td>—</td><td class='l'>not reproducible</td></tr>"
        for name, values in REFERENCE_STUDY.items()
    ]
    return [
        f"<h2>Reference table at ε = {format_epsilon(table.eps)}</h2>",
        f"<table>{header}{''.join(rows)}</table>",
        f"<h3>For comparison: {_e(REFERENCE_SOURCE)}</h3><table>{study_header}{''.join(reference)}</table>",
        f"<p class='note'>{_e(REFERENCE_CAVEAT)}</p>",
    ]


def _not_checked(eps: float, settings: SuiteSettings) -> str:
    """Why a row has no strength checks at this epsilon."""
    if settings.strength and not settings.strength_settings.every_epsilon and eps < max(settings.epsilons):
        level = settings.strength_settings.level
        return f"checked at ε={format_epsilon(max(settings.epsilons))} only ({level} level)"
    return "not run"


def _check_item(check: StrengthCheck) -> str:
    """A check's numbers; its explanation in full when it failed, as a tooltip when it passed."""
    if check.flagged:
        return (
            f"<li class='flag'>{_e(check.title)}: {_e(check.detail)}<br><span "
            f"class='note'>{_e(check.explanation)}</span></li>"
        )
    return f"<li class='ok' title='{_e(check.explanation)}'>{_e(check.title)}: {_e(check.detail)}</li>"


def _figures(suite: EvaluationSuite) -> list[str]:
    shown: list[go.Figure] = []
    if len(suite.settings.epsilons) > 1:
        shown.append(figures.epsilon_curves([model.sweep for model in suite.models]))
    strength = [check for model in suite.models for check in model.strength]
    if strength:
        shown.append(figures.strength_ladder(strength))
    if suite.transfer is not None:
        shown.append(figures.transfer_heatmap(suite.transfer))
    minimal = [model.minimal for model in suite.models if model.minimal is not None]
    if minimal:
        shown.append(figures.minimal_epsilon_histogram(minimal))
    certified = [(model.name, model.certified) for model in suite.models if model.certified is not None]
    if certified:
        shown.append(figures.certified_curves(certified))
    if suite.comparisons:
        shown.append(figures.comparison_forest(suite.comparisons))
    if not shown:
        return []
    return ["<h2>Figures</h2>"] + [
        _plot(figure) for figure in shown
    ]


def _verdicts(suite: EvaluationSuite) -> list[str]:
    """The defence verdict table: each defence's naive and adaptive figures and which to believe."""
    if not suite.verdicts:
        return []
    rows = verdict_table([verdict.to_dict() for verdict in suite.verdicts])
    header = "".join(f"<th class='l'>{_e(name)}</th>" for name in VERDICT_COLUMNS)
    body = "".join(
        f"<tr class='{'flag' if verdict.masking else ''}'>"
        + "".join(f"<td class='l'>{_e(row[name])}</td>" for name in VERDICT_COLUMNS)
        + "</tr>"
        for verdict, row in zip(suite.verdicts, rows)
    )
    eps = format_epsilon(suite.verdicts[0].eps)
    return [
        f"<h2>Defence verdicts at ε={_e(eps)}</h2>",
        f"<table class='verdicts'><tr>{header}</tr>{body}</table>",
        f"<p class='note'>{_e(VERDICT_NOTE)}</p>",
    ]


def _ensembles(suite: EvaluationSuite) -> list[str]:
    """Each ensemble's members and whole under one attack, and how often the members fail together."""
    parts = []
    for model in suite.models:
        result = model.ensemble
        if result is None:
            continue
        shared = shared_rows(result)
        parts += [
            f"<h2>Ensemble: {_e(result.defense)}</h2>",
            f"<p>{_e(result.sentence())}</p>",
            _table(ACCURACY_COLUMNS, accuracy_rows(result)),
            _plot(figures.ensemble_accuracies(result)),
            "<h3>How often the members fail on the same scans</h3>",
            _table(list(shared[0]), shared),
            _plot(figures.shared_failures(result)),
            f"<p class='note'>{_e(ENSEMBLE_NOTE)}</p>",
        ]
    return parts


def _table(columns: Sequence[str], rows: Sequence[Mapping[str, str]]) -> str:
    """A table of already formatted display rows (text), every cell escaped."""
    header = "".join(f"<th class='l'>{_e(name)}</th>" for name in columns)
    body = "".join(
        "<tr>" + "".join(f"<td class='l'>{_e(row[name])}</td>" for name in columns) + "</tr>" for row in rows
    )
    return f"<table><tr>{header}</tr>{body}</table>"


def _detectors(suite: EvaluationSuite) -> list[str]:
    """Each detector of each model: false positives, detection of PGD and of its adaptive attack, and
    the wrong answers let through, with a sentence each."""
    saved = [{"name": m.name, "detectors": [d.to_dict() for d in m.detectors]} for m in suite.models]
    rows = detector_table(saved)
    if not rows:
        return []
    header = "".join(f"<th class='l'>{_e(name)}</th>" for name in DETECTOR_COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td class='l'>{_e(row[name])}</td>" for name in DETECTOR_COLUMNS) + "</tr>"
        for row in rows
    )
    sentences = "".join(
        f"<li>{_e(entry['name'])}: {_e(detection_sentence(d))}</li>"
        for entry in saved
        for d in entry["detectors"]
    )
    eps = format_epsilon(next(d.eps for m in suite.models for d in m.detectors))
    return [
        f"<h2>Adversarial-example detectors at ε={_e(eps)}</h2>",
        f"<table class='verdicts'><tr>{header}</tr>{body}</table><ul>{sentences}</ul>",
        f"<p class='note'>{_e(DETECTOR_NOTE)}</p>",
    ]


def _comparisons(suite: EvaluationSuite) -> list[str]:
    """Each model against the baseline on the same scans, in plain words."""
    if not suite.comparisons:
        return []
    items = "".join(
        f"<li class='{'flag' if c.clear else ''}'>{_e(c.sentence)}</li>" for c in suite.comparisons
    )
    return [
        f"<h2>Paired comparison with {_e(suite.baseline)}</h2>",
        f"<ul>{items}</ul>",
        "<p class='note'>Both models answered the same scans, so each difference is tested scan by scan: "
        "only the scans one model gets right and the other wrong carry evidence (McNemar's test; the "
        "interval of the difference is Newcombe's, or a group bootstrap where the split is grouped).</p>",
    ]


def _calibration(suite: EvaluationSuite) -> list[str]:
    """ECE, confidence and confidently wrong answers per model and condition, and the diagram."""
    entries = [model for model in suite.models if model.calibration]
    if not entries:
        return []
    head = (
        "<tr><th class='l'>model</th><th class='l'>condition</th><th>accuracy</th><th>mean confidence</th>"
        "<th>ECE</th><th>confidence of wrong answers</th>"
        f"<th>answered wrongly with ≥ {CONFIDENT:.0%} confidence</th></tr>"
    )
    rows = "".join(
        _row(
            model.name,
            _e(result.condition),
            format_share(result.accuracy, result.scans),
            format_share(result.mean_confidence, result.scans),
            format_share(result.ece, result.scans),
            format_share(result.wrong_confidence, result.scans),
            _ci(result.confidently_wrong),
        )
        for model in entries
        for result in model.calibration
    )
    shown = [
        (model.name, result)
        for model in entries
        for result in (model.calibration[0], model.calibration[-1])
    ]
    figure = figures.reliability_diagram(shown)
    return [
        "<h2>Calibration: does the model know when it is wrong?</h2>",
        f"<table>{head}{rows}</table>",
        _plot(figure),
        "<p class='note'>Expected calibration error (Guo et al. 2017): the gap between how sure the "
        "answers are and how often they are right, over ten confidence bins. An attack that flips a scan "
        "usually leaves the model sure of its wrong answer: the clinically harmful case, counted in the "
        "last column. On a small test set the ECE reads high even for a calibrated model; compare models "
        "on the same scans.</p>",
    ]


def _corruptions(suite: EvaluationSuite) -> list[str]:
    """Error per corruption and severity with intervals, CE and mCE against the baseline."""
    entries = [model for model in suite.models if model.corruption is not None]
    if not entries:
        return []
    parts = ["<h2>CT corruptions at five severities</h2>"]
    for model in entries:
        report = model.corruption
        assert report is not None
        head = "<tr><th class='l'>corruption</th>" + "".join(f"<th>severity {s}</th>" for s in SEVERITIES)
        head += "<th>mean</th>" + ("<th>CE</th><th>relative CE</th>" if model.corruption_errors else "")
        head += "</tr>"
        rows = []
        for c, name in enumerate(report.corruptions):
            cells = [_ci(report.error_interval(c, s), 0) for s in range(len(SEVERITIES))]
            cells.append(_ci(report.mean_error_interval(c), 0))
            errors = model.corruption_errors
            if errors is not None:
                cells += [_ci(errors.ce[c], 0), _ci(errors.relative_ce[c], 0)]
            rows.append(_row(attack_class(name).title, *cells))
        summary = f"clean error {format_share(report.clean_error, report.scans)}"
        if model.corruption_errors is not None:
            errors = model.corruption_errors
            summary += (
                f"; mCE {_ci(errors.mce, 0)} and relative mCE {_ci(errors.relative_mce, 0)} of "
                f"{_e(errors.baseline)}'s"
            )
        parts += [f"<h3>{_e(model.name)}: error</h3><p>{summary}</p>", f"<table>{head}{''.join(rows)}"
                  "</table>"]
    parts.append(_plot(figures.corruption_errors([m.corruption for m in entries if m.corruption])))
    parts.append(
        "<p class='note'>Every scan under each corruption at severities 1–5 (noise of a lowered dose, "
        "streaks, rings, motion, JPEG, a shifted window, a coarser matrix), the convention of ImageNet-C "
        "(Hendrycks &amp; Dietterich 2019) and MedMNIST-C. CE is a model's summed error over the severities "
        "relative to the baseline model's (100% = the baseline); relative CE compares what each loses from "
        "its clean error. Below 100% is better.</p>"
    )
    return parts


def _faithfulness(suite: EvaluationSuite) -> list[str]:
    """ROAD scores of the Grad-CAM maps, clean and attacked."""
    entries = [model for model in suite.models if model.faithfulness is not None]
    skipped = [(model.name, why) for model in suite.models if (why := model.skipped.get("faithfulness"))]
    if not entries and not skipped:
        return []
    head = (
        "<tr><th class='l'>model</th><th class='l'>maps</th><th>clean</th><th>attacked</th>"
        "<th>change</th><th class='l'>left out</th></tr>"
    )
    rows = []
    for model in entries:
        result = model.faithfulness
        assert result is not None
        rows.append(
            _row(
                model.name,
                _e(f"{result.method}, {result.layer} ({result.grid[0]}×{result.grid[1]} cells), "
                   f"{result.imputation} imputation, under {result.attacked.condition}"),
                _ci(result.clean.mean, 0, unit=""),
                _ci(result.attacked.mean, 0, unit=""),
                _ci(result.change, 0, unit=""),
                _e(result.clean.problem or result.attacked.problem or "none"),
            )
        )
    parts = ["<h2>Faithfulness of the explanations</h2>", f"<table>{head}{''.join(rows)}</table>"]
    parts += [f"<p class='note'>{_e(name)}: not measured: {_e(reason)}</p>" for name, reason in skipped]
    if entries:
        parts.append(_plot(figures.faithfulness_scores([m.faithfulness for m in entries if m.faithfulness])))
    parts.append(
        "<p class='note'>ROAD (Rong et al. 2022), in hundredths of the explained class's probability: "
        "the map's most relevant pixels are removed (and filled in from their neighbours) and then its "
        "least relevant ones; above zero, removing what the map marks hurts the answer more, so the map "
        "shows what the answer rests on; near zero it is no better than a random map. On attacked scans "
        "the map explains the wrong answer; a fall means the map no longer shows why the model answered.</p>"
    )
    return parts


def _timing(suite: EvaluationSuite) -> list[str]:
    """Where the evaluation's time went, per model and section."""
    rows = "".join(
        _row(model.name, *(_e(f"{section} {seconds:.0f} s") for section, seconds in model.seconds.items()))
        for model in suite.models
    )
    return [f"<h2>Where the time went</h2><table>{rows}</table>"] if rows else []


def _model_section(model: ModelEvaluation) -> list[str]:
    report = model.report
    facts = ", ".join(f"{_e(key)}: {_e(value)}" for key, value in model.info.items())
    rows = "".join(_attack_row(result) for result in report.attacks)
    recall_head = "".join(f"<th>recall {_e(name)}</th>" for name in CLASSES)
    parts = [
        f"<h2>Model: {_e(model.name)}</h2>" + (f"<p class='note'>{facts}</p>" if facts else ""),
        f"<p>Clean accuracy {_ci(report.clean.accuracy_interval)} on {report.size} scans.</p>",
        _trained_note(model),
        "<table><tr><th class='l'>attack</th><th>accuracy</th><th>success rate</th><th>fooled / "
        "attacked</th><th>L∞ mean / median (k/255)</th><th>L2 mean / median (grey levels)</th><th>PSNR "
        f"dB</th><th>SSIM</th><th>time s</th>{recall_head}</tr>{rows}</table>",
        "<h3>Confusion matrices (rows: true class, columns: predicted)</h3>",
        _confusion("clean", report.clean),
    ]
    parts += [_confusion(result.label, result.outcome) for result in report.attacks]
    parts += [
        _confusion(f"worst case ε={format_epsilon(c.eps)}", c.outcome)
        for c in report.combined
        if len(c.attacks) > 1  # over one attack alone it is that attack's matrix, drawn above
    ]
    if model.defenses:
        parts.append(_defenses(model.defenses))
    if model.certified is not None:
        curve = model.certified
        parts.append(
            f"<p>Randomized smoothing (σ={format_epsilon(curve.sigma)}, n={curve.n}, α={curve.alpha:g}): "
            "certified "
            + ", ".join(
                f"{format_share(a)} at L2 radius {r / GREY_LEVEL:.0f} grey levels"
                for r, a in zip(curve.radii, curve.accuracy)
            )
            + f"; abstained on {format_share(curve.abstained)} of the scans.</p>"
        )
    examples = [(result, example) for result in report.attacks for example in result.examples[:1]]
    if examples:
        parts.append("<h3>Example scans (clean, attacked, perturbation amplified)</h3><div class='examples'>")
        parts += [_example(result, example) for result, example in examples]
        parts.append("</div>")
    return parts


def _trained_note(model: ModelEvaluation) -> str:
    """The "not a trained classifier" flag above a model's figures, or one quiet line when it passes."""
    trained = model.report.trained
    if trained.flagged:
        reason, advice = _e(trained.reason.capitalize()), _e(trained.advice)
        return f"<p class='flag'>{reason}.</p><p class='note'>{advice}</p>"
    return f"<p class='note'>A trained classifier: {_e(trained.reason)}.</p>"


def _attack_row(result: AttackResult) -> str:
    size = result.size_summary()
    return _row(
        result.label,
        _ci(result.outcome.accuracy_interval),
        _ci(result.success_interval),
        f"{int(result.fooled.sum())} / {int(result.clean_correct.sum())}",
        _pair(size["linf_mean"] * 255, size["linf_median"] * 255),
        _pair(size["l2_mean"] * 255, size["l2_median"] * 255),
        _num(size["psnr_mean"]),
        _num(size["ssim_mean"]),
        f"{result.seconds:.2f}",
        *(_ci(interval, 0) for interval in result.outcome.recall_intervals),
    )


def _defenses(results: list[DefenseResult | EnsembleResult]) -> str:
    header = "".join(f"<th>{name}</th>" for name in ("clean", "naive attack", "adaptive attack"))
    rows = "".join(
        _row(
            d.defense,
            format_share(d.clean_accuracy),
            format_share(d.naive_accuracy),
            format_share(d.adaptive_accuracy),
            _e(d.attack.title),
        )
        for d in results
    )
    return (
        "<h3>Defences: naive versus adaptive attack</h3>"
        f"<table><tr><th class='l'>defence</th>{header}<th>attack</th></tr>{rows}</table>"
        "<p class='note'>The naive attack differentiates straight through the defence, whose gradient "
        "is zero or broken; the adaptive one sees through it: an input transformation replaced by the "
        "identity (BPDA) and random transforms averaged (EOT), a distilled model's logits divided by its "
        "temperature. Only the adaptive figure says how robust the defence is.</p>"
    )


def _row(label: str, *cells: str) -> str:
    """A table row: the label (escaped) on the left, then already formatted cells."""
    return f"<tr><td class='l'>{_e(label)}</td>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _pair(mean: float, median: float) -> str:
    return "—" if not math.isfinite(mean) else f"{_num(mean)} / {_num(median)}"


def _confusion(title: str, outcome: Outcome) -> str:
    matrix = outcome.confusion
    head = "".join(f"<th>{_e(name)}</th>" for name in CLASSES)
    body = "".join(
        f"<tr><th class='l'>{_e(name)}</th>" + "".join(f"<td>{int(v)}</td>" for v in row) + "</tr>"
        for name, row in zip(CLASSES, matrix)
    )
    return (
        f"<div class='cm'><b>{_e(title)}</b> "
        f"({format_share(outcome.accuracy)})<table><tr><th></th>{head}</tr>{body}</table></div>"
    )


def _example(result: AttackResult, example: Example) -> str:
    delta = example.adversarial - example.clean
    caption = (
        f"{_e(result.label)}: scan {example.index}, true {_e(CLASSES[example.label])} → predicted "
        f"{_e(CLASSES[example.adversarial_prediction])}; largest change {np.abs(delta).max() * 255:.1f} grey "
        "levels"
    )
    images = "".join(
        f"<img alt='{alt}' src='data:image/png;base64,{_png(picture)}'>"
        for alt, picture in (
            ("clean", _grey(example.clean)),
            ("attacked", _grey(example.adversarial)),
            ("perturbation", _diverging(delta)),
        )
    )
    return f"<figure>{images}<figcaption>{caption}</figcaption></figure>"


def _grey(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


def _diverging(delta: np.ndarray) -> np.ndarray:
    """Red where the attack brightened, blue where it darkened, white where nothing changed (RGB)."""
    scaled = delta / max(float(np.abs(delta).max()), 1e-12)
    up, down = np.clip(scaled, 0, 1), np.clip(-scaled, 0, 1)
    rgb = np.stack([1 - down * 0.8, 1 - (up + down) * 0.75, 1 - up * 0.8], axis=-1)
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


def _png(image: np.ndarray) -> str:
    """Base64 of a lossless PNG (grey or RGB), so the attacked scan is shown exactly."""
    ok, encoded = cv2.imencode(".png", image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("OpenCV could not encode a PNG")
    return base64.b64encode(encoded.tobytes()).decode("ascii")


# -------------------------------------------------------------- pieces other reports share
def html_page(title: str, body: Iterable[str], *, synthetic: bool) -> str:
    """A self-contained HTML document in this report's style (plotly.js inlined once), the synthetic
    banner above and below ``body`` when ``synthetic``: how the threat experiments' reports look."""
    banner = [f"<div class='banner'>{_e(SYNTHETIC_BANNER)}</div>"] if synthetic else []
    return "\n".join(
        [
            "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>",
            f"<title>{_e(title)}</title><style>{STYLE}</style>",
            f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script></head><body>",
            *banner,
            *body,
            *banner,
            "</body></html>\n",
        ]
    )


def escape(text: Any) -> str:
    """``text`` safe inside HTML."""
    return _e(text)


def interval_html(interval: Interval) -> str:
    """A share with its 95% interval, as every table of the report writes it."""
    return _ci(interval)


def figure_html(figure: go.Figure) -> str:
    """A plotly figure as a fragment of a page made by :func:`html_page` or :func:`report_html`."""
    return _plot(figure)


def png_base64(image: np.ndarray) -> str:
    """A scan (float ``[H, W]`` in ``[0, 1]``, or uint8 grey or RGB) as the base64 text of a lossless PNG."""
    return _png(_grey(image) if image.dtype != np.uint8 else image)


def image_html(encoded: str, alt: str) -> str:
    """An image tag for a :func:`png_base64` text."""
    return f"<img alt='{_e(alt)}' src='data:image/png;base64,{encoded}'>"
