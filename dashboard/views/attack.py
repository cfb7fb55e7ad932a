"""Attack a scan: pick a scan, a model (or two, or an ensemble of several) and an attack; see what
the attack did.

The page gathers inputs and calls :func:`pipeline.scan_report.analyse_scan` once per model, in a
background thread so a slow attack (CW on a CPU) never freezes the page; everything drawn comes
from the returned reports.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Optional

import streamlit as st
import torch

from dashboard.ui import demo, pacs, scan_preview, scan_views, threat_poisoning
from dashboard.ui.controls import attack_controls
from dashboard.ui.ensembles import ensemble_choice
from dashboard.ui.feedback import describe_error, shown_errors
from dashboard.ui.images import enlarge, grey8, show
from dashboard.ui.progress_view import show_progress, take_finished
from dashboard.ui.resources import (
    cached_ensemble,
    cached_model,
    cam_grids,
    ensemble_cam_grids,
    run_data,
    run_profile,
)
from dashboard.ui.session import selected_run
from dashboard.ui.status import is_synthetic, run_label, short_run_labels, synthetic_badge, usable_runs
from dashboard.ui.tasks import Task
from pipeline.attacks import attack_class, available, search_refusal, search_runs
from pipeline.data import ACCEPTED_FORMATS, same_data
from pipeline.constants import LUNG_HU_PER_GREY_LEVEL
from pipeline.errors import UserInputError
from pipeline.evaluation.degenerate import check_epoch
from pipeline.evaluation.ensemble import GRADIENTS
from pipeline.explain import MIN_GRID, matching_layer
from pipeline.progress import ProgressCallback, staged
from pipeline.scan_report import MINIMAL_EPS_HIGH, MINIMAL_EPS_NORM, ScanReport, analyse_scan
from pipeline.store import RunRecord
from pipeline.units import format_epsilon

#: The largest scan upload in MB (one slice is well under 1 MB; a multi-frame DICOM can be tens of MB).
SCAN_UPLOAD_MB = 50
TASK_KEY = "attack.task"
RESULT_KEY = "attack.result"
FAMILY_ORDER = ("white-box", "black-box", "ensemble", "corruption")
FAMILY_WORDS = {
    "white-box": "knows the model",
    "black-box": "only sees the model's answers",
    "ensemble": "several attacks, worst case",
    "corruption": "ordinary image degradation",
}
MINIMAL_HIGH = format_epsilon(MINIMAL_EPS_HIGH)
#: Why an attacked ensemble's scan is not checked against a validation profile.
ENSEMBLE_UNCHECKED = (
    "an ensemble has no validation profile of its own; attack its members one by one to see whether the "
    "scan is unusual for them"
)


@dataclass
class ScanChoice:
    """The scan to attack, without any patient data: pixels, optional label, where it came from."""

    image: torch.Tensor  #: float [1, S, S] in [0, 1]
    label: Optional[int]
    origin: dict[str, Any] = field(default_factory=dict)
    dicom: Optional[bytes] = None  #: the uploaded DICOM, kept in memory for the DICOM download
    modality: str = "CT"  #: what the scan shows; empty when the file does not say (JPEG, PNG, ...)
    #: Hounsfield units per grey level (a CT slice in a known window), else None: no HU are then shown
    hu_per_grey_level: Optional[float] = None


def choose_test_scan(record: RunRecord, classes: tuple[str, ...]) -> Optional[ScanChoice]:
    if "split" not in record.config:
        st.info(
            "This model came without its training data, so there are no held-out test scans to pick from. "
            "Upload a scan instead.",
            icon=":material/info:",
        )
        return None
    loaded = run_data(record)
    if loaded is None:
        return None
    dataset, split = loaded
    if len(split.test) == 0:
        st.info("This model's run kept no test scans (test fraction 0). Upload a scan instead.")
        return None
    wanted = st.selectbox(
        "Diagnosis", ["all", *classes], key="attack:class", help="Show only test scans of one diagnosis"
    )
    indices = (
        split.test if wanted == "all" else split.test[dataset.labels[split.test] == classes.index(wanted)]
    )
    if len(indices) == 0:
        st.info(f"No {wanted} scans in this test split.")
        return None
    position = st.slider("Test scan", 1, len(indices), 1, key="attack:position") if len(indices) > 1 else 1
    index = int(indices[min(position, len(indices)) - 1])
    image, label = dataset[index]
    show(
        enlarge(grey8(image), 240),
        width=240,
        caption=f"Test scan {position} of {len(indices)} · labelled {classes[label]}",
    )
    return ScanChoice(
        image,
        label,
        {"source": "test split", "dataset": dataset.name, "index": index, "true_label": classes[label]},
        # the phantom is rendered in the lung window; files in a folder may be in any window
        hu_per_grey_level=LUNG_HU_PER_GREY_LEVEL if dataset.is_synthetic else None,
    )


def choose_upload(image_size: int, classes: tuple[str, ...]) -> Optional[ScanChoice]:
    upload = st.file_uploader(
        "Upload one slice",
        key="attack:upload",
        max_upload_size=SCAN_UPLOAD_MB,
        help=f"{ACCEPTED_FORMATS}. The models here learnt axial CT slices. The file stays in this session's "
        "memory and is never written to disk; patient details in a DICOM are neither read nor shown.",
    )
    if upload is None:
        st.caption(f"{ACCEPTED_FORMATS}: one axial CT slice, as the models learnt. Nothing is stored.")
        return None
    data = upload.getvalue()
    scan, image = scan_preview.preview(
        data, image_size,
        lambda scan: f"{scan_preview.scan_words(scan)}, {scan.image.shape[1]}×{scan.image.shape[0]} px, shown as "
        f"the model sees it ({image_size}×{image_size})",
    )
    answer = st.selectbox(
        "What does the scan show?",
        ["not known", *classes],
        key="attack:upload-label",
        help="With the true diagnosis the attack pushes away from it; without, away from the "
        "model's own answer.",
    )
    label = None if answer == "not known" else classes.index(answer)
    return ScanChoice(
        torch.from_numpy(image).float().div(255.0)[None],
        label,
        {
            "source": "upload",
            "format": scan.format,
            "sha256": hashlib.sha256(data).hexdigest()[:16],
            "true_label": None if label is None else classes[label],
            "modality": scan.modality or None,
        },
        dicom=data if scan.format == "DICOM" else None,
        modality=scan.modality,
        hu_per_grey_level=scan.hu_per_grey_level,
    )


def choose_attack(hu_per_grey_level: Optional[float]) -> tuple[str, dict[str, Any]]:
    names = sorted(
        available(),
        key=lambda name: (
            FAMILY_ORDER.index(attack_class(name).family)
            if attack_class(name).family in FAMILY_ORDER
            else len(FAMILY_ORDER)
        ),
    )
    name = st.selectbox(
        "Attack",
        names,
        index=names.index("fgsm") if "fgsm" in names else 0,
        key="attack:name",
        format_func=lambda n: f"{attack_class(n).title} · {attack_class(n).family}",
    )
    cls = attack_class(name)
    st.caption(
        f"{cls.description or cls.title} — a {cls.family} attack ({FAMILY_WORDS.get(cls.family, '')})."
    )
    return name, attack_controls(name, key="attack", hu_per_grey_level=hu_per_grey_level)


def minimal_search(name: str) -> bool:
    """The opt-in search for the smallest flipping budget, with its cost, or why this attack has none."""
    refusal = search_refusal(name, MINIMAL_EPS_NORM)
    wanted = st.toggle(
        "Find the smallest budget",
        value=False,
        key="attack:minimal",
        disabled=refusal is not None,
        help=f"Also find the smallest budget that flips this scan: bisects the budget of the chosen attack, "
        f"with its other settings, up to {MINIMAL_HIGH}.",
    )
    if refusal is not None:
        st.caption(f"Not available: {refusal}.")
        return False
    runs = search_runs(MINIMAL_EPS_HIGH)
    st.caption(
        f"Costs up to {runs} more runs of {attack_class(name).title}: "
        f"the attack takes up to {runs + 1}× as long."
    )
    return wanted


def choose_ensemble(record: RunRecord) -> tuple[list[str], str]:
    """Runs to attack as one ensemble instead of the sidebar's model (none: the model alone), and how
    they combine. Offered: the runs trained on the same data and split as the sidebar's model, so its
    test scans are unseen by every member and read at the same size."""
    alike = {
        str(other.run_dir): other
        for other in usable_runs()
        if other.config.get("data") == record.config.get("data")
        and same_data(other.config.get("dataset"), record.config.get("dataset") or {})
    }
    members, combine = ensemble_choice(
        alike,
        key="attack",
        label="Or attack an ensemble of",
        help="Two or more models trained on the same data as this one, combined into one model: the attack "
        "then targets the whole ensemble",
    )
    if len(members) == 1:
        st.caption("Choose a second model to make an ensemble; until then the model above is attacked.")
    return (members if len(members) >= 2 else []), combine


def start(
    models: list[tuple[str, Optional[str], Any, Optional[dict[str, Any]]]],
    scan: ScanChoice,
    name: str,
    params: dict[str, Any],
    target: Optional[int],
    minimal: bool,
    cam_layer: str,
    classes: tuple[str, ...],
    inputs: dict[str, Any],
    size: int,
) -> None:
    """Attack ``scan`` on each of ``models`` (title, run folder or None for an ensemble, model, run config) in
    a background task; each explained at its layer matching ``cam_layer`` for ``size`` px scans."""

    def work(progress: ProgressCallback) -> list[tuple[str, ScanReport]]:
        reports = []
        for number, (title, run_dir, model, config) in enumerate(models):
            # first use of a model: one pass over its held-out scans, then read from beside the run
            profile, why = (
                run_profile(
                    run_dir,
                    model,
                    config,
                    staged(progress, 2 * number, 2 * len(models), f"{title}: validation scans"),
                )
                if run_dir is not None
                else (None, ENSEMBLE_UNCHECKED)
            )
            report = analyse_scan(
                model,
                scan.image,
                name,
                params,
                label=scan.label,
                target=target,
                classes=classes,
                find_minimal_eps=minimal,
                cam_layer=matching_layer(model, cam_layer, size),
                profile=profile,
                unchecked=why,
                hu_per_grey_level=scan.hu_per_grey_level,
                modality=scan.modality,
                progress=staged(progress, 2 * number + 1, 2 * len(models), title),
            )
            reports.append((title, report))
        return reports

    st.session_state[TASK_KEY] = Task(f"Running {attack_class(name).title}", work, inputs).start()


def collect_finished() -> None:
    """Move a finished attack's reports into the session (or say why there are none)."""
    task = take_finished(TASK_KEY)
    if task is None:
        return
    if task.cancelled:
        st.toast("The attack was cancelled.")
    elif task.error is not None:
        st.error(describe_error(task.error, "run the attack"), icon=":material/error:")
    else:
        st.session_state[RESULT_KEY] = (task.inputs, task.result)


