"""Every hostile input of the corpus through every entry point that takes it (issue 7, "Bad input, measured").

Each (input, entry point) pair becomes a row: refused with a clear message (a ``UserInputError``
that says why, no traceback, no patient data), a handled skip (a dataset leaves the file out and
says why), or accepted (and then really usable). Anything else fails the test of that entry
point, listing every pair that went wrong. The last test checks what must never happen at all:
a file written outside the allowed folders, a pickle executed, a path-traversal target created,
or a patient marker in any message, note, log, report, cache or export.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pytest
import torch

from pipeline.data import (
    DataSpec,
    attacked_dicom,
    load_dataset,
    open_scan,
    preprocess_image,
    read_scan,
    split_dataset,
)
from pipeline.data.sources import is_image_name
from pipeline.errors import UserInputError
from pipeline.__main__ import main
from pipeline.store import import_run, list_runs, load_model
from tests.corpus import (
    ACCEPTED,
    CHECKPOINT,
    CLI,
    CONFIG,
    FOLDER,
    KINDS,
    OUTCOMES,
    PATIENT_MARKERS,
    REAL,
    REFUSED,
    ROWS,
    RUN_ZIP,
    SCAN,
    SKIPPED,
    CorpusItem,
    Row,
    build_corpus,
    format_table,
    real_file_counts,
)
from tests.corpus.build import BYTES_LIMIT, CLI_RUNS
from tests.dashboard_helpers import run_until

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[1]
#: ``server.maxUploadSize`` in .streamlit/config.toml: bigger files never reach the page.
UPLOAD_LIMIT = 50 << 20
#: Command lines also run as a real process (each costs seconds of imports; the rest run in-process
#: through the same ``main``, which is all a process adds apart from the interpreter's traceback printing).
SUBPROCESS_CASES = ("cli train eps abc, typed (no --quiet)",)


@dataclass
class Lab:
    """The corpus, where entry points may write, and what they logged."""

    base: Path
    inputs: Path
    out: Path
    items: list[CorpusItem]
    before: dict[str, tuple]
    logs: list[str] = field(default_factory=list)

    def of(self, kind: str) -> list[CorpusItem]:
        return [item for item in self.items if kind in item.kinds]

    def item(self, name: str) -> CorpusItem:
        return next(item for item in self.items if item.name == name)

    @property
    def allowed(self) -> tuple[Path, ...]:
        """Folders entry points may write into: the test's output folder and the CLI's runs folder."""
        return (self.out, self.inputs / CLI_RUNS)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("corpus")
    items = build_corpus(base / "inputs")
    out = base / "out"
    for name in ("cache", "cwd", "dashboard-runs"):
        (out / name).mkdir(parents=True)
    lab = Lab(base, base / "inputs", out, items, _snapshot(base))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LUNGLAB_CACHE_DIR", str(out / "cache"))
        patch.setenv("LUNGLAB_RUNS_DIR", str(out / "dashboard-runs"))
        patch.chdir(out / "cwd")
        yield lab


# ---------------------------------------------------------------------------------- helpers
def _snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` (links not followed): type, size, modification time and inode."""
    seen = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            info = path.lstat()
            seen[str(path)] = (info.st_mode >> 12, info.st_size, info.st_mtime_ns, info.st_ino)
    return seen


@contextlib.contextmanager
def _captured(lines: list[str]) -> Iterator[None]:
    """Collect every log record and warning emitted inside the block into ``lines``."""

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            trace = logging.Formatter().formatException(record.exc_info) if record.exc_info else ""
            lines.append(f"{record.name}: {record.getMessage()} {trace}")

    handler = Collect(level=logging.DEBUG)
    logging.getLogger().addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        lines.extend(f"warning: {warning.message}" for warning in caught)
    finally:
        logging.getLogger().removeHandler(handler)


def _markers_in(text: str) -> list[str]:
    return [marker for marker in PATIENT_MARKERS if marker in text]


def _message_problems(message: str, item: CorpusItem) -> list[str]:
    """What makes a refusal message unclear: empty, a traceback, or silent on the reason."""
    problems = []
    if not message.strip():
        problems.append("empty message")
    if "Traceback" in message or '  File "' in message:
        problems.append("traceback in the message")
    if item.reason and item.reason.lower() not in message.lower():
        problems.append(f"does not say why (expected it to mention {item.reason!r})")
    return problems


