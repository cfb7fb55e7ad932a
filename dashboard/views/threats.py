"""Threats: what else a deployed model gives away beyond one attacked scan.

One tab per threat (:mod:`pipeline.threats`), each a form that starts a background job, its live
progress with a cancel button, and its finished results with their figures and HTML report.
"""

from __future__ import annotations

import streamlit as st

from dashboard.ui import threat_extraction, threat_membership
from dashboard.ui.status import usable_runs

st.title("Threats")
st.caption(
    "Beyond attacking one scan: can the model be copied from its answers, and does it reveal whose scans it "
    "was trained on?"
)
runs = {str(record.run_dir): record for record in usable_runs()}
if not runs:
    st.info(
        "These threats are run against a trained model. Prepare the demo on the Attack page, train a model on "
        "the Train page, or import one on the Models page.",
        icon=":material/info:",
    )
    st.stop()
extraction, membership = st.tabs(["Model extraction", "Membership inference"])
with extraction:
    threat_extraction.render(runs)
with membership:
    threat_membership.render(runs)
