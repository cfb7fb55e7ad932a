"""Drawing one attacked scan: images, the change, the model's answers, Grad-CAM, numbers, downloads."""

from __future__ import annotations

import json
import math
from typing import Any, Optional

import numpy as np
import streamlit as st

from dashboard.ui import captions, figures, pacs
from dashboard.ui.controls import hounsfield_text
from dashboard.ui.images import enlarge, grey8, png_bytes, show, wipe
from pipeline.attacks import attack_class
from pipeline.constants import GREY_LEVEL
from pipeline.data import attacked_dicom
from pipeline.explain import overlay
from pipeline.scan_report import ScanReport


def verdict_box(report: ScanReport) -> None:
    """The headline: a coloured badge (answer changed / held / wrong already) over the plain reading.

    Not an ``st.error``: a successful attack is a finding, not a failure of the program.
    """
    if report.prediction_clean != report.prediction_attacked:
        badge = ":red-badge[:material/warning: The answer changed]"
    elif report.label_known and report.prediction_clean != report.label:
        badge = ":orange-badge[:material/help: Wrong before the attack]"
    else:
        badge = ":green-badge[:material/verified: The answer held]"
    with st.container(border=True):
        st.markdown(f"{badge}  \n{captions.summary(report)}")
        trust_notes(report)


def trust_notes(report: ScanReport) -> None:
    """Beside the answer: whether the scan is like the training data and the model a trained classifier."""
    if report.trained is not None and report.trained.flagged:
        st.warning(f"The model is {report.trained.reason}.", icon=":material/block:")
    if report.ood is not None:
        if report.ood.flagged:
            st.warning(report.ood.text, icon=":material/travel_explore:")
        else:
            st.caption(report.ood.text)
    elif report.unchecked:
        st.caption(f"Not checked whether this scan is like the training data: {report.unchecked}.")
    detector_notes(report)


def detector_notes(report: ScanReport) -> None:
    """Whether each adversarial-example detector flags the attacked scan (and the original one)."""
    for detection in report.detections:
        if detection.flagged_attacked:
            st.warning(detection.text, icon=":material/policy:")
        else:
            st.caption(f":material/policy: {detection.text}")


SCAN_WIDTH = 300


def _per_level(report: ScanReport) -> str:
    """`` (1 level ≈ 5.9 HU)`` for a CT slice in a known window, else nothing."""
    return "" if report.hu_per_grey_level is None else f" (1 level ≈ {report.hu_per_grey_level:.1f} HU)"


def scans_row(report: ScanReport, key: str) -> None:
    clean, attacked = grey8(report.clean), grey8(report.attacked)
    left, middle, right = st.columns([1, 1, 1.15])
    show(enlarge(clean), where=left, caption="Original scan")
    show(enlarge(attacked), where=middle, caption="Attacked scan")
    with right:
        st.plotly_chart(
            figures.perturbation(report.delta / GREY_LEVEL), key=f"{key}:delta", config={"displaylogo": False}
        )
        st.caption(
            "The change itself, hugely amplified: red pixels were made brighter, blue darker; "
            f"the scale is in grey levels{_per_level(report)}. White means unchanged."
        )
    with st.expander("Compare the two scans with a slider", icon=":material/compare:"):
        position = st.slider(
            "Slide to move the line: original on the left, attacked on the right",
            0,
            100,
            50,
            key=f"{key}:wipe",
            format="%d%%",
        )
        show(
            wipe(enlarge(clean, 2 * SCAN_WIDTH), enlarge(attacked, 2 * SCAN_WIDTH), position / 100),
            width=2 * SCAN_WIDTH,
            caption="Most attacks are invisible here: that is the point.",
        )


def answers_row(report: ScanReport, key: str) -> None:
    left, right = st.columns(2)
    with left:
        st.plotly_chart(
            figures.probabilities(report.classes, report.probs_clean, report.probs_attacked),
            key=f"{key}:probs",
            config={"displaylogo": False},
        )
        st.caption("How sure the model is of each diagnosis, before (blue) and after (red) the attack.")
    with right:
        name = report.classes[report.label]
        steps = report.params.get("steps")
        by_step = steps is not None and len(report.trace) == steps + 1
        st.plotly_chart(
            figures.step_trace(
                report.trace,
                name,
                x_title="attack step (0 = the original scan)" if by_step else "point along the attack",
            ),
            key=f"{key}:trace",
            config={"displaylogo": False},
        )
        st.caption(
            f"The model's confidence in {name} "
            + ("after each step of the attack" if by_step else "from the original scan to the attacked one")
            + f". The answer changes once another class overtakes {name}: with three classes that can "
            "happen well below 50%, so no line marks it."
        )


def gradcam_row(report: ScanReport) -> None:
    clean, attacked = grey8(report.clean), grey8(report.attacked)
    names = report.classes
    rows, cols = report.cam_grid
    source = f"Grad-CAM of {report.cam_layer}, a {rows}×{cols} grid stretched over the scan"
    left, middle, right = st.columns([1, 1, 1.15])
    show(
        enlarge(overlay(clean, report.cam_clean)),
        where=left,
        caption=f"Original: where the model looked to answer {names[report.prediction_clean]}",
    )
    show(
        enlarge(overlay(attacked, report.cam_attacked)),
        where=middle,
        caption=f"Attacked: where it looked to answer {names[report.prediction_attacked]}",
    )
    with right:
        if report.shift is None:
            st.warning(report.cam_problem or "These maps cannot be compared.", icon=":material/blur_on:")
            st.caption(f"{source}. Nothing is measured on maps that cannot localise.")
            return
        st.metric("Map correlation", f"{report.shift['pearson']:.2f}", help="1 means the same pattern")
        st.metric("Overlap of the hottest 10%", captions.percent(report.shift["top_iou"]))
        st.metric("Centre moved", f"{report.shift['centre_shift']:.1f} px")
        st.caption(
            captions.shift_sentence(report.shift, report.clean.shape[-1])
            + f" Red areas weigh most in the decision ({source}; choose another layer under "
            "**3 · The model**)."
        )


