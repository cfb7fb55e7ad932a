"""Scans and datasets: reading JPEG/PNG/TIFF/BMP/DICOM, folder and synthetic datasets, leak-free splits."""

from pipeline.data.dataset import (
    LoadReport,
    ScanDataset,
    SkippedFile,
    adopt_synthetic_scans,
    export_synthetic_scans,
    load_dataset,
    same_data,
)
from pipeline.data.dicom import WINDOW_NAMES, Window, attacked_dicom
from pipeline.data.kaggle import download_iqothnccd
from pipeline.data.preprocess import preprocess_image
from pipeline.data.scan import ACCEPTED_FORMATS, Scan, open_scan, read_scan
from pipeline.data.spec import DataSpec, fold_data_settings
from pipeline.data.splits import Split, leakage_report, split_dataset, split_for, split_groups

__all__ = [
    "ACCEPTED_FORMATS", "DataSpec", "LoadReport", "Scan", "ScanDataset", "SkippedFile", "Split",
    "WINDOW_NAMES", "Window", "adopt_synthetic_scans", "attacked_dicom", "export_synthetic_scans", "download_iqothnccd", "fold_data_settings", "leakage_report",
    "load_dataset", "open_scan", "same_data", "preprocess_image", "read_scan", "split_dataset", "split_for",
    "split_groups",
]
