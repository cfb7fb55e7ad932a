"""Threats: what else a deployed model gives away beyond one attacked scan.

One tab per threat (:mod:`pipeline.threats`), each a form that starts a background job, its live
progress with a cancel button, and its finished results with their figures and HTML report; the tabs'
bodies live in ``dashboard/ui/threat_*.py``.
"""

from __future__ import annotations

import streamlit as st

from dashboard.ui import threat_extraction, threat_membership, threat_poisoning
from dashboard.ui.status import usable_runs

st.title("Threats")
st.caption(
    "What else a hospital asks of a model before deploying it, beside one attacked scan: could tampered "
    "training data plant a backdoor, could the model be copied from its answers, does it reveal whose scans "
    "it learnt from."
)
runs = {str(record.run_dir): record for record in usable_runs()}
if not runs:
    st.info(
        "These threats are run against a trained model. Prepare the demo on the Attack page, train a model on "
        "the Train page, or import one on the Models page.",
        icon=":material/info:",
    )
    st.stop()
poisoning, extraction, membership = st.tabs(["Poisoned training data", "Model extraction", "Membership inference"])
with poisoning:
    threat_poisoning.panel()
with extraction:
    threat_extraction.render(runs)
with membership:
    threat_membership.render(runs)
