"""Threats beyond one attacked scan: each threat a tab, its body in ``dashboard/ui/threat_*.py``.

Poisoned training data is here; a stolen model and membership inference join as tabs of their own.
"""

from __future__ import annotations

import streamlit as st

from dashboard.ui import threat_poisoning

#: Tab title -> the function that draws it.
TABS = {"Poisoned training data": threat_poisoning.panel}

st.title("Threats")
st.caption(
    "What else a hospital asks of a model before deploying it, beside one attacked scan: could tampered "
    "training data plant a backdoor, could the model be copied, does it reveal whose scans it learnt from."
)
for tab, draw in zip(st.tabs(list(TABS)), TABS.values()):
    with tab:
        draw()
