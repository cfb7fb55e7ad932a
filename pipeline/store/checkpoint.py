"""The state to resume a run from: model, optimizer and RNG tensors plus the loop's own state.

``last.safetensors`` holds the tensors and, in its metadata, a JSON index (the loop state and
the optimizer's non-tensor entries), so tensors and index are replaced by one rename;
``last.json`` is a readable copy of the index for people and the dashboard. The loop state is
whatever JSON-ready mapping the trainer gives (epoch, step, best score, ...): the store keeps
it, the trainer interprets it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Final, Mapping

import torch
from torch import nn

from pipeline.errors import CheckpointError
from pipeline.json_object import parse_json_object
from pipeline.store.files import atomic_write_json
from pipeline.store.layout import LAST, LAST_META
from pipeline.store.tensors import check_state, load_tensors, save_tensors, unwrap

CHECKPOINT_FORMAT: Final[str] = "lunglab-checkpoint"
#: Keys of the index that belong to the store, not to the trainer's loop state.
_OWN_KEYS: Final[tuple[str, ...]] = ("optimizer", "format", "saved_at")


def has_checkpoint(run_dir: Path) -> bool:
    """Whether the run has a state to resume from (at least one finished epoch)."""
    return (Path(run_dir) / LAST).is_file()


def save_checkpoint(
    run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]
) -> None:
    """Write ``last.safetensors`` (model, optimizer tensors, CPU RNG) with ``state``, then ``last.json``."""
    tensors = {f"model.{name}": value for name, value in unwrap(model).state_dict().items()}
    saved = optimizer.state_dict()
    optimizer_state: dict[str, dict[str, Any]] = {}
    for param_id, entries in saved["state"].items():
        optimizer_state[str(param_id)] = {}
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim.{param_id}.{key}"] = value
                optimizer_state[str(param_id)][key] = {"tensor": f"optim.{param_id}.{key}"}
            else:
                optimizer_state[str(param_id)][key] = value
    tensors["rng.cpu"] = torch.get_rng_state()
    index = {
        "format": CHECKPOINT_FORMAT,
        **state,
        "saved_at": time.time(),
        "optimizer": {"param_groups": saved["param_groups"], "state": optimizer_state},
    }
    run_dir = Path(run_dir)
    save_tensors(run_dir / LAST, tensors, {"format": CHECKPOINT_FORMAT, "index": json.dumps(index)})
    atomic_write_json(run_dir / LAST_META, {key: value for key, value in index.items() if key != "optimizer"})


def load_checkpoint(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model, optimizer and RNG from ``last.safetensors``; return the loop state saved with them.

    Raises :class:`CheckpointError` when the file is damaged, NaN-poisoned, or was written for
    another architecture or optimizer; the run is then started anew rather than resumed.
    """
    run_dir = Path(run_dir)
    tensors, metadata = load_tensors(run_dir / LAST)
    source = f"{LAST} of run {run_dir.name}"
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{source} is not a resumable checkpoint of this lab")
    try:
        index = parse_json_object(metadata["index"], f"the resume index in {source}")
        weights = {
            name[len("model.") :]: value for name, value in tensors.items() if name.startswith("model.")
        }
        check_state(weights, unwrap(model), source)
        state = {
            int(param_id): {
                key: tensors[value["tensor"]] if isinstance(value, dict) else value
                for key, value in entries.items()
            }
            for param_id, entries in index["optimizer"]["state"].items()
        }
        for entries in state.values():
            for value in entries.values():
                if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
                    raise CheckpointError(f"{source}: the optimizer state contains NaN or infinite values")
        unwrap(model).load_state_dict(weights)
        optimizer.load_state_dict({"state": state, "param_groups": index["optimizer"]["param_groups"]})
        _match_layouts(optimizer)
        torch.set_rng_state(tensors["rng.cpu"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:  # CheckpointError is a ValueError
        raise CheckpointError(
            f"{source} is damaged or belongs to other settings ({error}); "
            "start a new run instead of resuming this one"
        ) from None
    return {key: value for key, value in index.items() if key not in _OWN_KEYS}


def _match_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each restored state tensor (momentum, moments) its parameter's memory layout.

    The file holds them contiguous; a channels-last model's parameters are not. Fused optimizers
    step parameter, gradient and state as one flat array each, so a state tensor in another layout
    is updated element by element against the wrong weights: a resumed run drifted from the same run
    uninterrupted from its first resumed epoch on.
    """
    for param, entries in optimizer.state.items():
        for key, value in entries.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                entries[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