def show_results(current: dict[str, Any]) -> None:
    stored = st.session_state.get(RESULT_KEY)
    if stored is None:
        return
    inputs, reports = stored
    used_scan: ScanChoice = inputs["scan"]
    if inputs["current"] != current:
        st.caption("These results are for the previous choices; press **Run the attack** to update them.")
    context = {
        "models": [title for title, _ in reports],
        "scan": used_scan.origin,
        "synthetic_data": inputs["synthetic"],
    }
    if inputs["synthetic"]:
        st.caption("Synthetic phantom: these results show how the method behaves, not a medical finding.")
    if len(reports) > 1:
        columns = st.columns(len(reports))
        for column, (title, report) in zip(columns, reports):
            with column:
                scan_views.report_summary(report, title, key=f"summary:{title}")
        tabs = st.tabs([title for title, _ in reports])
    else:
        tabs = [st.container()]
    for tab, (title, report) in zip(tabs, reports):
        with tab:
            scan_views.report_detail(
                report,
                key=f"detail:{title}",
                minimal_high=MINIMAL_HIGH,
                record=scan_views.as_record(report, **context, model_shown=title),
                dicom_source=used_scan.dicom,
            )


st.title("Attack a scan")
st.caption(
    "Make a small, deliberate change to a CT slice and see what it does to the model's answer, "
    "where the model looks, and how visible the change is."
)

