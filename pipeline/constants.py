"""Facts every module shares: the fixed class order and the grey-level scale."""

from typing import Final

#: Fixed class order of IQ-OTH/NCCD; label ``i`` always means ``CLASSES[i]``.
CLASSES: Final[tuple[str, str, str]] = ("benign", "malignant", "normal")
NUM_CLASSES: Final[int] = len(CLASSES)

#: What every figure, table and report from the synthetic phantom carries, worded once.
SYNTHETIC_BANNER: Final[str] = "Synthetic data — not a medical result"

#: Images live in ``[0, 1]``; one 8-bit grey level is this much of that scale.
GREY_LEVEL: Final[float] = 1.0 / 255.0

#: The lung window (width, level) in Hounsfield units used to map DICOM to 8-bit by default.
LUNG_WINDOW: Final[tuple[float, float]] = (1500.0, -600.0)
#: One 8-bit grey level under the lung window spans this many Hounsfield units (1500/255 ≈ 5.9).
LUNG_HU_PER_GREY_LEVEL: Final[float] = LUNG_WINDOW[0] / 255.0
MEDIASTINAL_WINDOW: Final[tuple[float, float]] = (350.0, 40.0)
#: The width of the square an axial chest slice shows, in mm, where a scan does not say: the synthetic
#: phantom's mean (its bodies fill 87-96% of a 260-380 mm field) and a usual adult chest field of view.
CHEST_FIELD_OF_VIEW_MM: Final[float] = 320.0