def attempt(lab: Lab, item: CorpusItem, entry: str, call: Callable[[], Any],
            check: Optional[Callable[[Any], str]] = None, *, expected: Optional[str] = None) -> Row:
    """Run one entry point on one input and record how it ended.

    ``check`` inspects an accepted result (raising AssertionError when it is not usable) and
    returns the notes shown for it; notes and messages are searched for patient markers.
    """
    problems: list[str] = []
    with _captured(lab.logs):
        try:
            result = call()
        except UserInputError as error:
            outcome, detail = REFUSED, str(error)
            problems += _message_problems(detail, item)
        except Exception as error:  # a crash: exactly what this corpus hunts for
            outcome, detail = f"crashed ({type(error).__name__})", " ".join(str(error).split())[:300]
        else:
            outcome, detail = ACCEPTED, ""
            if check is not None:
                try:
                    detail = check(result)
                except AssertionError as error:
                    problems.append(f"accepted but unusable: {error}")
    return record(item, entry, outcome, detail, problems, expected)


def record(item: CorpusItem, entry: str, outcome: str, detail: str, problems: list[str],
           expected: Optional[str] = None) -> Row:
    """Add the checks every row gets (expected outcome, no patient marker, no forbidden file) and keep it."""
    expected = expected or item.expected_at(entry)
    problems = list(problems)
    problems += [f"shown text leaks patient marker {marker!r}" for marker in _markers_in(detail)]
    problems += [f"{path} was created" for path in item.forbidden if os.path.lexists(path)]
    if outcome != expected:
        problems.insert(0, f"expected {expected}")
    row = Row(item.name, entry, outcome, detail + (f"  [{'; '.join(problems)}]" if problems else ""),
              not problems, item.reason)
    ROWS.append(row)
    return row


def assert_all_handled(rows: list[Row]) -> None:
    failed = [row for row in rows if not row.ok]
    assert not failed, "inputs not handled:\n" + format_table(failed, width=400)


def _scan_check(result: Any) -> str:
    image = result.image if hasattr(result, "image") else result
    assert isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 2, "not a 2-D uint8 image"
    assert min(image.shape) >= 16, f"image of {image.shape} is below the minimum size"
    return "; ".join(getattr(result, "notes", ())) or f"{image.shape[1]}x{image.shape[0]} grey"


def _model_check(result: Any) -> str:
    model, run = result
    assert not model.training, "model not in eval mode"
    with torch.no_grad():
        logits = model(torch.zeros(1, 1, 32, 32))
    assert logits.shape == (1, 3) and torch.isfinite(logits).all(), f"bad logits {logits}"
    return f"{model.arch} of run {run.name}"


def _zip_folder(folder: Path, target: Path, *, replace: Optional[dict[str, bytes]] = None) -> Path:
    """Zip a run folder as an export would (stored, one top folder); ``replace`` swaps file contents."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in sorted(folder.iterdir()):
            data = (replace or {}).get(path.name)
            if data is None:
                archive.write(path, f"{folder.name}/{path.name}")
            else:
                archive.writestr(f"{folder.name}/{path.name}", data)
    return target


def _nothing_left(row: Row, item: CorpusItem, runs_dir: Path, expected: Optional[str] = None) -> Row:
    """A refused import must leave the run store as it was: no half-written run, no staging folder."""
    leftovers = sorted(path.name for path in runs_dir.iterdir()) if runs_dir.is_dir() else []
    if row.outcome != REFUSED or not leftovers:
        return row
    ROWS.remove(row)
    return record(item, row.entry_point, row.outcome, row.detail, [f"left {leftovers} in the run store"], expected)


def _cli_outcome(code: Any, stderr: str) -> tuple[str, str, list[str]]:
    """Classify a finished command: refused (non-zero, an 'error:' line, no traceback) or not."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:") or ": error:" in line]
    problems = []
    if "Traceback" in stderr:
        return "crashed (traceback on stderr)", " ".join(stderr.split())[-300:], problems
    if code in (0, None):
        return ACCEPTED, stderr.strip()[-300:], problems
    if not errors:
        problems.append(f"exit {code} without an 'error: ...' line")
    return REFUSED, (errors[-1] if errors else stderr.strip()[-300:]), problems


