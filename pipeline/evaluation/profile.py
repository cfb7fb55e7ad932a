"""What a run's model does on its own held-out scans, computed once per checkpoint and kept beside the run.

Where a model is used one scan at a time (the Attack page, the scan report), three judgments need
more than the one scan: whether the model is a trained classifier at all (:mod:`.degenerate`,
from its answers on the validation split), whether the scan is out of its training
distribution (:mod:`.ood`, fitted on training scans, thresholded on validation scans), and
whether an adversarial-example detector flags it (:mod:`.detectors`: the same Mahalanobis
detector, and feature squeezing thresholded on the validation scans; a profile written before
feature squeezing existed is computed anew). Both come
from one pass over the run's stored split, saved as ``validation.safetensors`` in the run
directory (tensors plus JSON metadata; nothing is unpickled) and keyed on the checkpoint file's
content digest, so a retrained or replaced model is profiled anew. It is derived
data: a damaged file is recomputed, and it does not travel in an export.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from pipeline.data import ScanDataset, load_dataset
from pipeline.errors import CheckpointError
from pipeline.evaluation.data import run_data
from pipeline.evaluation.degenerate import AnswerCheck, check_answers
from pipeline.evaluation.detectors import FALSE_POSITIVE_RATE, Detector, FeatureSqueezing, MahalanobisDetection
from pipeline.evaluation.ood import MahalanobisDetector, fit_detector, fit_scans
from pipeline.guard import exclusive_eval
from pipeline.progress import ProgressCallback, staged
from pipeline.store import MODEL, file_sha256, load_tensors, read_record, save_tensors

PROFILE = "validation.safetensors"
FORMAT = "lunglab-validation-profile"


@dataclass
class ValidationProfile:
    """The model's answers on the validation split and its out-of-distribution detector."""

    trained: AnswerCheck
    detector: MahalanobisDetector
    #: Feature squeezing thresholded on the validation scans.
    squeezing: FeatureSqueezing

    def detectors(self) -> list[Detector]:
        """The adversarial-example detectors this profile calibrated, each flagging 5% of clean
        validation scans: Mahalanobis (the out-of-distribution detector) and feature squeezing."""
        return [MahalanobisDetection(self.detector), self.squeezing]


def checkpoint_key(run_dir: Path) -> str:
    """The identity of the run's saved model: ``sha256:<hex>`` of its file's bytes.

    A content digest, not a size and time, so a profile made elsewhere for the same weights (the
    shipped demo's, copied into a fresh run store) is found; hashed once per file version in a process.
    """
    path = Path(run_dir) / MODEL
    stat = path.stat()
    return _digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    return f"sha256:{file_sha256(Path(path))}"


def validation_profile(
    run_dir: Path | str,
    model: nn.Module,
    *,
    progress: Optional[ProgressCallback] = None,
    load: Callable[..., ScanDataset] = load_dataset,
) -> ValidationProfile:
    """The profile of the model saved in ``run_dir`` (``model`` is that model, loaded), from the cache
    when it belongs to the current checkpoint, else computed now and cached.

    Raises CheckpointError for a run without a saved model or without a stored split (weights
    imported from elsewhere): there are no held-out scans to compare with.
    """
    run_dir = Path(run_dir)
    if not (run_dir / MODEL).is_file():
        raise CheckpointError(f"run {run_dir.name} has no saved model to profile")
    key = checkpoint_key(run_dir)
    cached = _read(run_dir / PROFILE, key)
    if cached is not None:
        return cached
    record = read_record(run_dir)
    if record.error:
        raise CheckpointError(record.error)
    classes = record.classes
    dataset, split = run_data(record, progress=staged(progress, 0, 2, "loading scans"), load=load)
    device = next(model.parameters()).device
    x_train, y_train = _scans(dataset, fit_scans(split.train), device)
    x_val, y_val = _scans(dataset, split.val, device)
    detector = fit_detector(model, x_train, y_train, x_val,
                            progress=staged(progress, 1, 2, "out-of-distribution detector"))
    squeezing = FeatureSqueezing()
    squeezing.calibrate(model, x_val, FALSE_POSITIVE_RATE)
    with exclusive_eval(model), torch.no_grad():
        answers = torch.cat([model(chunk).argmax(1).cpu() for chunk in x_val.split(64)])
    profile = ValidationProfile(check_answers(answers.numpy(), y_val.numpy(), classes), detector, squeezing)
    _write(run_dir / PROFILE, key, profile)
    return profile


def _scans(
    dataset: ScanDataset, indices: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scans ``indices`` as float ``[N, 1, S, S]`` in ``[0, 1]`` on ``device``, labels int64 on the CPU
    (only these are converted from the dataset's 8-bit images, not the whole dataset)."""
    rows = torch.as_tensor(np.asarray(indices, dtype=np.int64))
    images = dataset.images[rows].unsqueeze(1).to(device).float().div_(255.0)
    return images, torch.from_numpy(np.asarray(dataset.labels)[rows.numpy()].copy())


def _write(path: Path, key: str, profile: ValidationProfile) -> None:
    trained = profile.trained
    facts = {
        **profile.detector.facts(),
        "classes": list(trained.classes),
        "answers": list(trained.answers),
        "labels": list(trained.labels),
        "correct": trained.correct,
        "squeezing": profile.squeezing.facts(),
    }
    save_tensors(path, profile.detector.tensors(), {"format": FORMAT, "checkpoint": key,
                                                      "facts": json.dumps(facts)})


def _read(path: Path, key: str) -> Optional[ValidationProfile]:
    """The cached profile, or None when there is none, it belongs to another checkpoint, is damaged, or
    was written before feature squeezing was calibrated in it."""
    if not path.is_file():
        return None
    try:
        tensors, metadata = load_tensors(path)
        if metadata.get("format") != FORMAT or metadata.get("checkpoint") != key:
            return None
        facts: dict[str, Any] = json.loads(metadata["facts"])
        trained = AnswerCheck(tuple(facts["classes"]), tuple(facts["answers"]), tuple(facts["labels"]),
                              int(facts["correct"]))
        squeezing = FeatureSqueezing.from_facts(facts["squeezing"])  # KeyError before it existed: recompute
        return ValidationProfile(trained, MahalanobisDetector.from_parts(tensors, facts), squeezing)
    except (CheckpointError, KeyError, TypeError, ValueError):
        return None
