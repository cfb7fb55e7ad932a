"""A PACS on the Data and Attack pages: connect, search, pick studies or a slice, store an attacked slice.

Everything goes through :mod:`pipeline.data.dicomweb`. What is shown of a study: its number in
the search, date, modalities, description, counts and label (never a UID or a patient
attribute). The password lives in this session's memory only (and, so that a dataset loads in the
background, in this process's memory through ``remember_credentials``); it is never written,
logged or put in the dataset's name. A failure (server down, too slow, login refused, not
DICOMweb) is a message and the page stays usable.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
import streamlit as st
import torch

from dashboard.ui.feedback import shown_errors
from dashboard.ui.scan_preview import preview, scan_words
from dashboard.ui.session import set_dataset_choice
from pipeline.data import DataSpec
from pipeline.data.dicomweb import (
    DEFAULT_TIMEOUT,
    Credentials,
    Pacs,
    PacsQuery,
    SeriesHit,
    SliceHit,
    StudyHit,
    is_dicomweb_source,
    remember_credentials,
)

#: Session keys: the connection (url, credentials, timeout), the last search per page, and the slice picked.
CONNECTION_KEY = "pacs.connection"
SEARCH_KEY = "pacs.search.{page}"
SERIES_KEY = "pacs.series"
SLICES_KEY = "pacs.slices"
PICKED_KEY = "pacs.picked"


@dataclasses.dataclass(frozen=True)
class Connection:
    url: str
    credentials: Optional[Credentials] = dataclasses.field(repr=False)
    timeout: float = DEFAULT_TIMEOUT

    def pacs(self) -> Pacs:
        return Pacs(self.url, self.credentials, timeout=self.timeout)


def connection(page: str, default_url: str = "") -> Optional[Connection]:
    """The server fields; the connection once a URL is given (it is shared by both pages)."""
    current: Optional[Connection] = st.session_state.get(CONNECTION_KEY)
    left, middle, right = st.columns([2, 1, 1])
    url = left.text_input(
        "DICOMweb address",
        value=current.url if current else default_url,
        key=f"pacs:{page}:url",
        placeholder="http://pacs.example:8042/dicom-web",
        help="The server's DICOMweb root (Orthanc: http://host:8042/dicom-web). No user or password in it.",
    )
    user = middle.text_input(
        "User (optional)",
        key=f"pacs:{page}:user",
        value=current.credentials.user if current and current.credentials else "",
    )
    password = right.text_input(
        "Password",
        type="password",
        key=f"pacs:{page}:password",
        help="Kept in this session's memory only; never saved or logged.",
    )
    if not url.strip():
        st.caption("Give the address of a DICOMweb server to search it.")
        return None
    with shown_errors("use this PACS address"):
        credentials = Credentials(user.strip(), password) if user.strip() else None
        found = Connection(PacsQuery(url).url, credentials, current.timeout if current else DEFAULT_TIMEOUT)
        st.session_state[CONNECTION_KEY] = found
        remember_credentials(found.url, credentials)
        return found
    return None


def _search_form(page: str, conn: Connection, *, labels: bool) -> None:
    """The search fields; a search's results are kept in the session until the next one."""
    with st.form(f"pacs:{page}:search"):
        left, middle, right = st.columns(3)
        modality = left.text_input(
            "Modality", value="CT", key=f"pacs:{page}:modality", help="e.g. CT; empty: any"
        )
        first = middle.text_input("First study date", key=f"pacs:{page}:from", placeholder="2024-01-01")
        last = right.text_input("Last study date", key=f"pacs:{page}:to", placeholder="2024-12-31")
        description = left.text_input(
            "Study description",
            key=f"pacs:{page}:description",
            placeholder="*lung*",
            help="* and ? are wildcards; empty: any",
        )
        studies = middle.text_area(
            "Or these Study Instance UIDs",
            key=f"pacs:{page}:studies",
            height=68,
            help="One per line. They are searched for, never shown or saved.",
        )
        label_file = right.text_input(
            "Labels",
            value="description",
            key=f"pacs:{page}:labels",
            disabled=not labels,
            help="'description': the class word (benign, malignant, normal) in each series' or study's "
            "description. Or the path of a CSV file of uid,label rows (Study or Series Instance UIDs).",
        )
        submitted = st.form_submit_button("Search the PACS", icon=":material/search:")
    if not submitted:
        return
    st.session_state.pop(SEARCH_KEY.format(page=page), None)
    with shown_errors("search the PACS"):
        uids = [line.strip() for line in studies.splitlines() if line.strip()]
        query = PacsQuery(
            conn.url,
            modality=modality,
            date_from=first,
            date_to=last,
            description=description,
            labels=label_file if labels else "description",
        )
        with st.spinner("Searching the PACS…"):
            hits = conn.pacs().search(query, study_uids=uids)
        if uids:
            query = dataclasses.replace(query, picks=tuple(hit.token for hit in hits))
        st.session_state[SEARCH_KEY.format(page=page)] = (query, hits)