def _cli_row(item: CorpusItem, entry: str, code: Any, stdout: str, stderr: str) -> Row:
    outcome, detail, problems = _cli_outcome(code, stderr)
    if outcome == REFUSED and item.reason and item.reason.lower() not in detail.lower():
        problems.append(f"does not say why (expected it to mention {item.reason!r})")
    problems += [f"output leaks patient marker {marker!r}" for marker in _markers_in(stdout + stderr)]
    return record(item, entry, outcome, detail, problems)


# ------------------------------------------------------------------------------------ tests
def test_corpus_is_large_varied_and_made_by_code(lab: Lab) -> None:
    assert len(lab.items) >= 40
    assert {kind for item in lab.items for kind in item.kinds} == set(KINDS)
    assert {item.expected for item in lab.items} <= set(OUTCOMES)
    assert {ACCEPTED, REFUSED} <= {item.expected for item in lab.items}
    assert all(item.path.is_relative_to(lab.inputs) for item in lab.items)
    missing = [item.name for item in lab.items if not os.path.lexists(item.path) and item.name != "folder-missing"]
    assert not missing, f"corpus inputs not written: {missing}"
    assert sum(bool(item.markers) for item in lab.items) >= 3 and sum(bool(item.forbidden) for item in lab.items) >= 5


def test_read_scan_from_path(lab: Lab) -> None:
    rows = [attempt(lab, item, "read_scan(path)", lambda item=item: read_scan(item.path), _scan_check)
            for item in lab.of(SCAN)]
    assert_all_handled(rows)


def test_open_scan_from_bytes(lab: Lab) -> None:
    """The dashboard upload path: the bytes of the file, notes included."""
    items = [item for item in lab.of(SCAN) if item.path.is_file() and item.path.stat().st_size <= BYTES_LIMIT]

    def upload(data: bytes) -> Any:
        scan = open_scan(data)
        preprocess_image(scan.image, 32)  # what the attack page does next with an upload
        return scan

    rows = [attempt(lab, item, "open_scan(bytes)", lambda item=item: upload(item.path.read_bytes()), _scan_check)
            for item in items]
    assert_all_handled(rows)


def _real_check(item: CorpusItem) -> Callable[[Any], str]:
    """A readable real file is a usable scan; a re-encoded CT slice must also show what was encoded."""
    from tests.dicom_codecs import (
        LOSSLESS,
        ExplicitVRLittleEndian,
        ct_hounsfield,
        display_slice,
        encode,
        lung_window,
    )

    def check(result: Any) -> str:
        notes = _scan_check(result)
        image = (result.image if hasattr(result, "image") else result).astype(np.int64)
        if item.name.startswith("real/re-encoded/ct12-"):
            error = np.abs(image - lung_window(ct_hounsfield()))
            lossless = item.path.stem.removeprefix("ct12-") in {syntax.keyword for syntax in LOSSLESS}
            assert (error.max() == 0) if lossless else (error.mean() <= 2.0), f"shown image off by {error.max()}"
        elif item.name.startswith("real/re-encoded/rgb8-"):
            reference = read_scan(encode(display_slice(samples=3), ExplicitVRLittleEndian)).astype(np.int64)
            assert np.abs(image - reference).mean() <= 10.0, "colour capture decoded wrong"
        return notes

    return check


def test_real_files_read_or_refused_for_their_reason(lab: Lab) -> None:
    """pydicom's whole test set and a CT slice in every transfer syntax, by path and as an upload's bytes."""
    items = lab.of(REAL)
    assert len(items) >= 90 and sum(item.expected == ACCEPTED for item in items) >= 55
    rows = []
    for item in items:
        rows.append(attempt(lab, item, "read_scan(path)", lambda item=item: read_scan(item.path), _real_check(item)))
        rows.append(attempt(lab, item, "open_scan(bytes)", lambda item=item: open_scan(item.path.read_bytes()),
                            _real_check(item)))
    assert_all_handled(rows)
    counts = real_file_counts(rows)
    assert len(counts) == 4 and all("not handled" not in line for line in counts), counts
    assert any("re-encoded" in line and "refused 0" in line for line in counts), counts


