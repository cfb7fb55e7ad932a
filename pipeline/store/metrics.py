"""``metrics.jsonl``: one JSON line per finished epoch, replaced whole so no line is ever half written."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from pipeline.errors import CheckpointError
from pipeline.json_object import parse_json_object
from pipeline.store.files import atomic_write_bytes, read_limited
from pipeline.store.layout import METRICS


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Per-epoch metrics, one per epoch in epoch order; a damaged line (never written by us) is skipped."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    lines: dict[int, dict[str, Any]] = {}
    for text in read_limited(path).decode("utf-8", errors="replace").splitlines():
        with contextlib.suppress(CheckpointError):
            line = parse_json_object(text, METRICS)
            if isinstance(line.get("epoch"), int):
                lines[line["epoch"]] = line
    return [lines[epoch] for epoch in sorted(lines)]


def write_metrics(run_dir: Path, lines: list[dict[str, Any]]) -> None:
    """Replace ``metrics.jsonl`` as a whole (it is small): no half line, no duplicate epoch."""
    by_epoch = {int(line["epoch"]): line for line in lines}
    text = "".join(json.dumps(by_epoch[epoch], allow_nan=False) + "\n" for epoch in sorted(by_epoch))
    atomic_write_bytes(Path(run_dir) / METRICS, text.encode())


def append_metrics(run_dir: Path, line: dict[str, Any]) -> None:
    """Add one epoch's line, replacing a line of the same epoch left by an interrupted attempt."""
    kept = [old for old in read_metrics(run_dir) if old["epoch"] < line["epoch"]]
    write_metrics(run_dir, [*kept, line])
