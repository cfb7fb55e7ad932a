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
from typing import Any, Iterable, Optional

import cv2
import numpy as np
import plotly.graph_objects as go
import plotly.offline

from pipeline.constants import CLASSES
from pipeline.errors import UserInputError
from pipeline.evaluation import figures
from pipeline.evaluation.defenses import DefenseResult
from pipeline.evaluation.reference import (
    COLUMN_LABELS,
    COLUMNS,
    REFERENCE_CAVEAT,
    REFERENCE_SOURCE,
    REFERENCE_STUDY,
    STUDY_COLUMNS,
    ReferenceTable,
)
from pipeline.constants import GREY_LEVEL, SYNTHETIC_BANNER
from pipeline.evaluation.robustness import AttackResult, Example, Outcome
from pipeline.evaluation.strength import StrengthCheck
from pipeline.evaluation.suite import EvaluationSuite, ModelEvaluation
from pipeline.json_object import parse_json_object
from pipeline.store import atomic_write_bytes
from pipeline.units import format_epsilon, format_share

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
)


def report_csv(suite: EvaluationSuite) -> str:
    """One row per (model, attack): clean, each attack, the worst case per epsilon, the study's rows."""
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
            "attack": "clean",
            "accuracy": clean.accuracy,
            **_recalls(clean),
            "seconds": model.report.clean_seconds,
        }
        for result in model.report.attacks:
            check = model.strength_at(result.spec.eps) if result.spec.eps is not None else None
            yield {
                **base,
                **_eps(result.spec.eps),
                "attack": result.label,
                "accuracy": result.accuracy,
                "success_rate": result.success_rate,
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
                "attack": "worst case over: " + " + ".join(combined.attacks),
                "accuracy": combined.accuracy,
                **_recalls(combined.outcome),
            }
        for check in model.strength:
            yield {
                **base,
                **_eps(check.eps),
                "attack": "worst case over all attacks incl. strength checks",
                "accuracy": check.worst_case.accuracy,
                **_recalls(check.worst_case.outcome),
                "strength_verdict": check.verdict,
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


def _eps(eps: Optional[float]) -> dict[str, Any]:
    return {"eps": eps, "eps_label": format_epsilon(eps)}


def _recalls(outcome: Outcome) -> dict[str, float]:
    return {f"recall_{name}": value for name, value in zip(CLASSES, outcome.recall)}


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
        parts.append(f"<div class='banner'>{_e(INCOMPLETE)}</div>")
    parts += _summary(suite)
    for table in suite.tables:
        parts += _reference_table(table)
    parts += _figures(suite)
    for model in suite.models:
        parts += _model_section(model)
    if suite.synthetic:
        parts.append(f"<div class='banner'>{_e(SYNTHETIC_BANNER)}</div>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _e(text: Any) -> str:
    return html.escape(str(text))


def _num(value: Optional[float], digits: int = 3) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def _summary(suite: EvaluationSuite) -> list[str]:
    settings = suite.settings
    return [
        f"<h1>Adversarial robustness evaluation</h1><p>{suite.indices.size} {_e(suite.split)} scans of "
        f"<b>{_e(suite.dataset)}</b>; models: {', '.join(_e(m.name) for m in suite.models)}; device "
        f"{_e(suite.device)}; {_e(suite.created)}; {suite.seconds:.0f} s.</p>",
        "<p class='note'>Epsilons are L∞ budgets on scans in [0, 1], shown as grey levels k/255: "
        f"{', '.join(format_epsilon(e) for e in settings.epsilons)}. Attacks: "
        f"{_e(', '.join(settings.attacks))} ({settings.steps} steps for the iterative ones; CW-L∞ is the "
        "Carlini-Wagner margin loss inside the same L∞ ball, the study's CW-L2 had no bound). Only scans "
        "the model classifies correctly are attacked; accuracy under attack counts the others as errors, and the success rate is over the "
        "correctly classified scans. Perturbation sizes, PSNR and SSIM are over the adversarial examples "
        "that succeeded. A robust accuracy from attacks is an upper bound: the strength checks beside each "
        "figure say how far to trust it.</p>",
    ]


def _reference_table(table: ReferenceTable) -> list[str]:
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
            else "not run"
        )
        if row.trained is not None and row.trained.flagged and not (check and check.degenerate):
            verdict = f"<span class='flag'>{_e(row.trained.reason)}</span><br>{verdict}"
        rows.append(
            f"<tr><td class='l'>{_e(row.model)}</td>"
            + "".join(f"<td>{format_share(row.values[c], row.scans)}</td>" for c in COLUMNS)
            + f"<td>{format_share(check.worst_case.accuracy, row.scans) if check else '—'}</td>"
            + f"<td class='l'>{verdict}</td></tr>"
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
    if not shown:
        return []
    return ["<h2>Figures</h2>"] + [
        figure.to_html(full_html=False, include_plotlyjs=False) for figure in shown
    ]


def _model_section(model: ModelEvaluation) -> list[str]:
    report = model.report
    facts = ", ".join(f"{_e(key)}: {_e(value)}" for key, value in model.info.items())
    rows = "".join(_attack_row(result) for result in report.attacks)
    recall_head = "".join(f"<th>recall {_e(name)}</th>" for name in CLASSES)
    parts = [
        f"<h2>Model: {_e(model.name)}</h2>" + (f"<p class='note'>{facts}</p>" if facts else ""),
        f"<p>Clean accuracy {format_share(report.clean.accuracy, report.size)} on {report.size} scans.</p>",
        _trained_note(model),
        "<table><tr><th class='l'>attack</th><th>accuracy</th><th>success rate</th><th>fooled / "
        "attacked</th><th>L∞ mean / median (k/255)</th><th>L2 mean / median (grey levels)</th><th>PSNR "
        f"dB</th><th>SSIM</th><th>time s</th>{recall_head}</tr>{rows}</table>",
        "<h3>Confusion matrices (rows: true class, columns: predicted)</h3>",
        _confusion("clean", report.clean),
    ]
    parts += [_confusion(result.label, result.outcome) for result in report.attacks]
    parts += [_confusion(f"worst case ε={format_epsilon(c.eps)}", c.outcome) for c in report.combined]
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
        format_share(result.accuracy, len(result.clean_correct)),
        format_share(result.success_rate, int(result.clean_correct.sum())),
        f"{int(result.fooled.sum())} / {int(result.clean_correct.sum())}",
        _pair(size["linf_mean"] * 255, size["linf_median"] * 255),
        _pair(size["l2_mean"] * 255, size["l2_median"] * 255),
        _num(size["psnr_mean"]),
        _num(size["ssim_mean"]),
        f"{result.seconds:.2f}",
        *(format_share(value) for value in result.outcome.recall),
    )


def _defenses(results: list[DefenseResult]) -> str:
    header = "".join(f"<th>{name}</th>" for name in ("clean", "naive attack", "adaptive attack"))
    rows = "".join(
        _row(
            d.defense,
            format_share(d.naive.clean.accuracy),
            format_share(d.naive.attacks[0].accuracy),
            format_share(d.adaptive.attacks[0].accuracy),
            _e(d.attack.title),
        )
        for d in results
    )
    return (
        "<h3>Input-transformation defences: naive versus adaptive (BPDA/EOT) attack</h3>"
        f"<table><tr><th class='l'>defence</th>{header}<th>attack</th></tr>{rows}</table>"
        "<p class='note'>The naive attack differentiates straight through the defence, whose gradient "
        "is zero or broken; the adaptive one replaces it by the identity (BPDA) and averages random "
        "transforms (EOT). Only the adaptive figure says how robust the defence is.</p>"
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
