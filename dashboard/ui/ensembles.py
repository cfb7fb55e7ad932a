"""Choosing an ensemble of runs: the members and how they combine, one widget for every page."""

from __future__ import annotations

from typing import Mapping

import streamlit as st

from dashboard.ui.status import run_label, short_run_labels, usable_runs
from pipeline.evaluation.ensemble import COMBINE_RULES
from pipeline.store import RunRecord

#: What the rule's choice says about the vote, wherever it is offered.
COMBINE_HELP = (
    "Averaged logits or probabilities are attacked end to end. A majority vote has no gradient: it is "
    "attacked through a differentiable surrogate, the soft vote (the members' mean probabilities), and "
    "its figures say so"
)


def ensemble_choice(
    runs: Mapping[str, RunRecord], *, key: str, label: str, help: str, in_form: bool = False
) -> tuple[list[str], str]:
    """Members (run directories, from ``runs``) and the combination rule (a key of
    :data:`pipeline.evaluation.ensemble.COMBINE_RULES`): side by side in a form (the Evaluate page's
    width), one under the other elsewhere (a page's narrow column). Outside a form the rule waits,
    disabled, until two members are chosen; a form cannot react, so there it is always open.
    Widget keys: ``<key>:ensemble`` and ``<key>:combine``."""
    members_column, rule_column = st.columns([2, 1]) if in_form else (st.container(), st.container())
    # a narrow column names each member as the sidebar does, in a few words
    labels = (
        {path: run_label(record) for path, record in runs.items()} if in_form else short_run_labels(usable_runs())
    )
    members = members_column.multiselect(
        label,
        list(runs),
        default=[],
        key=f"{key}:ensemble",
        format_func=labels.__getitem__,
        help=help,
    )
    combine = rule_column.selectbox(
        "Combined by",
        list(COMBINE_RULES),
        key=f"{key}:combine",
        format_func=COMBINE_RULES.get,
        disabled=not in_form and len(members) < 2,
        help=COMBINE_HELP,
    )
    return members, combine