def test_attacked_dicom_export(lab: Lab) -> None:
    """Exporting an attacked DICOM: refused for unreadable originals, de-identified for readable ones."""

    def export(data: bytes) -> tuple[bytes, np.ndarray]:
        image = read_scan(data)
        return attacked_dicom(data, 255 - image), 255 - image

    def check(result: tuple[bytes, np.ndarray]) -> str:
        exported, image = result
        leaked = [marker for marker in PATIENT_MARKERS if marker.encode() in exported]
        assert not leaked, f"exported DICOM holds {leaked}"
        assert np.array_equal(read_scan(exported), image), "exported DICOM does not read back as the image"
        return f"exported {len(exported)} bytes, de-identified"

    items = [item for item in lab.of(SCAN) if item.path.suffix == ".dcm" and item.path.is_file()]
    rows = [attempt(lab, item, "attacked_dicom", lambda item=item: export(item.path.read_bytes()), check)
            for item in items]
    assert_all_handled(rows)


def test_dataset_with_every_scan_skips_or_keeps_each(lab: Lab) -> None:
    """One good dataset with every corpus scan mixed in: unreadable files are skipped with a reason."""
    folder = lab.item("folder-every-scan").path
    with _captured(lab.logs):
        first = load_dataset(folder, image_size=32)
        again = load_dataset(folder, image_size=32)
    assert again.report.from_cache and again.paths == first.paths and torch.equal(again.images, first.images)
    kept = {Path(path).name for path in first.paths}
    skipped = {Path(item.path).name: item.reason for item in first.report.skipped}
    report_text = json.dumps(first.report.to_dict()) + first.name
    assert not _markers_in(report_text), f"dataset report leaks {_markers_in(report_text)}"
    rows = []
    for item in (item for item in lab.of(FOLDER) if SCAN in item.kinds):
        expected = SKIPPED if item.expected == REFUSED else ACCEPTED
        name = item.path.name
        if name in kept:
            notes = [notes for path, notes in first.report.file_notes.items() if Path(path).name == name]
            outcome, detail = ACCEPTED, "; ".join(notes[0]) if notes else "kept"
        elif name in skipped:
            outcome, detail = SKIPPED, skipped[name]
        elif not is_image_name(item.path):
            ignored = [note for note in first.report.notes if "non-image file" in note]
            outcome, detail = (SKIPPED, ignored[0]) if ignored else ("ignored without a note", "")
        else:
            outcome, detail = "neither kept nor reported", ""
        problems = _message_problems(detail, item) if outcome == SKIPPED and name in skipped else []
        rows.append(record(item, "load_dataset(folder with it)", outcome, detail, problems, expected))
    assert_all_handled(rows)


def test_load_dataset_folders(lab: Lab) -> None:
    def check(dataset: Any) -> str:
        assert all(count > 0 for count in dataset.class_counts().values()), "a class is empty"
        text = json.dumps(dataset.report.to_dict()) + dataset.name + repr(dataset)
        assert not _markers_in(text), f"dataset report leaks {_markers_in(text)}"
        if dataset.studies is None:
            return f"{len(dataset)} scans, {len(dataset.report.skipped)} skipped"
        studies = split_dataset(dataset, val_fraction=0.25, test_fraction=0.25).report["studies"]
        assert studies["patients_on_two_sides"] == 0, "a patient is on two sides of the split"
        assert not _markers_in(json.dumps(studies)), "the split report leaks a patient marker"
        return f"{len(dataset)} scans; split by patient: {studies['summary']}"

    items = [item for item in lab.of(FOLDER) if SCAN not in item.kinds]
    rows = [attempt(lab, item, "load_dataset", lambda item=item: load_dataset(item.path, image_size=32), check)
            for item in items]
    assert_all_handled(rows)


def test_load_model_from_run_folders(lab: Lab) -> None:
    rows = []
    for item in lab.of(CHECKPOINT) + lab.of(CONFIG):
        run_dir = item.path if item.path.is_dir() else item.path.parent
        rows.append(attempt(lab, item, "load_model", lambda run_dir=run_dir: load_model(run_dir), _model_check))
        if (run_dir / "last.safetensors").exists():
            rows.append(attempt(lab, item, "load_model(last)",
                                lambda run_dir=run_dir: load_model(run_dir, which="last"), _model_check))
    assert_all_handled(rows)