collect_finished()
prepared = demo.current()
if demo.adopt(prepared):  # the demo just became ready: open on its story
    st.rerun()
run = selected_run()
if run is None:
    demo.offer()
    st.stop()
demo.apply_story()
if demo.preparing():
    demo.progress_panel()
demo.story_panel(prepared, run)

loaded = None
with shown_errors("load the model"):
    loaded = cached_model(run)
if loaded is None:
    st.stop()
model, record = loaded
classes = tuple(record.config.get("classes", ()))
if is_synthetic(record):
    synthetic_badge()

scan_column, attack_column, model_column = st.columns([1.1, 1.2, 1], gap="large")
scan = None
with scan_column:
    st.markdown("##### 1 · The scan")
    source = st.segmented_control(
        "Scan from",
        ["Test split", "Upload", "PACS"],
        default="Test split",
        key="attack:source",
        label_visibility="collapsed",
    )
    with shown_errors("read the scan"):
        scan = (
            choose_upload(record.data.image_size, classes)
            if source == "Upload"
            else pacs.choose_slice(record.data.image_size, classes, ScanChoice)
            if source == "PACS"
            else choose_test_scan(record, classes)
        )
with attack_column:
    st.markdown("##### 2 · The attack")
    name, params = choose_attack(None if scan is None else scan.hu_per_grey_level)
