"""A run's kept model: saved with its architecture, loaded only after every tensor is checked."""

from __future__ import annotations

from pathlib import Path
from typing import Final, Optional

import torch
from torch import nn

from pipeline.errors import CheckpointError, UserInputError
from pipeline.models import ScanClassifier, build_model
from pipeline.store.layout import LAST, MODEL
from pipeline.store.record import RunRecord, read_record
from pipeline.store.tensors import NARROW_FLOATS, load_state, load_tensors, save_tensors, unwrap

MODEL_FORMAT: Final[str] = "lunglab-model"


def save_model(path: Path, model: nn.Module, *, precision: Optional[torch.dtype] = None) -> None:
    """Save the weights of ``model`` (a ScanClassifier, possibly wrapped) with its architecture.

    ``precision`` (torch.float16 or torch.bfloat16) stores floating tensors at half precision, half
    the size; :func:`load_model` widens them back to float32. Raises ValueError for another dtype.
    """
    inner = unwrap(model)
    metadata = {"format": MODEL_FORMAT, "arch": inner.arch, "num_classes": str(inner.num_classes)}
    state = inner.state_dict()
    if precision is not None:
        if precision not in NARROW_FLOATS:
            raise ValueError(f"precision must be one of {sorted(map(str, NARROW_FLOATS))}, got {precision}")
        state = {name: t.to(precision) if t.is_floating_point() else t for name, t in state.items()}
    save_tensors(path, state, metadata)


def load_model(
    run_dir: Path | str, *, device: str | torch.device = "cpu", which: str = "best"
) -> tuple[ScanClassifier, RunRecord]:
    """Build the run's model and load its best (or ``which="last"``) weights, in eval mode, its
    convolution weights in channels-last layout: oneDNN's fast one on a CPU (ResNet-18 at 112 px on
    2 cores: a forward and backward pass 1.5x, a forward pass 1.9x faster; ``bench/evaluate.py --passes``)
    and the tensor cores' on a GPU. The answers are the same up to float rounding (logits within 1e-5).

    Raises :class:`CheckpointError` when the run, its record or its weights are missing,
    damaged or do not fit the recorded architecture.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run {run_dir} does not exist")
    if which not in ("best", "last"):
        raise UserInputError(f"which must be 'best' or 'last', got {which!r}")
    record = read_record(run_dir)
    if record.error:
        raise CheckpointError(record.error)
    config = record.config
    path = run_dir / (MODEL if which == "best" else LAST)
    if not path.is_file():
        raise CheckpointError(
            f"run {record.name} has no saved model yet ({path.name} is missing); "
            "wait until its first epoch has finished"
        )
    tensors, metadata = load_tensors(path)
    if which == "last":
        tensors = {
            name[len("model.") :]: tensor for name, tensor in tensors.items() if name.startswith("model.")
        }
    elif metadata.get("format") != MODEL_FORMAT or metadata.get("arch") != config["arch"]:
        raise CheckpointError(
            f"{path.name} of run {record.name} was not written for a {config['arch']} of this lab"
        )
    with torch.device("meta"):  # no random initialisation to throw away: every weight comes from the file
        model = build_model(config["arch"], num_classes=len(record.classes))
    load_state(tensors, model, f"{path.name} of run {record.name}")
    return model.to(device).to(memory_format=torch.channels_last).eval(), record
