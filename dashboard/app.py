"""Lung CT robustness lab: ``streamlit run dashboard/app.py``.

Sets the page config, routes over the pages with ``st.navigation`` and draws the sidebar status
(device, dataset, selected model). Everything else lives in ``pages/`` and ``ui/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run` puts only dashboard/ on the path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402
from streamlit.runtime.pages_manager import PagesManager  # noqa: E402

from dashboard.ui import auth, status  # noqa: E402

# Streamlit still treats a `pages/` folder beside the entry point as a legacy multipage app: it would
# route a URL that matches a file name there straight to that file, skipping this script (page config,
# sidebar), and answer other URLs with "page not found". This app routes with st.navigation only.
PagesManager.uses_pages_directory = False

st.set_page_config(page_title="Lung CT robustness lab", page_icon=":material/pulmonology:", layout="wide")

# URL paths differ from the file names, so that even the first run of a fresh server (before the line
# above took effect) cannot be routed to a page file alone.
PAGES = [
    st.Page("pages/data.py", title="Data", icon=":material/database:", url_path="dataset"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:", url_path="training"),
    st.Page(
        "pages/attack.py",
        title="Attack a scan",
        icon=":material/target:",
        url_path="scan-attack",
        default=True,
    ),
    st.Page("pages/evaluate.py", title="Evaluate", icon=":material/analytics:", url_path="evaluation"),
    st.Page("pages/models.py", title="Models", icon=":material/inventory_2:", url_path="runs"),
]

auth.require_sign_in()
page = st.navigation(PAGES)
status.sidebar()
page.run()
