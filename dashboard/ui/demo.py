"""The first-run path: the demo (a standard and a robust model) and the Attack page opened on its story.

An empty run store gets the two models that ship with the lab on its first start
(:func:`pipeline.demo.install_shipped`, seconds: nothing trains). Retraining them stays one click
away: the card calls :func:`pipeline.demo.background.start_demo_job`, the same training as
``python -m pipeline demo --train``, as one background job. Once ``runs/demo.json`` exists, the Attack page
is set up once per demo: the standard model selected, the robust one beside it, the story's
malignant test scan and PGD at the story's budget with the steps the demo was measured with, one
click from "Run the attack".
"""

from __future__ import annotations

from typing import Optional

import streamlit as st

from dashboard.ui.controls import preset_attack
from dashboard.ui.feedback import describe_error, shown_errors
from dashboard.ui.job_view import job_panel
from dashboard.ui.settings import runs_dir, shipped_demo_wanted
from dashboard.ui.status import select_run_next
from pipeline.constants import GREY_LEVEL
from pipeline.demo import DEMO_FILE, RECIPES, Demo, default_recipe, install_shipped, read_demo
from pipeline.demo.background import demo_job_dir, start_demo_job
from pipeline.demo.core import STORY_CLASS, STORY_EPSILON
from pipeline.errors import UserInputError
from pipeline.jobs import job_state
from pipeline.store import list_runs

#: The demo (its creation time) whose story this session has already set up on the Attack page.
APPLIED_KEY = "demo.applied"
#: The story's widget values and attack, waiting for the script run that draws them (:func:`apply_story`).
STORY_KEY = "demo.story"
#: The attack the story runs, at :data:`pipeline.demo.core.STORY_EPSILON` with the demo's own steps.
STORY_ATTACK = "pgd"
#: Set once this session has looked at whether the run store needs the shipped demo.
FIRST_START_KEY = "demo.first-start"
#: Why the shipped demo could not be installed, for the card.
SHIPPED_ERROR_KEY = "demo.shipped-error"


def preparing() -> bool:
    """Whether the demo job of this run store is running now."""
    return job_state(demo_job_dir(runs_dir())).running


def progress_panel() -> None:
    """The running demo job: stage, progress, time left and a cancel button."""
    job_panel(demo_job_dir(runs_dir()), key="demo:job", curves=False, what="demo preparation")


def install_on_first_start() -> None:
    """Put the shipped demo models into an empty run store, once per session (seconds, nothing trains).

    Runs before the sidebar lists the models, so that a fresh clone's first page is the story. A store
    with any run, a demo record, or a demo being retrained is left as it is; ``LUNGLAB_DEMO=off`` turns
    this off. A shipped demo that is missing, damaged or stale is not installed: the card says why.
    """
    if st.session_state.get(FIRST_START_KEY) or not shipped_demo_wanted():
        return
    st.session_state[FIRST_START_KEY] = True
    runs = runs_dir()
    if list_runs(runs) or (runs / DEMO_FILE).exists() or preparing():
        return
    install_shipped_now()


def install_shipped_now() -> bool:
    """Install the shipped demo into the run store; True when it did, else the reason is kept for the card."""
    try:
        install_shipped(runs_dir())
    except (UserInputError, OSError) as error:
        st.session_state[SHIPPED_ERROR_KEY] = describe_error(error, "install the shipped demo models")
        return False
    st.session_state.pop(SHIPPED_ERROR_KEY, None)
    return True


def retrain_button(key: str) -> None:
    """One click to retrain the demo's two models in the background (what the shipped ones were made by)."""
    recipe = RECIPES[default_recipe()]
    if st.button(
        f"Retrain the demo yourself (about {recipe.minutes:.0f} minutes on {recipe.machine}; longer on a busy "
        "machine)",
        icon=":material/model_training:", key=key,
        help=f"Trains {recipe.describe()}",
    ):
        with shown_errors("start retraining the demo"):
            start_demo_job(runs_dir(), recipe.name)
            st.rerun()