def test_import_run_zips(lab: Lab) -> None:
    """Run imports: hostile zips, and every tampered run folder and absurd config as an export."""
    zips = lab.out / "zips"
    cases = [(item, item.path) for item in lab.of(RUN_ZIP) if not item.path.is_dir()]
    cases += [(item, _zip_folder(item.path, zips / f"{item.name}.zip")) for item in lab.of(CHECKPOINT)]
    # the config is checked before the weights are read, so a stand-in model keeps these zips small
    cases += [(item, _zip_folder(item.path.parent, zips / f"{item.name}.zip",
                                 replace={"model.safetensors": b"\0" * 64})) for item in lab.of(CONFIG)]
    rows = []
    for item, archive in cases:
        runs_dir = lab.out / "imports" / item.name

        def check(imported: Path, runs_dir: Path = runs_dir) -> str:
            assert imported.parent == runs_dir, f"imported to {imported}, outside {runs_dir}"
            assert [record.run_dir for record in list_runs(runs_dir)] == [imported], "not listed as a run"
            return _model_check(load_model(imported))

        row = attempt(lab, item, "import_run", lambda archive=archive, runs_dir=runs_dir: import_run(archive, runs_dir),
                      check)
        rows.append(_nothing_left(row, item, runs_dir))
        if archive.parent == zips:  # made by this test: free the disk at once
            archive.unlink()
    assert_all_handled(rows)


