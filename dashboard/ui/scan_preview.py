"""One scan read for attacking, whatever brought it (an upload, a PACS slice): its notes, the image as the
model sees it, and what the file says it shows, so the words that follow never call an MR image a CT slice."""

from __future__ import annotations

from typing import Callable

import numpy as np
import streamlit as st

from dashboard.ui.images import enlarge, show
from pipeline.data import Scan, open_scan, preprocess_image

#: DICOM modality codes (PS3.3 C.7.3.1.1.1) as a sentence names them.
MODALITY_NAMES = {"CT": "a CT slice", "MR": "an MR image", "CR": "a radiograph (CR)", "DX": "a radiograph (DX)",
                  "US": "an ultrasound image", "PT": "a PET image", "NM": "a nuclear-medicine image",
                  "MG": "a mammogram", "XA": "an angiogram", "OT": "an image of another kind (OT)"}


def modality_name(modality: str) -> str:
    return MODALITY_NAMES.get(modality, f"a {modality} image")


def scan_words(scan: Scan) -> str:
    """``DICOM CT slice``, ``DICOM MR image``, ``PNG image``: what the file is, as far as it says."""
    if scan.modality == "CT":
        return f"{scan.format} CT slice"
    return f"{scan.format} {scan.modality} image" if scan.modality else f"{scan.format} image"


def preview(data: bytes, image_size: int, caption: Callable[[Scan], str]) -> tuple[Scan, np.ndarray]:
    """Decode ``data`` (raises ScanError with what is wrong), show its notes and the uint8 ``[S, S]`` image
    the model will see (``caption(scan)`` under it), and warn when it is not a CT slice or its grey levels
    are not Hounsfield units. Returns the scan and that image."""
    scan = open_scan(data)
    for note in scan.notes:
        st.caption(f"Note: {note}")
    image = preprocess_image(scan.image, image_size)
    show(enlarge(image, 240), width=240, caption=caption(scan))
    if scan.modality and scan.modality != "CT":
        st.warning(
            f"This is {modality_name(scan.modality)}, not a CT slice: the model learnt CT slices only, so its "
            "answers on this image mean nothing, and its grey levels are not Hounsfield units.",
            icon=":material/warning:",
        )
    elif scan.hu_per_grey_level is None:
        st.caption(f"A {scan.format} file does not say what it shows or in which window; its grey levels are "
                   "shown as they are, not as Hounsfield units.")
    return scan, image
