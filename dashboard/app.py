"""Lung CT robustness lab: ``streamlit run dashboard/app.py``.

Sets the page config, routes over the pages in ``views/`` with ``st.navigation`` and draws the
sidebar status (device, dataset, selected model). Everything else lives in ``views/`` and ``ui/``.

The page files are in ``views/``, not ``pages/``: Streamlit treats a ``pages/`` folder beside the
entry point as a legacy multipage app and, on a fresh server's first run, lists its file names in
the sidebar and routes URLs to the files directly.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run` puts only dashboard/ on the path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboard.ui import auth, startup  # noqa: E402

#: Served by this server, like every other asset: a clinic's machine calls out to no one.
ICON = Path(__file__).resolve().parent / "assets" / "lab-icon.png"

st.set_page_config(page_title="Lung CT robustness lab", page_icon=ICON, layout="wide")

PAGES = [
    st.Page("views/data.py", title="Data", icon=":material/database:"),
    st.Page("views/train.py", title="Train", icon=":material/model_training:"),
    st.Page("views/attack.py", title="Attack a scan", icon=":material/target:", default=True),
    st.Page("views/evaluate.py", title="Evaluate", icon=":material/analytics:"),
    st.Page("views/threats.py", title="Threats", icon=":material/policy:"),
    st.Page("views/models.py", title="Models", icon=":material/inventory_2:"),
]

auth.require_sign_in()
page = st.navigation(PAGES)
# The first run of a fresh server draws the page's title here and imports torch and the pipeline
# behind it; only after that may this script import them (status does).
startup.wait_until_loaded(page.title)

from dashboard.ui import demo, session, status  # noqa: E402
from pipeline.allocator import keep_freed_memory  # noqa: E402

keep_freed_memory()  # the attacks and evaluations this server runs reuse their tensors' memory
session.keep_choices()
demo.install_on_first_start()
status.sidebar()
page.run()