def test_cli_arguments_in_process(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m pipeline`` through its ``main``: every bad value exits non-zero with 'error: ...'."""
    handler = signal.getsignal(signal.SIGTERM)
    rows = []
    try:
        for item in lab.of(CLI):
            capsys.readouterr()
            with _captured(lab.logs):
                try:
                    code: Any = main(list(item.args))
                except SystemExit as exit_:
                    code = exit_.code
                except Exception as error:  # escaped main: the process would print a traceback
                    code, crash = 1, f"Traceback (escaped main): {type(error).__name__}: {error}"
                else:
                    crash = ""
            captured = capsys.readouterr()
            rows.append(_cli_row(item, "python -m pipeline (in-process)", code, captured.out,
                                 captured.err + crash))
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert_all_handled(rows)


def test_cli_arguments_as_processes(lab: Lab) -> None:
    """Command lines as real processes: exit status and stderr exactly as a user sees them."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    items = [lab.item(name) for name in SUBPROCESS_CASES]
    processes = [subprocess.Popen([sys.executable, "-m", "pipeline", *item.args], cwd=lab.out / "cwd", env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for item in items]
    rows = []
    for item, process in zip(items, processes):
        try:
            stdout, stderr = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
            stderr += "\nTraceback: the command hung and was killed"
        rows.append(_cli_row(item, "python -m pipeline (process)", process.returncode, stdout, stderr))
    assert_all_handled(rows)


def _page_texts(node: Any) -> Iterator[str]:
    """Every piece of text an AppTest element tree would show (element protos, recursively)."""
    proto = getattr(node, "proto", None)
    if proto is not None:
        yield str(proto)
    for child in getattr(node, "children", {}).values():
        yield from _page_texts(child)


def _shown(app: Any) -> str:
    """All a viewer of the page could read: main area and sidebar, every element's content."""
    return "\n".join(text for root in (app.main, app.sidebar) for text in _page_texts(root))


def test_dashboard_upload_on_the_attack_page(lab: Lab) -> None:
    """The real attack page in AppTest: every scan uploaded shows a message or the scan, never a traceback."""
    page = REPO / "dashboard" / "views" / "attack.py"
    from streamlit.testing.v1 import AppTest

    from dashboard.ui.session import RUN_KEY

    run_dir = lab.out / "dashboard-runs" / "run-valid"
    shutil.copytree(lab.item("run-valid").path, run_dir, copy_function=os.link)
    app = AppTest.from_file(str(page), default_timeout=120)
    app.session_state[RUN_KEY] = str(run_dir)
    with _captured(lab.logs):
        app.run()
        assert not app.exception, [element.value for element in app.exception]
        app.segmented_control(key="attack:source").set_value("Upload").run()
    items = [item for item in lab.of(SCAN) if item.path.is_file() and item.path.stat().st_size <= UPLOAD_LIMIT]
    rows = []
    for item in items:
        with _captured(lab.logs):
            app.file_uploader(key="attack:upload").set_value(
                (item.path.name, item.path.read_bytes(), "application/octet-stream")).run()
        errors = [element.value for element in app.error]
        shown = _shown(app)
        problems = [f"page shows patient marker {marker!r}" for marker in _markers_in(shown)]
        if app.exception:
            outcome, detail = "exception shown", " ".join(app.exception[0].value.split())[:300]
        elif errors:
            outcome, detail = REFUSED, errors[0]
            problems += _message_problems(detail, item)
        elif any(box.key == "attack:upload-label" for box in app.selectbox):
            outcome = ACCEPTED
            detail = "; ".join(caption.value for caption in app.caption if caption.value.startswith("Note:")) \
                or "scan shown, ready to attack"
        else:
            outcome, detail = "neither the scan nor a message shown", ""
        rows.append(record(item, "dashboard upload (attack page)", outcome, detail, problems))
    assert_all_handled(rows)


def test_dashboard_data_page_with_each_folder(lab: Lab) -> None:
    """The real Data page in AppTest, pointed at each dataset folder of the corpus."""
    page = REPO / "dashboard" / "views" / "data.py"
    from streamlit.testing.v1 import AppTest

    from dashboard.ui.session import DATASET_KEY

    app = AppTest.from_file(str(page), default_timeout=120)
    rows = []
    for item in (item for item in lab.of(FOLDER) if SCAN not in item.kinds):
        app.session_state[DATASET_KEY] = DataSpec(source=str(item.path), image_size=64)
        with _captured(lab.logs):
            app.run()
            # a first load runs in the background (the page polls); rerun until it shows the data or a message
            run_until(app, lambda at: bool(at.exception or at.error or [
                element for element in at.markdown if element.value.startswith("**")]))
        shown = _shown(app)
        problems = [f"page shows patient marker {marker!r}" for marker in _markers_in(shown)]
        loaded = [element.value for element in app.markdown if element.value.startswith("**")]
        errors = [element.value for element in app.error]
        if app.exception:
            outcome, detail = "exception shown", " ".join(app.exception[0].value.split())[:300]
        elif loaded:
            outcome, detail = ACCEPTED, f"{loaded[0]} shown" + (f"; then: {errors[0]}" if errors else "")
        elif errors:
            outcome, detail = REFUSED, errors[0]
            problems += _message_problems(detail, item)
        else:
            outcome, detail = "neither the dataset nor a message shown", ""
        rows.append(record(item, "dashboard data page", outcome, detail, problems))
    assert_all_handled(rows)


def test_import_weights_as_a_new_run(lab: Lab) -> None:
    """The Models page's "import weights trained elsewhere": a bare .safetensors file, checked, then stored."""
    from dashboard.ui.checkpoints import import_checkpoint

    valid = lab.item("run-valid").path / "model.safetensors"
    cases = [(item, item.path / "model.safetensors", "resnet18") for item in lab.of(CHECKPOINT)
             if (item.path / "model.safetensors").is_file()
             and (item.name == "run-valid" or not (item.path / "model.safetensors").samefile(valid))]
    cases += [(lab.item(name), lab.item(name).path, "resnet18") for name in ("model.pt", "zip-torch-save-pt")]
    cases.append((lab.item("run-valid"), lab.item("run-valid").path / "model.safetensors", "resnet50"))
    rows = []
    for item, weights, arch in cases:
        runs_dir = lab.out / "weights" / f"{item.name}-{arch}"
        entry = "import weights" if arch == "resnet18" else f"import weights as {arch}"
        # the weights file alone decides (the user picks the architecture; the file's own label is not used)
        fits = item.expected_at("load_model") == ACCEPTED or item.name == "run-wrong-arch-metadata"
        expected = ACCEPTED if fits and arch == "resnet18" and CHECKPOINT in item.kinds else REFUSED
        row = attempt(lab, item, entry, lambda: import_checkpoint(weights, runs_dir, arch=arch, image_size=32),
                      lambda run_dir: _model_check(load_model(run_dir)), expected=expected)
        rows.append(_nothing_left(row, item, runs_dir, expected))
    assert_all_handled(rows)


def test_dashboard_evaluate_page_with_each_bad_epsilon(lab: Lab) -> None:
    """The epsilons of the evaluate command lines, typed into the real Evaluate page's form instead."""
    page = REPO / "dashboard" / "views" / "evaluate.py"
    from streamlit.testing.v1 import AppTest

    from dashboard.ui.session import RUN_KEY

    store = lab.out / "evaluate-store"
    shutil.copytree(lab.item("run-valid").path, store / "run-valid", copy_function=os.link)
    os.environ["LUNGLAB_RUNS_DIR"] = str(store)
    app = AppTest.from_file(str(page), default_timeout=120)
    app.session_state[RUN_KEY] = str(store / "run-valid")
    app.run()
    rows = []
    for item in (item for item in lab.of(CLI) if item.name.startswith("cli evaluate eps")):
        text = item.args[item.args.index("--eps") + 1]
        with _captured(lab.logs):
            app.text_input(key="evaluate:eps").set_value(text)
            app.button[0].click().run()  # the form's submit button
        errors = [element.value for element in app.error]
        started = [path for path in (store / "run-valid").rglob("status.json") if path.parent != store / "run-valid"]
        if app.exception:
            outcome, detail = "exception shown", " ".join(app.exception[0].value.split())[:200]
        elif errors:
            outcome, detail = REFUSED, errors[0]
        else:
            outcome, detail = ACCEPTED, f"an evaluation job was started ({len(started)})" if started else "no message"
        problems = _message_problems(detail, item) if outcome == REFUSED else []
        rows.append(record(item, "dashboard evaluate page (typed)", outcome, f"{text!r}: {detail}", problems))
    assert len(rows) >= 5
    assert_all_handled(rows)


def test_dashboard_models_page_with_each_stored_run(lab: Lab) -> None:
    """The real Models page listing a run store that holds one tampered run (each in turn) beside nothing else."""
    page = REPO / "dashboard" / "views" / "models.py"
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_file(str(page), default_timeout=120)
    rows = []
    for item in lab.of(CHECKPOINT) + lab.of(CONFIG):
        run_dir = item.path if item.path.is_dir() else item.path.parent
        store = lab.out / "stores" / item.name
        shutil.copytree(run_dir, store / run_dir.name, copy_function=os.link)
        os.environ["LUNGLAB_RUNS_DIR"] = str(store)  # read on every script run; the fixture restores it
        with _captured(lab.logs):
            app.run()
        listed = app.dataframe[0].value if app.dataframe else None
        row = None if listed is None else listed[listed["run"] == run_dir.name]
        shown = _shown(app)
        problems = [f"page shows patient marker {marker!r}" for marker in _markers_in(shown)]
        if app.exception:
            outcome, detail = "exception shown", " ".join(app.exception[0].value.split())[:200]
        elif row is None or row.empty:
            outcome, detail = "not listed", ""
        elif row["problem"].iloc[0]:
            outcome, detail = SKIPPED, f"listed as unreadable: {row['problem'].iloc[0]}"
        else:
            outcome, detail = ACCEPTED, f"listed, state {row['state'].iloc[0]}"
        # listing reads the records only; weights are checked when a model is loaded (tested above)
        rows.append(record(item, "dashboard models page (run store)", outcome, detail, problems,
                           SKIPPED if CONFIG in item.kinds else ACCEPTED))
    assert_all_handled(rows)


@pytest.fixture
def streamlit_error_details() -> Iterator[None]:
    """Show Streamlit's own exceptions in full: its file-type check must be told apart from a crash.

    The lab's config.toml hides exception details from users ("none"), which would redact both alike.
    """
    from streamlit import config

    before = config.get_option("client.showErrorDetails")
    config.set_option("client.showErrorDetails", "full")
    yield
    config.set_option("client.showErrorDetails", before)


def test_dashboard_models_page_imports(lab: Lab, streamlit_error_details: None) -> None:
    """Run zips and weight files uploaded on the real Models page: a message or a new run, never a traceback."""
    page = REPO / "dashboard" / "views" / "models.py"
    from streamlit.testing.v1 import AppTest

    store = lab.out / "upload-store"
    store.mkdir()
    os.environ["LUNGLAB_RUNS_DIR"] = str(store)
    app = AppTest.from_file(str(page), default_timeout=120)
    app.run()
    small = [item for item in lab.of(CHECKPOINT) if (item.path / "model.safetensors").is_file()
             and (item.path / "model.safetensors").stat().st_size < 1 << 20]
    cases = [(item, "models:import-zip", "models:import", item.path, "run zip") for item in lab.of(RUN_ZIP)
             if item.path.is_file()]
    cases += [(item, "models:import-weights", "models:import-weights-go", item.path / "model.safetensors",
               "weights") for item in [*small, lab.item("run-valid"), lab.item("run-nan-weight")]]
    rows = []
    for item, uploader, button, upload, what in cases:
        before = set(os.listdir(store))
        if what == "weights":
            app.selectbox(key="models:import-arch").set_value("resnet18")
            app.number_input(key="models:import-size").set_value(32)
        with _captured(lab.logs):
            app.file_uploader(key=uploader).set_value((upload.name, upload.read_bytes(), "application/octet-stream"))
            app.run()
            offered = any(widget.key == button for widget in app.button)
            if offered:
                app.button(key=button).click().run()
        new = sorted(set(os.listdir(store)) - before)
        errors = [element.value for element in app.error]
        shown = _shown(app)
        problems = [f"page shows patient marker {marker!r}" for marker in _markers_in(shown)]
        exception = " ".join(app.exception[0].value.split())[:200] if app.exception else ""
        if exception.startswith("Invalid file extension"):  # Streamlit's own check, as the browser's picker does
            outcome, detail = REFUSED, f"refused by the file picker: {exception}"
        elif exception:
            outcome, detail = "exception shown", exception
        elif errors:
            outcome, detail = REFUSED, errors[0]
            problems += _message_problems(detail, item)
            problems += [f"left {new} in the run store"] if new else []
        elif new:
            outcome, detail = ACCEPTED, f"imported as {new[0]}"
        else:
            outcome, detail = "neither a run nor a message" + ("" if offered else " (no import button)"), ""
        fits = item.expected_at("load_model") == ACCEPTED or item.name == "run-wrong-arch-metadata"
        expected = (ACCEPTED if fits else REFUSED) if what == "weights" else None
        rows.append(record(item, f"dashboard models page ({what} upload)", outcome, detail, problems, expected))
        for name in new:
            shutil.rmtree(store / name)
        app = AppTest.from_file(str(page), default_timeout=120)  # a fresh session: no upload left over
        app.run()
    assert_all_handled(rows)


def test_nothing_written_outside_no_code_run_no_patient_data(lab: Lab) -> None:
    """Runs last: the checks that hold across every entry point at once."""
    after = _snapshot(lab.base)
    changed = sorted(path for path, info in after.items()
                     if lab.before.get(path) != info and not any(Path(path).is_relative_to(a) for a in lab.allowed))
    removed = sorted(set(lab.before) - set(after))
    assert not changed, f"written outside the allowed folders: {changed[:10]}"
    assert not removed, f"corpus inputs removed: {removed[:10]}"
    forbidden = [path for item in lab.items for path in item.forbidden]
    assert forbidden and not [path for path in forbidden if os.path.lexists(path)], "a pickle ran or a zip escaped"
    evil = [path for path in after if "lunglab-corpus-evil" in path]
    assert not evil and not list(Path("/tmp").glob("lunglab-corpus-evil-*")), f"path traversal wrote {evil}"
    leaks = sorted({marker for line in lab.logs for marker in _markers_in(line)})
    assert not leaks, f"patient markers in logs or warnings: {leaks}"
    inputs = {info[3] for info in lab.before.values()}  # hard links to corpus files were not written by anyone
    written = [Path(path) for path, info in after.items()
               if info[0] == 0o10 and lab.before.get(path) != info and info[1] <= BYTES_LIMIT and info[3] not in inputs]
    pattern = re.compile(b"|".join(re.escape(marker.encode()) for marker in PATIENT_MARKERS))
    leaking = [str(path) for path in written if pattern.search(path.read_bytes())]
    assert not leaking, f"patient markers in written files (caches, runs, exports): {leaking}"
    assert not [row for row in ROWS if _markers_in(row.detail)], "a message carries a patient marker"
