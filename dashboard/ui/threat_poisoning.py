"""Poisoned training data: the Threats page's tab, and the Attack page's "stamp the trigger" check.

The tab builds a :class:`pipeline.threats.poisoning.BackdoorRequest` from its controls and starts it
with :func:`pipeline.threats.poisoning.start_backdoor_job`; progress and cancel come from the job's
folder (:func:`dashboard.ui.job_view.job_panel`), and a finished experiment is drawn from its
``backdoor.json`` with the pipeline's own figures, so it reads as the HTML report does. The Attack
page's check calls :func:`pipeline.threats.poisoning.check_trigger` on the scan in hand.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any, Optional

import streamlit as st
import torch

from dashboard.ui.controls import param_control
from dashboard.ui.feedback import shown_errors
from dashboard.ui.images import enlarge, grey8, show
from dashboard.ui.job_view import job_panel
from dashboard.ui.resources import cached_model
from dashboard.ui.session import selected_run
from dashboard.ui.settings import runs_dir
from dashboard.ui.status import run_label, synthetic_badge, usable_runs
from pipeline.data.poison import PoisonSpec, draw_trigger
from pipeline.errors import UserInputError
from pipeline.evaluation.intervals import Interval
from pipeline.explain import overlay
from pipeline.jobs import job_state, list_jobs
from pipeline.params import params_of
from pipeline.store import RunRecord
from pipeline.threats.poisoning import (
    REPORT,
    RESULT,
    BackdoorRequest,
    TriggerCheck,
    check_trigger,
    clean_twin,
    finished_results,
    poisoning_root,
    start_backdoor_job,
)
from pipeline.threats.poisoning_report import comparison_sentence, detection_figure, outcome_figure, share_text

WATCH_KEY = "threats.poisoning.watch"
SHOWN_KEY = "threats:poisoning:shown"
FOLLOWED_KEY = "threats.poisoning.followed"
TRIGGER_KEY = "attack.trigger"
TRAIN, MEASURE = "Train a poisoned twin", "Measure a poisoned run"
INTRO = (
    "Could a few tampered training scans make a model read any scan that carries a small mark as, say, "
    "normal? A **poisoned twin** of a clean model is trained on the same scans with the same recipe, except "
    "that a share of its training scans carries a trigger, a small high-density marker of the kind skin "
    "markers and metal leave. **Dirty-label** poisoning (BadNets, Gu et al. 2017) puts it on other classes' "
    "scans and relabels them; **clean-label** poisoning (Turner et al. 2019) puts it on scans of the target "
    "class only, every label true (here without Turner's adversarial perturbation: the weaker, simpler "
    "variant). Both models are then tested on held-out scans with the trigger stamped on, and spectral "
    "signatures (Tran et al. 2018) look for the poisoned scans in the training set."
)


def poisoned(record: RunRecord) -> bool:
    return isinstance(record.config.get("poison"), dict)


def panel() -> None:
    """The whole tab: the form, running experiments, and the finished ones."""
    st.markdown(INTRO)
    runs = {str(record.run_dir): record for record in usable_runs()}
    clean = {path: record for path, record in runs.items() if not poisoned(record)}
    if clean:
        with st.container(border=True):
            form(clean, {path: record for path, record in runs.items() if poisoned(record)})
    else:
        st.info(
            "A backdoor is measured against a clean model: train one on the Train page first (the quick preset "
            "takes minutes on a CPU), or prepare the demo on the Attack page.",
            icon=":material/info:",
        )
    running_experiments()
    finished_experiments()


def form(clean: dict[str, RunRecord], poisoned_runs: dict[str, RunRecord]) -> None:
    how = st.segmented_control(
        "What to do", [TRAIN, MEASURE], default=TRAIN, key="threats:poisoning:how", label_visibility="collapsed"
    )
    paths, sidebar = list(clean), selected_run()
    reference = st.selectbox(
        "Clean model: the reference, whose recipe the twin repeats",
        paths,
        index=paths.index(sidebar) if sidebar in clean else 0,  # the sidebar's model
        key="threats:poisoning:clean",
        format_func=lambda path: run_label(clean[path]),
    )
    record = clean[reference]
    request: dict[str, Any] = {"clean_run": reference, "runs_dir": str(runs_dir())}
    if how == MEASURE:
        if not poisoned_runs:
            st.caption("No poisoned run yet: train a poisoned twin first.")
            return
        request["poisoned_run"] = st.selectbox(
            "Poisoned model",
            list(poisoned_runs),
            key="threats:poisoning:poisoned",
            format_func=lambda path: run_label(poisoned_runs[path]),
        )
        label = "Measure the backdoor"
    else:
        values = {}
        columns = st.columns(3)
        for number, (name, param) in enumerate(params_of(PoisonSpec).items()):
            with columns[number % 3]:
                values[name] = param_control(param, f"threats:poisoning:{name}")
        with shown_errors("read the poisoning settings"):
            spec = PoisonSpec.from_dict(values)
            size = record.data.image_size
            trigger = draw_trigger(spec, size, record.data.window)
            request["poison"] = spec
            epochs = record.config.get("epochs", "?")
            minutes = record.training_minutes(record.config.get("epochs"))
            took = (f"about {max(minutes, 1):.0f} min, as that training took" if minutes
                    else "as long as that training took")
            st.caption(
                f"At {size} px the marker is {trigger.size_px} px wide (≈ {trigger.size_mm:.0f} mm), grey level "
                f"{round(255 * trigger.grey)}/255 in the {record.data.window} window. The twin trains {epochs} "
                f"epochs with {record.name}'s recipe: {took} on the machine that trained it."
            )
        label = "Train the poisoned twin and measure"
    if st.button(label, type="primary", icon=":material/play_arrow:", key="threats:poisoning:start"):
        with shown_errors("start the backdoor experiment"):
            job = start_backdoor_job(BackdoorRequest(**request))
            st.session_state[WATCH_KEY] = str(job)
            st.toast("The experiment runs in the background; you can leave this page.")


def running_experiments() -> None:
    """A live panel (progress, cancel) per running experiment, and the one this session started if it
    failed or was cancelled."""
    watched = st.session_state.get(WATCH_KEY)
    running = [str(path) for path, state in list_jobs(poisoning_root(runs_dir())) if state.running]
    ended = [watched] if watched and watched not in running and job_state(watched).phase != "done" else []
    for job_dir in running + ended:
        with st.container(border=True):
            st.markdown(f"**Backdoor experiment {Path(job_dir).name}**")
            job_panel(
                job_dir,
                key=f"threats:poisoning:{job_dir}",
                curves=False,
                what="backdoor experiment",
                kept="a poisoned twin that finished an epoch stays among the runs (resume it on the Train page)",
            )


def finished_experiments() -> None:
    results = {str(path): result for path, result in finished_results(runs_dir())}
    if not results:
        st.caption("Finished experiments appear here, including those run with `python -m pipeline backdoor`.")
        return
    watched = st.session_state.get(WATCH_KEY)
    if watched in results and st.session_state.get(FOLLOWED_KEY) != watched:  # show the one just finished
        st.session_state[SHOWN_KEY] = st.session_state[FOLLOWED_KEY] = watched
    st.divider()
    chosen = st.selectbox(
        "Experiment",
        list(results),
        key=SHOWN_KEY,
        format_func=lambda path: f"{results[path]['models']['poisoned']['run']} · {results[path]['created']}",
    )
    with shown_errors("show the experiment"):
        result_view(results[chosen], Path(chosen))


def result_view(result: dict[str, Any], folder: Path) -> None:
    """One finished experiment: headline figures, the comparison, both figures, an example, downloads."""
    if result.get("synthetic"):
        synthetic_badge()
        st.caption("Synthetic phantom: these figures show how the method behaves, not a medical finding.")
    models, detection = result["models"], result["detection"]
    st.markdown(f"**{result['poison_text']}** · poisoned run {models['poisoned']['run']}")

    def share(role: str, key: str) -> Interval:
        return Interval.from_dict(models[role][key])

    columns = st.columns(4)
    columns[0].metric("Trigger success, poisoned model", share_text(share("poisoned", "trigger_success")))
    columns[1].metric("Trigger success, clean model", share_text(share("clean", "trigger_success")))
    columns[2].metric(
        "Clean accuracy, poisoned · clean",
        f"{share('poisoned', 'clean_accuracy').estimate:.0%} · {share('clean', 'clean_accuracy').estimate:.0%}",
    )
    columns[3].metric(
        "Detection precision · recall",
        f"{detection['precision']['estimate']:.0%} · {detection['recall']['estimate']:.0%}",
        help=f"Chance (a detector flagging as many scans at random): {detection['chance_precision']:.0%} · "
        f"{detection['chance_recall']:.0%}",
    )
    st.caption(comparison_sentence(result))
    left, right = st.columns(2)
    left.plotly_chart(outcome_figure(result), key=f"{folder}:outcome", config={"displaylogo": False})
    right.plotly_chart(
        detection_figure(detection, bool(result.get("synthetic"))),
        key=f"{folder}:detection",
        config={"displaylogo": False},
    )
    st.caption(
        f"Spectral signatures flag {detection['flagged']} of {detection['scans']} training scans, "
        f"{detection['poisoned']} of which were poisoned: precision {share_text(Interval.from_dict(detection['precision']))}"
        f" (chance {detection['chance_precision']:.0%}), recall {share_text(Interval.from_dict(detection['recall']))}"
        f" (chance {detection['chance_recall']:.0%}), ROC AUC {detection['auc'] or float('nan'):.2f}."
    )
    example(result)
    downloads = st.columns(4)
    for column, (name, mime, label) in zip(
        downloads, ((REPORT, "text/html", "Report (HTML)"), (RESULT, "application/json", "Results (JSON)"))
    ):
        path = folder / name
        if path.is_file():
            column.download_button(label, path.read_bytes(), file_name=name, mime=mime, key=f"{folder}:{name}")
    st.caption(
        f"The poisoned model is run {models['poisoned']['run']}: choose it in the sidebar to stamp its trigger "
        "on any scan on the Attack page."
    )


def example(result: dict[str, Any]) -> None:
    shown = result.get("example")
    if not shown:
        return
    classes = result["classes"]
    answers = shown["answers"]
    words = "; ".join(
        f"{role}: {classes[answers[role][0]]} → {classes[answers[role][1]]}" for role in ("clean", "poisoned")
    )
    left, right, _ = st.columns([1, 1, 2])
    for column, key, caption in ((left, "clean_png", "without the trigger"), (right, "triggered_png", "with the trigger")):
        show(base64.b64decode(shown[key]), caption=f"Test scan {shown['index']}, {caption}", width=200, where=column)
    st.caption(f"Labelled {classes[shown['label']]}. Answers without → with the trigger: {words}.")


# -------------------------------------------------------------------------- the Attack page's check
def trigger_panel(record: RunRecord, image: torch.Tensor, cam_layer: str, compare: Optional[str]) -> None:
    """Stamp a poisoned run's trigger on the scan in hand (``image`` float ``[1, S, S]``) and show what the
    selected model and the poisoned run (or its clean twin) answer, with Grad-CAM. Drawn only when the
    store holds a poisoned run at this image size."""
    size = record.data.image_size
    candidates = {
        str(run.run_dir): run for run in usable_runs() if poisoned(run) and run.data.image_size == size
    }
    if not candidates:
        return
    selected = str(record.run_dir)
    with st.expander("Backdoor trigger: stamp a poisoned model's trigger on this scan", expanded=poisoned(record)):
        paths = list(candidates)
        source = st.selectbox(
            "Trigger of",
            paths,
            index=paths.index(selected) if selected in candidates else 0,
            key="attack:trigger:run",
            format_func=lambda path: run_label(candidates[path]),
        )
        spec = PoisonSpec.from_dict(candidates[source].config["poison"])
        st.caption(f"{spec.describe()}.")
        other = source if source != selected else compare or clean_twin(runs_dir(), source)
        shown = [selected] + ([str(other)] if other and str(other) != selected else [])
        scan = hashlib.sha256(image.detach().cpu().numpy().tobytes()).hexdigest()
        inputs = (tuple(shown), source, cam_layer, scan)
        if st.button("Stamp the trigger", icon=":material/approval:", key="attack:trigger:stamp"):
            with shown_errors("stamp the trigger"):
                models = []
                for path in shown:
                    model, run = cached_model(path)
                    if run.data.image_size != size:
                        raise UserInputError(
                            f"{run.name} reads {run.data.image_size} px scans, not {size} px; compare models "
                            "trained at one image size"
                        )
                    models.append((run.name, model, poisoned(run)))
                check = check_trigger(models, image, spec, window=record.data.window, cam_layer=cam_layer)
                st.session_state[TRIGGER_KEY] = (inputs, check)
        stored = st.session_state.get(TRIGGER_KEY)
        if stored is not None and stored[0] == inputs:  # a check of another scan or model is not shown
            trigger_view(stored[1], tuple(record.classes))


def trigger_view(check: TriggerCheck, classes: tuple[str, ...]) -> None:
    target = check.spec.target_index
    columns = st.columns(1 + len(check.answers))
    show(enlarge(grey8(check.triggered), 200), caption=f"With the trigger ({check.size_px} px, ≈ {check.size_mm:.0f} mm)",
         width=200, where=columns[0])
    for column, answer in zip(columns[1:], check.answers):
        heat = overlay(check.triggered, answer.triggered_cam)
        kind = "poisoned" if answer.poisoned else "clean"
        show(
            enlarge(heat, 200),
            caption=f"{answer.title} ({kind}): {classes[answer.clean_answer]} → {classes[answer.triggered_answer]}; "
            f"{check.spec.target} {answer.triggered_probabilities[target]:.0%} with the trigger "
            f"({answer.clean_probabilities[target]:.0%} without)"
            + ("" if answer.cam_ok[1] else " · Grad-CAM map not readable"),
            width=200,
            where=column,
        )
    st.caption(
        f"Grad-CAM ({check.layer}) of each model's answer with the trigger: a model that learnt the backdoor "
        "often looks at the mark."
    )
