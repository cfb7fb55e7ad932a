"""Helpers shared by the benchmark scripts in this folder.

Kept apart from any one script so that importing a helper does not import that script's own
dependencies (``bench/evaluate.py`` used to import ``bench/train.py`` just for ``describe``).
"""

from __future__ import annotations

import platform

import torch


def describe(device: torch.device) -> str:
    """The device and torch version in one phrase, for the header of a timing table.

    Timings are only comparable on the same hardware, so every table says where it was measured.
    """
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    return f"CPU ({cpu}, {torch.get_num_threads()} threads), torch {torch.__version__}"