def offer() -> None:
    """No model yet: explain why one is needed; open the shipped demo (or say why it cannot be) and offer
    to retrain it."""
    job_dir = demo_job_dir(runs_dir())
    state = job_state(job_dir)
    if state.running:
        st.info("The demo's two models are being trained. This page opens on the demo as soon as both are "
                "ready; until then no half-trained model is used.", icon=":material/hourglass_top:")
        progress_panel()
        return
    if state.phase in ("failed", "cancelled"):  # say why the last try ended
        job_panel(job_dir, key="demo:ended", curves=False, what="demo preparation")
    problem = st.session_state.get(SHIPPED_ERROR_KEY)
    with st.container(border=True):
        st.markdown("#### No trained model yet")
        st.write(
            "Attacking a scan needs a model to attack. Open the demo here, train a model on the **Train** "
            "page, or import one on the **Models** page."
        )
        st.caption(
            "The demo is two ResNet-18s that ship with the lab, a standard one and one fine-tuned "
            "adversarially from it, trained on the synthetic phantom. It exists so you can see what an attack "
            "does right away: both models have only ever seen the synthetic phantom, are not medical models, "
            "and their answers mean nothing clinically."
        )
        if problem:
            st.warning(problem, icon=":material/report:")
        elif st.button("Open the demo (ready in seconds)", type="primary", icon=":material/play_arrow:",
                       key="demo:install"):
            if install_shipped_now():
                st.rerun()
            st.warning(st.session_state[SHIPPED_ERROR_KEY], icon=":material/report:")
        retrain_button("demo:start")


def current() -> Optional[Demo]:
    """The demo recorded in this run store, read once per page run; None when there is none (a
    damaged record is said on the page and counts as none)."""
    with shown_errors("read the demo record"):
        return read_demo(runs_dir())
    return None


def adopt(demo: Optional[Demo]) -> bool:
    """Set the Attack page up on ``demo``'s story, once per demo; True when it did so.

    The model is selected through the sidebar on the next script run, so the caller reruns when this
    returns True; the story's widget values wait for that run (:func:`apply_story`), since a run
    ended by a rerun, or a fragment's run in between, may drop values set for widgets not drawn yet.
    """
    if demo is None or st.session_state.get(APPLIED_KEY) == demo.created_at:
        return False
    st.session_state[APPLIED_KEY] = demo.created_at
    select_run_next(str(demo.standard.run_dir))
    widgets: dict[str, object] = {"attack:compare": str(demo.robust.run_dir), "attack:source": "Test split"}
    if demo.showcase_rank is not None:
        widgets |= {"attack:class": STORY_CLASS, "attack:position": demo.showcase_rank}
    # the attack the demo's figures were measured with (budgets as the widgets hold them: grey levels)
    attack = {"eps": STORY_EPSILON / GREY_LEVEL, "steps": demo.eval_steps}
    st.session_state[STORY_KEY] = {"widgets": widgets, "attack": attack}
    return True


def apply_story() -> None:
    """Give the Attack page's widgets the story's values set by :func:`adopt`, in the run that draws them.

    Applied on every run until :func:`story_drawn` says a run drew the widgets: a run interrupted before
    it got there (a fragment's rerun, a click) may drop values set for widgets it never drew."""
    story = st.session_state.get(STORY_KEY)
    if story is None:
        return
    for key, value in story["widgets"].items():
        st.session_state[key] = value
    # chosen as the person would choose it: carried past a later run that does not draw the attack's
    # widgets (one ended early while the page followed the demo job), after which Streamlit forgets them
    preset_attack("attack", STORY_ATTACK, story["attack"])


def story_drawn() -> None:
    """The Attack page drew its widgets with the story's values: from now on they are the person's."""
    st.session_state.pop(STORY_KEY, None)


def story_panel(demo: Optional[Demo], run: str) -> None:
    """While the demo's standard model is in use: which scan tells the story, and how the two models
    fare on all their held-out test scans (the figures ``python -m pipeline demo`` printed)."""
    if demo is None or run != str(demo.standard.run_dir):
        return
    with st.expander("The demo: a standard and a robust model on the synthetic phantom", expanded=False,
                     icon=":material/science:"):
        st.write(
            f"The scan chosen is {demo.story}. Run the attack to see the standard model's answer change "
            "while the robust model, shown beside it, keeps its own."
        )
        st.markdown(demo.table())
        st.caption(
            f"Accuracy on the held-out test scans of the synthetic phantom ({demo.standard.test_scans} scans), "
            f"clean and under PGD-{demo.eval_steps}; not a medical result."
        )
        if not preparing():
            retrain_button("demo:retrain")
