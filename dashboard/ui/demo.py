"""The first-run path: prepare the demo (a standard and a robust model) and open the Attack page on its story.

The card calls :func:`pipeline.demo.background.start_demo_job`, the same preparation as
``python -m pipeline demo``, as one background job. Once ``runs/demo.json`` exists, the Attack page
is set up once per demo: the standard model selected, the robust one beside it, the story's
malignant test scan and PGD at the story's budget with the steps the demo was measured with, one
click from "Run the attack".
"""

from __future__ import annotations

from typing import Optional

import streamlit as st

from dashboard.ui.feedback import shown_errors
from dashboard.ui.job_view import job_panel
from dashboard.ui.settings import runs_dir
from dashboard.ui.status import select_run_next
from pipeline.constants import GREY_LEVEL
from pipeline.demo import RECIPES, Demo, default_recipe, read_demo
from pipeline.demo.background import demo_job_dir, start_demo_job
from pipeline.demo.core import STORY_CLASS, STORY_EPSILON
from pipeline.jobs import job_state

#: The demo (its creation time) whose story this session has already set up on the Attack page.
APPLIED_KEY = "demo.applied"


def preparing() -> bool:
    """Whether the demo job of this run store is running now."""
    return job_state(demo_job_dir(runs_dir())).running


def progress_panel() -> None:
    """The running demo job: stage, progress, time left and a cancel button."""
    job_panel(demo_job_dir(runs_dir()), key="demo:job", curves=False, what="demo preparation")


def offer() -> None:
    """No model yet: explain why one is needed and prepare the demo on request."""
    job_dir = demo_job_dir(runs_dir())
    state = job_state(job_dir)
    if state.running:
        st.info("The demo is being prepared. This page opens on it as soon as both models are ready.",
                icon=":material/hourglass_top:")
        progress_panel()
        return
    if state.phase in ("failed", "cancelled"):  # say why the last try ended
        job_panel(job_dir, key="demo:ended", curves=False, what="demo preparation")
    recipe = RECIPES[default_recipe()]
    with st.container(border=True):
        st.markdown("#### No trained model yet")
        st.write(
            "Attacking a scan needs a model to attack. Prepare the demo here, train a model on the **Train** "
            "page, or import one on the **Models** page."
        )
        st.caption(
            f"The demo trains {recipe.describe()} It exists so you can see what an attack does right away: "
            "both models have only ever seen the synthetic phantom, are not medical models, and their "
            "answers mean nothing clinically."
        )
        if st.button(
            f"Prepare the demo (two models, about {recipe.minutes:.0f} minutes)",
            type="primary", icon=":material/play_arrow:", key="demo:start",
        ):
            with shown_errors("start preparing the demo"):
                start_demo_job(runs_dir(), recipe.name)
                st.rerun()


def current() -> Optional[Demo]:
    """The demo recorded in this run store, read once per page run; None when there is none (a
    damaged record is said on the page and counts as none)."""
    with shown_errors("read the demo record"):
        return read_demo(runs_dir())
    return None


def adopt(demo: Optional[Demo]) -> bool:
    """Set the Attack page up on ``demo``'s story, once per demo; True when it did so.

    Must run before the page draws its widgets (it writes their Session State); the model is
    selected through the sidebar on the next script run, so the caller reruns when this returns True.
    """
    if demo is None or st.session_state.get(APPLIED_KEY) == demo.created_at:
        return False
    st.session_state[APPLIED_KEY] = demo.created_at
    select_run_next(str(demo.standard.run_dir))
    st.session_state["attack:compare"] = str(demo.robust.run_dir)
    st.session_state["attack:source"] = "Test split"
    st.session_state["attack:name"] = "pgd"
    st.session_state["attack:pgd:eps"] = STORY_EPSILON / GREY_LEVEL
    st.session_state["attack:pgd:steps"] = demo.eval_steps  # the attack the demo's figures were measured with
    if demo.showcase_rank is not None:
        st.session_state["attack:class"] = STORY_CLASS
        st.session_state["attack:position"] = demo.showcase_rank
    return True


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