def numbers_row(report: ScanReport, minimal_high: str) -> None:
    columns = st.columns(6)
    columns[0].metric(
        "Largest change",
        f"{captions.grey_levels(report.linf)}/255",
        help="L∞ norm: the most any one pixel changed, in grey levels out of 255"
        f"{hounsfield_text(report.linf, report.hu_per_grey_level)}",
    )
    columns[1].metric(
        "Total change (L2)",
        f"{report.l2 / GREY_LEVEL:.0f}/255",
        help="L2 norm: the Euclidean size of the whole change, in grey levels out of 255 like the "
        "largest change",
    )
    columns[2].metric(
        "Pixels changed",
        captions.percent(report.l0 / report.clean.size),
        help=f"{int(report.l0)} of {report.clean.size} pixels (L0)",
    )
    columns[3].metric(
        "PSNR",
        "∞ dB" if not math.isfinite(report.psnr) else f"{report.psnr:.1f} dB",
        help="Peak signal-to-noise ratio: above ~40 dB a change is invisible",
    )
    columns[4].metric("SSIM", f"{report.ssim:.4f}", help="Structural similarity: 1 means identical structure")
    columns[5].metric(
        "Smallest flip ε",
        "—"
        if report.minimal_eps is None
        else (
            "none needed"
            if report.minimal_eps == 0
            else (
                f"> {minimal_high}"
                if not math.isfinite(report.minimal_eps)
                else f"{captions.grey_levels(report.minimal_eps)}/255"
            )
        ),
        help=f"The smallest budget at which {attack_class(report.attack).title} changes the model's "
        "answer on this scan",
    )
    st.caption(
        (f"Budget: {report.budget}. " if report.budget else "")
        + captions.minimal_eps_sentence(report, minimal_high)
        + (f" The attack used {report.queries} model queries." if report.queries else "")
        + f" Computed in {report.seconds:.1f} s."
    )


def downloads(report: ScanReport, record: dict[str, Any], key: str, dicom_source: Optional[bytes]) -> None:
    """The attacked scan as PNG (and DICOM when the input was DICOM) and a JSON record of what was done."""
    attacked = grey8(report.attacked)
    columns = st.columns(3)
    columns[0].download_button(
        "Attacked scan (PNG)",
        png_bytes(attacked),
        file_name="attacked-scan.png",
        mime="image/png",
        key=f"{key}:png",
        icon=":material/download:",
    )
    if dicom_source is not None:
        columns[1].download_button(
            "Attacked scan (DICOM)",
            attacked_dicom(dicom_source, attacked),
            file_name="attacked-scan.dcm",
            mime="application/dicom",
            key=f"{key}:dcm",
            icon=":material/download:",
            help="A new de-identified DICOM marked as adversarially perturbed; "
            "no attribute of your file except the modality is copied.",
        )
    columns[2].download_button(
        "What was done (JSON)",
        json.dumps(record, indent=1),
        file_name="attack-record.json",
        mime="application/json",
        key=f"{key}:json",
        icon=":material/description:",
    )
    pacs.store_button(attacked, dicom_source, key=key, method=str(report.attack))


def report_detail(
    report: ScanReport,
    *,
    key: str,
    record: dict[str, Any],
    minimal_high: str,
    dicom_source: Optional[bytes] = None,
) -> None:
    """Everything about one attacked scan, top to bottom in the order a reader asks."""
    verdict_box(report)
    scans_row(report, key)
    st.subheader("What the model says")
    answers_row(report, key)
    st.subheader("Where the model looks")
    gradcam_row(report)
    st.subheader("How big the change is")
    numbers_row(report, minimal_high)
    downloads(report, record, key, dicom_source)


def report_summary(report: ScanReport, title: str, key: str) -> None:
    """A compact column for side-by-side comparison of two models on the same scan."""
    st.markdown(f"#### {title}")
    verdict_box(report)
    rows, cols = report.cam_grid
    show(
        enlarge(overlay(grey8(report.attacked), report.cam_attacked)),
        width=SCAN_WIDTH,
        caption=f"Attacked scan with Grad-CAM of {report.cam_layer} ({rows}×{cols} cells)"
        + (": cannot localise, see the model's tab" if report.cam_problem else ""),
    )
    st.plotly_chart(
        figures.probabilities(report.classes, report.probs_clean, report.probs_attacked),
        key=f"{key}:summary-probs",
        config={"displaylogo": False},
    )


def as_record(report: ScanReport, **context: Any) -> dict[str, Any]:
    """The JSON record: the report plus where the scan and model came from (never patient data)."""
    return {
        "product": "Lung CT robustness lab",
        "note": "research artefact, not for diagnosis",
        **context,
        "result": report.to_dict(),
        "attacked_scan_shape": list(np.shape(report.attacked)),
    }