def data_section(current: DataSpec) -> None:
    """The Data page's PACS source: connect, search, pick studies, use them as the dataset."""
    with st.expander(
        "From a PACS (DICOMweb)",
        expanded=is_dicomweb_source(current.source),
        icon=":material/cloud_download:",
    ):
        st.caption(
            "Search a hospital archive and train or test on the studies found. Each series is labelled "
            "by the class word in its description, or by a CSV file of uid,label rows. Retrieved slices "
            "are kept in memory only and split by patient."
        )
        default = PacsQuery.from_source(current.source).url if is_dicomweb_source(current.source) else ""
        conn = connection("data", default)
        if conn is None:
            return
        _search_form("data", conn, labels=True)
        found = st.session_state.get(SEARCH_KEY.format(page="data"))
        if not found:
            return
        query, hits = found
        if not hits:
            st.info("No study matches this search. Widen the dates or the description.")
            return
        table = pd.DataFrame([{"use": True, **hit.row()} for hit in hits]).drop(columns="token")
        edited = st.data_editor(
            table,
            key="pacs:data:pick",
            hide_index=True,
            disabled=list(table.columns[1:]),
            column_config={"use": st.column_config.CheckboxColumn("use", default=True)},
        )
        chosen = [hit for hit, use in zip(hits, edited["use"].tolist()) if use]
        unlabelled = sum(1 for hit in chosen if not hit.label)
        if unlabelled and query.label_file is None:
            st.caption(
                f"{unlabelled} chosen stud{'y names' if unlabelled == 1 else 'ies name'} no class in the "
                "study description; their series descriptions may, or they are left out."
            )
        if st.button(
            f"Use these {len(chosen)} studies",
            type="primary",
            disabled=not chosen,
            icon=":material/check:",
            key="pacs:data:use",
        ):
            with shown_errors("use these studies"):
                picks = (
                    () if len(chosen) == len(hits) and not query.picks else tuple(hit.token for hit in chosen)
                )
                source = dataclasses.replace(query, picks=picks).to_source()
                set_dataset_choice(dataclasses.replace(current, source=source))
                st.rerun()


def _cached(key: str, token: str, compute: Callable[[], Any]) -> Any:
    """One value per session and token (a study's series, a series' slices), fetched once."""
    store = st.session_state.setdefault(key, {})
    if token not in store:
        store[token] = compute()
    return store[token]