with model_column:
    st.markdown("##### 3 · The model")
    st.caption(run_label(record))
    trained = check_epoch(record.best or {}, classes)
    if trained is not None and trained.flagged:
        st.warning(f"This model is {trained.reason}.", icon=":material/block:")
    members, combine = choose_ensemble(record)
    ensemble = None
    if members:
        with shown_errors("combine the ensemble"):
            ensemble = cached_ensemble(members, combine)[0]
        if ensemble is None:
            st.stop()
        st.caption(f"Attacked: the {ensemble.name}, {GRADIENTS[combine]}.")
    grids, default_cam = (
        ensemble_cam_grids(members, combine, record.data.image_size)
        if ensemble is not None
        else cam_grids(run, record.data.image_size)
    )
    layers = list(grids)
    cam_layer = st.selectbox(
        "Grad-CAM layer",
        layers,
        index=layers.index(default_cam),
        key="attack:cam-layer",
        format_func=lambda layer: f"{layer} · {grids[layer][0]}×{grids[layer][1]} cells"
        + (" (too coarse to localise)" if min(grids[layer]) < MIN_GRID else ""),
        help=f"Where in the network to look. Deeper layers see more but on a coarser grid; "
        f"{default_cam} is the deepest with at least {MIN_GRID}×{MIN_GRID} cells at this image size.",
    )
    runs = usable_runs()
    labels = short_run_labels(runs)
    others = {str(other.run_dir): other for other in runs if str(other.run_dir) != run}
    compare = st.selectbox(
        "Compare with a second model",
        [None, *others],
        key="attack:compare",
        format_func=lambda path: "no comparison" if path is None else labels[path],
        help="Attack the same scan on another model, e.g. normal vs adversarially trained.",
    )
    if compare is not None:
        st.caption(run_label(others[compare]))
    target = None
    if attack_class(name).supports_target:
        choice = st.selectbox(
            "Push the answer towards",
            ["any other class", *classes],
            key="attack:target",
            help="A targeted attack tries to make the model say this class.",
        )
        target = None if choice == "any other class" else classes.index(choice)
    minimal = minimal_search(name)
    running = st.session_state.get(TASK_KEY) is not None
    clicked = st.button(
        "Run the attack",
        type="primary",
        icon=":material/play_arrow:",
        key="attack:run",
        disabled=scan is None or running,
        width="stretch",
    )
demo.story_drawn()

current = {
    "run": run,
    "ensemble": members,
    "combine": combine if members else None,
    "compare": compare,
    "scan": None if scan is None else scan.origin,
    "attack": name,
    "params": params,
    "target": target,
    "minimal": minimal,
    "cam_layer": cam_layer,
}
if clicked and scan is not None:
    with shown_errors("start the attack"):
        models: list[tuple[str, Optional[str], Any, Optional[dict[str, Any]]]] = (
            [(ensemble.name, None, ensemble, None)]
            if ensemble is not None
            else [(record.name, run, model, record.config)]
        )
        if compare is not None:
            second, second_record = cached_model(compare)
            if second_record.data.image_size != record.data.image_size:
                raise UserInputError(
                    f"the two models read scans of different sizes ({record.data.image_size} and "
                    f"{second_record.data.image_size} px); compare models trained at one image size"
                )
            models.append((second_record.name, compare, second, second_record.config))
        start(
            models,
            scan,
            name,
            params,
            target,
            minimal,
            cam_layer,
            classes,
            {"current": current, "scan": scan, "synthetic": is_synthetic(record)},
            record.data.image_size,
        )
        st.rerun()

if scan is not None:  # a poisoned run in the store: its trigger can be stamped on this scan
    threat_poisoning.trigger_panel(record, scan.image, cam_layer, compare)
st.divider()
show_progress(TASK_KEY)
show_results(current)
