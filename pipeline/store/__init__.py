"""The run store: every file of a run, written atomically and read back without trust.

One directory per run (see :mod:`.layout` for its files). This package is their only owner:
:mod:`.files` writes atomically and reads with size limits, :mod:`.status` keeps ``status.json``
under a lock, :mod:`.metrics` the per-epoch lines, :mod:`.record` the run record and finding
runs, :mod:`.model` the kept model, :mod:`.checkpoint` the state to resume from, and
:mod:`.archive` zip export and import. Checkpoints are safetensors (never pickle), checked
tensor by tensor against a freshly built model. The store sits below training and evaluation
and imports neither.
"""

from pipeline.store.archive import export_run, import_run
from pipeline.store.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from pipeline.store.files import atomic_write_bytes, atomic_write_json, file_sha256, read_json, remove_partial_writes
from pipeline.store.layout import (
    CONFIG,
    LAST,
    LAST_META,
    METRICS,
    MODEL,
    REQUEST,
    RUN_FILES,
    STATUS,
    TRAINING_KIND,
)
from pipeline.store.metrics import append_metrics, read_metrics, write_metrics
from pipeline.store.model import load_model, save_model
from pipeline.store.record import (
    RunRecord,
    check_settings_with,
    created_at,
    has_config,
    list_runs,
    new_run_dir,
    read_config,
    read_record,
    read_settings,
    remove_run,
    remove_weights,
    resolve_run,
    write_config,
    write_request,
)
from pipeline.store.status import TERMINAL_PHASES, read_status, update_status
from pipeline.store.tensors import check_state, load_state, load_tensors, save_tensors, unwrap

__all__ = [
    "CONFIG", "LAST", "LAST_META", "METRICS", "MODEL", "REQUEST", "RUN_FILES", "STATUS", "TERMINAL_PHASES", "TRAINING_KIND",
    "RunRecord", "append_metrics", "atomic_write_bytes", "atomic_write_json", "check_settings_with",
    "check_state", "created_at", "load_state", "export_run", "file_sha256", "has_checkpoint", "has_config", "import_run", "list_runs",
    "load_checkpoint", "load_model", "load_tensors", "new_run_dir", "read_config", "read_json",
    "read_metrics", "read_record", "read_settings", "read_status", "remove_partial_writes", "remove_run", "remove_weights",
    "resolve_run", "save_checkpoint", "save_model", "save_tensors", "unwrap", "update_status",
    "write_config", "write_metrics", "write_request",
]