def choose_slice(image_size: int, classes: tuple[str, ...], make: Callable[..., Any]) -> Any:
    """The Attack page's PACS picker: study, series, slice; gives ``make(image, label, origin, dicom=bytes)``.

    ``image`` is float ``[1, S, S]`` in ``[0, 1]`` at ``image_size``; None until a slice is picked.
    """
    conn = connection("attack")
    if conn is None:
        return None
    _search_form("attack", conn, labels=False)
    found = st.session_state.get(SEARCH_KEY.format(page="attack"))
    if not found or not found[1]:
        if found:
            st.info("No study matches this search.")
        return None
    hits: list[StudyHit] = found[1]
    study = st.selectbox(
        "Study",
        hits,
        key="pacs:attack:study",
        format_func=lambda hit: (
            f"{hit.number} · {hit.date or 'no date'} · {hit.modalities} · "
            f"{hit.description or 'no description'}"
        ),
    )
    series_list: list[SeriesHit] = _cached(
        SERIES_KEY, f"{conn.url}|{study.token}", lambda: conn.pacs().series(study)
    )
    if not series_list:
        st.info("This study holds no series.")
        return None
    series = st.selectbox(
        "Series",
        range(len(series_list)),
        key="pacs:attack:series",
        format_func=lambda index: series_list[index].title(),
    )
    chosen = series_list[series]
    slices: list[SliceHit] = _cached(
        SLICES_KEY, f"{conn.url}|{study.token}|{series}", lambda: conn.pacs().slices(chosen)
    )
    if not slices:
        st.info("This series holds no slices.")
        return None
    rank = (
        st.slider("Slice", 1, len(slices), (len(slices) + 1) // 2, key="pacs:attack:slice")
        if len(slices) > 1
        else 1
    )
    where = f"{conn.url}|{study.token}|{series}|{rank}"
    last = st.session_state.get(PICKED_KEY + ".bytes")  # only the slice on show is kept
    if last is None or last[0] != where:
        last = st.session_state[PICKED_KEY + ".bytes"] = (where, conn.pacs().retrieve_slice(slices[rank - 1]))
    data = last[1]
    scan, image = preview(
        data, image_size,
        lambda scan: f"Study {study.number}, {chosen.title()}, slice {rank} of {len(slices)} "
        f"({scan_words(scan)}), shown as the model sees it",
    )
    options = ["not known", *classes]
    default = options.index(chosen.label) if chosen.label in options else 0
    answer = st.selectbox(
        "What does the scan show?",
        options,
        index=default,
        key="pacs:attack:label",
        help="Taken from the series or study description when it names a class.",
    )
    label = None if answer == "not known" else classes.index(answer)
    st.session_state[PICKED_KEY] = {"url": conn.url, "sha256": hashlib.sha256(data).hexdigest()}
    origin = {
        "source": "PACS",
        "server": conn.url,
        "study": study.number,
        "series": chosen.number,
        "slice": rank,
        "format": "DICOM",
        "true_label": None if label is None else classes[label],
    }
    return make(torch.from_numpy(image).float().div(255.0)[None], label, {**origin, "modality": scan.modality or None},
                dicom=data, modality=scan.modality, hu_per_grey_level=scan.hu_per_grey_level)


def store_button(attacked: np.ndarray, dicom_source: Optional[bytes], *, key: str, method: str) -> None:
    """Beside the downloads: store the attacked slice back as a new derived series (PACS slices only).

    ``attacked`` is uint8 ``[H, W]``; nothing is drawn unless ``dicom_source`` is the slice picked
    from the PACS.
    """
    picked = st.session_state.get(PICKED_KEY)
    conn: Optional[Connection] = st.session_state.get(CONNECTION_KEY)
    if (
        dicom_source is None
        or not picked
        or conn is None
        or conn.url != picked["url"]
        or hashlib.sha256(dicom_source).hexdigest() != picked["sha256"]
    ):
        return
    if st.button(
        "Store in the PACS as a new series",
        key=f"{key}:pacs-store",
        icon=":material/cloud_upload:",
        help="A new derived series in the same study, marked as adversarial research output and not "
        "for diagnosis; the original slice is never changed.",
    ):
        with shown_errors("store the attacked slice in the PACS"):
            with st.spinner("Storing…"):
                stored = conn.pacs().store_derived(dicom_source, attacked, method=method)
            st.success(
                f"Stored on {conn.url} as a new series “{stored.description}” in the same study; "
                "the original is unchanged.",
                icon=":material/cloud_done:",
            )
