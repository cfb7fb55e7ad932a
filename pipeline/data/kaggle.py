"""Download IQ-OTH/NCCD from Kaggle when the user has internet and asks for it.

kagglehub is imported only here and only when called, so the rest of the product works on a
machine without it (or without internet) from a folder the user downloaded by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, Optional

from pipeline.data.sources import discover
from pipeline.errors import DatasetError

KAGGLE_DATASET: Final[str] = "adityamahimkar/iqothnccd-lung-cancer-dataset"
KAGGLE_URL: Final[str] = f"https://www.kaggle.com/datasets/{KAGGLE_DATASET}"
BY_HAND: Final[str] = (
    f"Or download it by hand from {KAGGLE_URL}, unzip it (for example into data/iqothnccd/) and "
    "load that folder"
)


def download_iqothnccd(dest: Optional[str | Path] = None) -> Path:
    """Download (or reuse kagglehub's copy of) IQ-OTH/NCCD; returns the folder to load.

    ``dest`` puts the files there instead of kagglehub's cache. The result is checked to hold
    the three class folders before it is returned.
    """
    try:
        import kagglehub
    except ImportError:
        raise DatasetError(f"downloading needs the kagglehub package: pip install kagglehub. {BY_HAND}") from None
    try:
        folder = kagglehub.dataset_download(KAGGLE_DATASET, output_dir=None if dest is None else str(dest))
    except Exception as exc:  # network, HTTP and credential errors come in many types
        raise DatasetError(
            f"could not download {KAGGLE_DATASET} from Kaggle ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}). Check the internet connection; if Kaggle asks for "
            "credentials, put kaggle.json in ~/.kaggle/ or set KAGGLE_USERNAME and KAGGLE_KEY. " + BY_HAND
        ) from None
    path = Path(folder)
    discover(path)
    return path
