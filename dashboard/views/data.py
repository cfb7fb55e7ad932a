"""Data: choose the scans, see what is in them, and check that the split does not leak.

The choice is a :class:`pipeline.data.DataSpec`, the one training takes: the page loads its
scans (through the shared cache), makes the very split training will make, and draws the split's
leakage report.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import streamlit as st

from dashboard.ui import figures, pacs
from dashboard.ui.captions import leak_verdict
from dashboard.ui.feedback import shown_errors
from dashboard.ui.images import enlarge, grey8, show
from dashboard.ui.progress_view import background
from dashboard.ui.resources import cached_split, loaded_dataset
from dashboard.ui.session import dataset_choice, set_dataset_choice
from dashboard.ui.status import SYNTHETIC_HELP, synthetic_badge
from pipeline.data import DataSpec, ScanDataset, download_iqothnccd, open_scan, preprocess_image
from pipeline.data.spec import SPLIT_STRATEGIES
from pipeline.data.kaggle import KAGGLE_URL

SOURCES = {
    "synthetic": "Synthetic phantom (built in)",
    "folder": "A folder on this machine",
    "kaggle": "Download IQ-OTH/NCCD from Kaggle",
}
IMAGE_SIZES = (64, 128, 224, 256)
GALLERY = 6
#: Session keys: the settings a Kaggle download was asked with, and the download's background task.
KAGGLE_REQUEST, KAGGLE_TASK = "data.kaggle.request", "data.kaggle.task"


def choose_source(current: DataSpec) -> None:
    """The form that picks a dataset; applying it makes every page use the new choice."""
    with st.form("data:choose"):
        kind = st.radio(
            "Source",
            list(SOURCES),
            format_func=SOURCES.get,
            horizontal=True,
            key="data:kind",
            index=0 if current.synthetic else 1,
        )
        left, middle, right = st.columns(3)
        folder = left.text_input(
            "Dataset folder",
            value="" if current.synthetic else current.source,
            placeholder="data/iqothnccd",
            key="data:folder",
            help="IQ-OTH/NCCD as Kaggle ships it, or benign/ malignant/ normal/ folders, at any depth",
        )
        sizes = sorted({*IMAGE_SIZES, current.image_size})
        size = middle.selectbox(
            "Image size (px)",
            sizes,
            key="data:size",
            index=sizes.index(current.image_size),
            help="Scans are padded to a square and resized to this size, the models' input size",
        )
        count = right.number_input(
            "Phantom scans",
            12,
            5000,
            current.count,
            step=12,
            key="data:count",
            help="How many synthetic scans to generate (synthetic source only)",
        )
        seed = left.number_input(
            "Phantom seed", 0, 2**31 - 1, current.seed, key="data:seed", help="Which phantom scans"
        )
        strategy = middle.selectbox(
            "Split",
            list(SPLIT_STRATEGIES),
            key="data:strategy",
            index=SPLIT_STRATEGIES.index(current.split_strategy),
            format_func={
                "grouped": "grouped (no leaks; recommended)",
                "random": "random by image (leaky, for comparison)",
            }.get,
        )
        split_seed = right.number_input(
            "Split seed", 0, 2**31 - 1, current.split_seed, key="data:split-seed", help="Which scans go where"
        )
        val_fraction = left.number_input(
            "Validation share",
            0.05,
            0.5,
            current.val_fraction,
            step=0.05,
            key="data:val-fraction",
            help="Scans that choose the best epoch during training",
        )
        test_fraction = middle.number_input(
            "Test share",
            0.0,
            0.5,
            current.test_fraction,
            step=0.05,
            key="data:test-fraction",
            help="Scans no model sees before it is tested",
        )
        if not st.form_submit_button("Use this dataset", type="primary", icon=":material/check:"):
            return
    with shown_errors("use this dataset"):
        source = "synthetic"
        if kind == "folder":
            source = folder.strip()
            if not source:
                st.warning("Type the path of a dataset folder first.")
                return
        settings = dataclasses.replace(
            current,
            source=source,
            image_size=int(size),
            count=int(count),
            seed=int(seed),
            split_strategy=strategy,
            split_seed=int(split_seed),
            val_fraction=float(val_fraction),
            test_fraction=float(test_fraction),
        )
        if kind == "kaggle":
            # the download runs in the background: this page, and every other one, stays usable
            st.session_state[KAGGLE_REQUEST] = settings
        else:
            set_dataset_choice(settings)
        st.rerun()


def kaggle_download() -> None:
    """While a requested download runs, its progress; once done, the downloaded folder becomes the data."""
    settings: DataSpec | None = st.session_state.get(KAGGLE_REQUEST)
    if settings is None:
        return
    folder = None
    with shown_errors("download IQ-OTH/NCCD"):
        try:
            folder = background(
                KAGGLE_TASK,
                "Downloading IQ-OTH/NCCD from Kaggle (about 100 MB)",
                lambda progress: str(download_iqothnccd()),
                inputs={"dataset": KAGGLE_URL},
            )
        except Exception:
            del st.session_state[KAGGLE_REQUEST]  # a failure is shown once, not retried on every rerun
            raise
    if folder is not None:
        del st.session_state[KAGGLE_REQUEST]
        set_dataset_choice(dataclasses.replace(settings, source=folder))
        st.rerun()


def overview(dataset: ScanDataset) -> None:
    counts = dataset.class_counts()
    columns = st.columns(4)
    columns[0].metric("Scans", len(dataset))
    columns[1].metric("Image size", f"{dataset.image_size} px")
    columns[2].metric(
        "Identical duplicates",
        f"{len(dataset.duplicate_groups)} groups",
        help="Byte-identical images; the grouped split keeps each group on one side",
    )
    columns[3].metric("Files skipped", len(dataset.report.skipped))
    if dataset.studies is not None:
        dicom = dataset.studies.counts()
        st.markdown(
            f"**DICOM studies:** {dicom['patients']} patients, {dicom['studies']} studies, "
            f"{dicom['series']} series, {dicom['slices']} slices, each series in slice-position order. "
            "Patient and study identifiers are used only as hashed keys; they are never shown or stored."
        )
    left, right = st.columns([1, 1.4])
    with left:
        st.plotly_chart(figures.class_balance(counts), key="data:balance", config={"displaylogo": False})
        smallest = min(counts, key=counts.get)
        st.caption(
            f"The classes are unbalanced: {smallest} has the fewest scans ({counts[smallest]}); "
            "training weighs the classes so the model does not just learn the majority."
        )
    with right:
        st.markdown("##### A few scans of each class")
        for index, name in enumerate(dataset.classes):
            rows = np.flatnonzero(dataset.labels == index)[:GALLERY]
            if len(rows):
                show([grey8(dataset.images[int(row)]) for row in rows], width=88, caption=[name] * len(rows))
    for note in dataset.report.notes:
        st.caption(note)
    if dataset.report.skipped:
        with st.expander(f"{len(dataset.report.skipped)} files could not be used"):
            st.dataframe(
                [{"file": Path(item.path).name, "reason": item.reason} for item in dataset.report.skipped],
                hide_index=True,
            )


def preprocessing(dataset: ScanDataset) -> None:
    st.subheader("What preprocessing does")
    if dataset.paths is None:
        st.caption(
            f"Phantom scans are rendered as square slices and then go through the same step as real "
            f"scans: padded to a square with their background grey, then resized to {dataset.image_size} px. "
            "Stretching is never used, so round nodules stay round."
        )
        return
    index = st.slider("Scan", 0, len(dataset) - 1, 0, key="data:pre-index")
    original = open_scan(dataset.paths[index]).image
    left, right = st.columns(2)
    show(original, where=left, width=320, caption=f"As stored: {original.shape[1]}×{original.shape[0]} px")
    show(
        enlarge(preprocess_image(original, dataset.image_size), 320),
        where=right,
        width=320,
        caption=f"As the model sees it: padded to a square, resized to {dataset.image_size} px",
    )


def duplicates(dataset: ScanDataset) -> None:
    if not dataset.duplicate_groups:
        return
    with st.expander(f"{len(dataset.duplicate_groups)} groups of identical images"):
        for group in dataset.duplicate_groups[:5]:
            show(
                [grey8(dataset.images[i]) for i in group[:4]],
                width=96,
                caption=[f"#{i} {dataset.classes[dataset.labels[i]]}" for i in group[:4]],
            )


#: The box each level of :func:`leak_verdict` is drawn in.
LEAK_BOXES = {
    "warning": (st.warning, ":material/warning:"),
    "info": (st.info, ":material/info:"),
    "success": (st.success, ":material/verified:"),
}


def split_view(choice: DataSpec) -> None:
    st.subheader("The split, and whether it leaks")
    st.caption("Exactly the split a model trained on this dataset is trained, validated and tested on.")
    split, leaks = cached_split(choice)
    left, right = st.columns([1.2, 1])
    with left:
        st.plotly_chart(
            figures.split_sizes(split.report["class_counts"]), key="data:split", config={"displaylogo": False}
        )
        st.caption("Scans used to train, to choose the best epoch (validation), and to test, by class.")
    with right:
        share = leaks["test_with_similar_in_train_fraction"]
        st.metric(
            "Test scans with a near-twin in training",
            f"{100 * share:.0f}%",
            help="Exact or near-identical images on both sides: the model could recognise them, not diagnose",
        )
        st.metric("Neighbouring slices split across sides", leaks["adjacent_slices_across"])
        level, text = leak_verdict(split.leaky, leaks)
        box, icon = LEAK_BOXES[level]
        box(text, icon=icon)
        if not split.leaky and "warning" in split.report:  # the grouping's own problem, e.g. one giant group
            st.warning(f"The grouping: {split.report['warning']}.", icon=":material/warning:")
    if "studies" in split.report:
        patients(split.report["studies"])


def patients(studies: dict) -> None:
    """Patients, series and slices per side of the split, and whether any patient is on two sides."""
    st.dataframe(
        [{"side": side, **counts} for side, counts in studies["sides"].items()],
        hide_index=True,
        column_order=("side", "patients", "studies", "series", "slices"),
    )
    across = studies["patients_on_two_sides"]
    if across:
        st.warning(
            f"{across} patient(s) have slices on two sides of this split: the test measures recognition of "
            "patients seen in training. Use the grouped split.",
            icon=":material/warning:",
        )
    else:
        st.success("No patient is on two sides of the split.", icon=":material/verified:")


st.title("Data")
st.caption("Which scans the models learn from and are tested on, and whether the test is fair.")
choice = dataset_choice()
choose_source(choice)
pacs.data_section(choice)
kaggle_download()
if choice.synthetic:
    synthetic_badge()
    st.caption(SYNTHETIC_HELP)
with shown_errors("load the dataset"):
    dataset = loaded_dataset(choice)
    if dataset is None:
        st.stop()
    st.markdown(f"**{dataset.name}**")
    overview(dataset)
    preprocessing(dataset)
    duplicates(dataset)
    split_view(choice)
