"""The run store: checkpoints load back exactly, and nothing hostile gets in or out."""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import signal
import struct
import subprocess
import zipfile
from pathlib import Path
from typing import Iterator

import pytest
import torch

from pipeline.__main__ import main
from pipeline.data import DataSpec
from pipeline.errors import CheckpointError, UserInputError
from pipeline.jobs import delete_run, process_start_time
from pipeline.models import build_model
from pipeline.store import (
    CONFIG,
    MODEL,
    REQUEST,
    STATUS,
    TRAINING_KIND,
    atomic_write_bytes,
    export_run,
    import_run,
    list_runs,
    load_model,
    read_metrics,
    read_record,
    read_status,
    save_model,
    update_status,
)
from pipeline.evaluation.data import run_data
from pipeline.training import TrainConfig, train
from tests.training_helpers import TINY


def make_run(runs_dir: Path, name: str = "run-a", **config_changes) -> tuple[Path, torch.nn.Module]:
    """A finished run written through the store's own helpers (no training needed)."""
    run_dir = runs_dir / name
    run_dir.mkdir(parents=True)
    config = {
        **TrainConfig(arch="resnet18", data=DataSpec(image_size=32)).to_dict(),
        "num_classes": 3,
        "classes": ["benign", "malignant", "normal"],
        **config_changes,
    }
    (run_dir / CONFIG).write_text(json.dumps(config))
    model = build_model("resnet18")
    save_model(run_dir / MODEL, model)
    (run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_acc": 0.5, "best": True}) + "\n")
    update_status(run_dir, {"phase": "done"})
    return run_dir, model


def same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    """Every parameter and buffer equal, whatever the memory layout."""
    a, b = first.state_dict(), second.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_model_round_trip(tmp_path: Path) -> None:
    run_dir, model = make_run(tmp_path)
    loaded, record = load_model(run_dir)
    x = torch.rand(2, 1, 32, 32)
    model.eval()
    assert same_weights(loaded, model)
    assert torch.allclose(loaded(x), model(x), atol=1e-5)  # channels-last as loaded: rounding apart
    assert not loaded.training
    assert record.name == "run-a" and record.config["arch"] == "resnet18" and record.best["epoch"] == 1


def test_half_precision_weights_load_as_float32(tmp_path: Path) -> None:
    run_dir, model = make_run(tmp_path)
    save_model(run_dir / MODEL, model, precision=torch.float16)
    assert (run_dir / MODEL).stat().st_size < 0.55 * sum(t.numel() * 4 for t in model.state_dict().values())
    loaded, _ = load_model(run_dir)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    for name, tensor in model.state_dict().items():
        expected = tensor.half().to(tensor.dtype) if tensor.is_floating_point() else tensor
        assert torch.equal(loaded.state_dict()[name], expected), name
    with pytest.raises(ValueError, match="precision"):
        save_model(run_dir / MODEL, model, precision=torch.int8)


def test_job_folders_that_are_not_trainings_are_not_runs(tmp_path: Path) -> None:
    make_run(tmp_path, "run-a")
    for name, kind in (("demo-job", "demo"), ("evaluation-job", "evaluation")):
        (tmp_path / name).mkdir()
        update_status(tmp_path / name, {"phase": "done", "kind": kind})
    (tmp_path / "old-run").mkdir()
    update_status(tmp_path / "old-run", {"phase": "failed"})  # a status without a kind: an older run
    (tmp_path / "training").mkdir()
    update_status(tmp_path / "training", {"phase": "queued", "kind": TRAINING_KIND})
    assert sorted(record.name for record in list_runs(tmp_path)) == ["old-run", "run-a", "training"]


def _replace_model(run_dir: Path, data: bytes) -> None:
    (run_dir / MODEL).write_bytes(data)


def _expect_error(run_dir: Path, *words: str) -> str:
    with pytest.raises(CheckpointError) as caught:
        load_model(run_dir)
    message = str(caught.value)
    assert all(word in message for word in words), message
    return message


def test_truncated_and_tampered_files_are_refused(tmp_path: Path) -> None:
    run_dir, _ = make_run(tmp_path)
    data = (run_dir / MODEL).read_bytes()
    _replace_model(run_dir, data[: len(data) // 2])
    _expect_error(run_dir, "safetensors")
    _replace_model(run_dir, data[:4])
    _expect_error(run_dir, "safetensors")
    header_size = struct.unpack("<Q", data[:8])[0]
    garbled = bytearray(data)
    garbled[8 : 8 + header_size] = b"{" * header_size  # the header no longer parses
    _replace_model(run_dir, bytes(garbled))
    _expect_error(run_dir, "safetensors")
    _replace_model(run_dir, b"")
    _expect_error(run_dir)


class _Exploit:
    """Unpickling this would create a marker file: proof that code ran."""

    marker = ""

    def __reduce__(self):
        return (Path(self.marker).touch, ())


def test_pickles_named_safetensors_never_run(tmp_path: Path) -> None:
    run_dir, model = make_run(tmp_path)
    marker = tmp_path / "code-ran"
    exploit = _Exploit()
    exploit.marker = str(marker)
    _replace_model(run_dir, pickle.dumps(exploit))
    _expect_error(run_dir, "pickle")
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)  # a .pt checkpoint renamed to .safetensors
    _replace_model(run_dir, buffer.getvalue())
    _expect_error(run_dir)
    assert not marker.exists()


def test_wrong_shapes_dtypes_and_nan_are_refused(tmp_path: Path) -> None:
    run_dir, model = make_run(tmp_path)
    save_model(run_dir / MODEL, build_model("resnet18", num_classes=5))
    _expect_error(run_dir, "fc.weight", "(5, 512)")
    save_model(run_dir / MODEL, build_model("resnet18").double())  # half precision is widened; this is not
    _expect_error(run_dir, "float64")
    save_model(run_dir / MODEL, build_model("resnet34"))
    _expect_error(run_dir, "resnet18")
    with torch.no_grad():
        model.backbone.fc.bias[0] = float("nan")
    save_model(run_dir / MODEL, model)
    _expect_error(run_dir, "NaN", "fc.bias")


@pytest.mark.parametrize(
    "change, words",
    [
        ({"num_classes": 10**9}, "num_classes"),
        ({"data": {**DataSpec().to_dict(), "image_size": 10**6}}, "image_size"),
        ({"data": {**DataSpec().to_dict(), "image_size": 16}}, "at least 32"),
        ({"data": {"source": "synthetic"}}, "no image_size"),
        ({"data": {**DataSpec().to_dict(), "split_seed": -1}}, "split_seed"),
        ({"arch": "../../evil"}, "architecture"),
        ({"eps": float("nan")}, "eps"),
        ({"epochs": -5}, "epochs"),
        ({"strategy": "magic"}, "strategy"),
        ({"classes": ["a", "b"]}, "classes"),
    ],
)
def test_absurd_configs_are_refused(tmp_path: Path, change: dict, words: str) -> None:
    run_dir, _ = make_run(tmp_path, **change)
    _expect_error(run_dir, words)
    assert list_runs(tmp_path)[0].error  # listed (so it can be deleted), marked unreadable


#: Python's json parser recurses once per bracket, so this raises RecursionError, not JSONDecodeError.
DEEP_JSON = '{"data": ' + "[" * 100_000 + "]" * 100_000 + "}"


def test_deep_or_non_object_json_is_refused_and_listed(tmp_path: Path) -> None:
    run_dir, _ = make_run(tmp_path)
    (run_dir / CONFIG).write_text(DEEP_JSON)
    _expect_error(run_dir, CONFIG, "nested too deeply")
    [record] = list_runs(tmp_path)  # the store stays listable, the run marked unreadable
    assert "nested too deeply" in record.error
    (run_dir / CONFIG).write_text("[1, 2, 3]")
    _expect_error(run_dir, CONFIG, "JSON object", "array")
    (run_dir / CONFIG).write_bytes(b"\xff\xfe{")
    _expect_error(run_dir, CONFIG, "not valid JSON")
    (run_dir / "metrics.jsonl").write_text(DEEP_JSON + "\n" + json.dumps({"epoch": 2}) + "\n")
    assert read_metrics(run_dir) == [{"epoch": 2}]  # a damaged line is skipped


def test_train_settings_file_too_deep_or_not_an_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tmp_path / "settings.json"
    handler = signal.getsignal(signal.SIGTERM)  # the train command installs its own
    try:
        for text, words in ((DEEP_JSON, "nested too deeply"), ("[1]", "JSON object")):
            settings.write_text(text)
            assert main(["train", "--config-json", str(settings), "--runs-dir", str(tmp_path)]) == 2
            error = capsys.readouterr().err
            assert error.startswith("error: settings file") and words in error, error
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert list(tmp_path.iterdir()) == [settings]


def test_import_errors_name_the_zip_not_the_staging_folder(tmp_path: Path) -> None:
    entries = {**_valid_entries(tmp_path), "run/config.json": DEEP_JSON.encode()}
    archive = _zip(tmp_path / "shared-run.zip", entries)
    with pytest.raises(CheckpointError) as caught:
        import_run(archive, tmp_path / "runs")
    message = str(caught.value)
    assert "shared-run.zip" in message and "nested too deeply" in message and ".import" not in message
    assert not any((tmp_path / "runs").iterdir())


def test_export_import_round_trip(tmp_path: Path) -> None:
    run_dir, model = make_run(tmp_path / "runs")
    update_status(run_dir, {"job": {"pid": 12345, "command": ["secret", "/home/someone"]}})
    archive = export_run(run_dir, tmp_path / "out" / "run.zip")
    packing = {info.filename.split("/")[-1]: info.compress_type for info in zipfile.ZipFile(archive).infolist()}
    # weights as they are (deflating trained floats costs seconds for a few percent), JSON deflated
    assert packing[MODEL] == zipfile.ZIP_STORED and packing[CONFIG] == zipfile.ZIP_DEFLATED
    imported = import_run(archive, tmp_path / "other")
    again = import_run(archive, tmp_path / "other")
    assert imported != again and {imported.name, again.name} <= {
        r.name for r in list_runs(tmp_path / "other")
    }
    loaded, record = load_model(imported)
    x = torch.rand(1, 1, 32, 32)
    assert same_weights(loaded, model) and torch.allclose(loaded(x), model.eval()(x), atol=1e-5)
    assert "job" not in read_status(imported) and record.status["phase"] == "done"
    assert not [p for p in (tmp_path / "other").iterdir() if p.name.startswith(".import")]


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    """A zip of ``entries`` packed as the lab exports them: the real model stored, the rest deflated
    (a bomb's payload among them)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            stored = name.endswith(MODEL) and len(data) > 1 << 20
            archive.writestr(name, data, compress_type=zipfile.ZIP_STORED if stored else None)
    return path


def _valid_entries(tmp_path: Path) -> dict[str, bytes]:
    run_dir, _ = make_run(tmp_path / "source")
    return {f"run/{name}": (run_dir / name).read_bytes() for name in (CONFIG, MODEL)}


def _tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


@pytest.mark.parametrize(
    "evil_name",
    [
        "../evil.json",
        "/tmp/config.json",
        "run/../../config.json",
        "a/b/config.json",
        "run/evil.py",
        "run\\..\\config.json",
        "C:/config.json",
    ],
)
def test_path_traversal_and_foreign_files_are_refused(tmp_path: Path, evil_name: str) -> None:
    entries = {**_valid_entries(tmp_path), evil_name: b"{}"}
    archive = _zip(tmp_path / "evil.zip", entries)
    before = _tree(tmp_path)
    with pytest.raises(CheckpointError, match="not a run file"):
        import_run(archive, tmp_path / "runs")
    assert _tree(tmp_path) - before <= {"runs"}
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_symlink_entries_are_refused(tmp_path: Path) -> None:
    entries = _valid_entries(tmp_path)
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for name, data in entries.items():
            out.writestr(name, data)
        link = zipfile.ZipInfo("run/metrics.jsonl")
        link.external_attr = 0o120777 << 16
        out.writestr(link, "/etc/passwd")
    with pytest.raises(CheckpointError, match="link"):
        import_run(archive, tmp_path / "runs")


def test_zip_bombs_are_refused(tmp_path: Path) -> None:
    entries = _valid_entries(tmp_path)
    bomb = _zip(tmp_path / "bomb.zip", {**entries, "run/last.safetensors": bytes(64 << 20)})
    assert zipfile.ZipFile(bomb).getinfo("run/last.safetensors").compress_size < 1 << 20
    with pytest.raises(CheckpointError, match="zip bomb"):
        import_run(bomb, tmp_path / "runs")
    huge = _zip(tmp_path / "huge.zip", {**entries, "run/metrics.jsonl": b"x" * (65 << 20)})
    with pytest.raises(CheckpointError, match="bytes"):
        import_run(huge, tmp_path / "runs")
    assert not any((tmp_path / "runs").iterdir())


def _set_declared_size(data: bytearray, name: bytes, size: int) -> None:
    """Overwrite the uncompressed size of entry ``name`` in its local and central zip headers."""
    for signature, name_offset, size_offset in ((b"PK\x03\x04", 30, 22), (b"PK\x01\x02", 46, 24)):
        position = data.find(signature)
        while position != -1:
            if data[position + name_offset : position + name_offset + len(name)] == name:
                data[position + size_offset : position + size_offset + 4] = struct.pack("<I", size)
            position = data.find(signature, position + 4)


def test_declared_size_lies_are_caught(tmp_path: Path) -> None:
    """An entry whose headers claim fewer bytes than it holds is never written out in full."""
    entries = _valid_entries(tmp_path)
    archive = _zip(tmp_path / "lying.zip", {**entries, "run/metrics.jsonl": b"0" * 200_000})
    data = bytearray(archive.read_bytes())
    _set_declared_size(data, b"run/metrics.jsonl", 100)
    archive.write_bytes(bytes(data))
    assert zipfile.ZipFile(archive).getinfo("run/metrics.jsonl").file_size == 100
    with pytest.raises(CheckpointError):
        import_run(archive, tmp_path / "runs")
    assert not any((tmp_path / "runs").iterdir())


def test_not_a_zip_and_incomplete_runs(tmp_path: Path) -> None:
    fake = tmp_path / "run.zip"
    fake.write_text("hello")
    with pytest.raises(CheckpointError, match="not a zip"):
        import_run(fake, tmp_path / "runs")
    only_config = _zip(tmp_path / "partial.zip", {"run/config.json": b"{}"})
    with pytest.raises(CheckpointError, match="lacks"):
        import_run(only_config, tmp_path / "runs")
    entries = _valid_entries(tmp_path)
    broken = _zip(tmp_path / "broken.zip", {**entries, "run/model.safetensors": b"\x00" * 100})
    with pytest.raises(CheckpointError):
        import_run(broken, tmp_path / "runs")
    assert not any((tmp_path / "runs").iterdir())


def test_delete(tmp_path: Path) -> None:
    run_dir, _ = make_run(tmp_path)
    with pytest.raises(CheckpointError):
        delete_run(tmp_path)  # the runs folder itself is not a run
    job = {"pid": os.getpid(), "start_time": process_start_time(os.getpid())}
    update_status(run_dir, {"phase": "training", "job": job})
    with pytest.raises(UserInputError, match="still running"):
        delete_run(run_dir)
    update_status(run_dir, {"phase": "done"})
    delete_run(run_dir)
    assert not run_dir.exists() and list_runs(tmp_path) == []


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / STATUS
    atomic_write_bytes(target, b"old")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(CheckpointError, match="No space left.*previous version"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [path.name for path in tmp_path.iterdir()] == [STATUS]


def _flat_as_before_the_data_spec(settings: dict) -> dict:
    """Settings as the lab wrote them before DataSpec: data settings flat, no split seed (the training
    seed chose the split)."""
    data = settings.pop("data")
    data.pop("split_seed")
    return {**settings, "data": data.pop("source"), "data_seed": data.pop("seed"), **data}


def test_runs_written_before_the_data_spec_load_evaluate_and_resume(tmp_path: Path) -> None:
    settings = {**TINY, "count": 30, "epochs": 1, "seed": 3}
    run_dir = train(TrainConfig.from_dict(settings), tmp_path)
    config = json.loads((run_dir / CONFIG).read_text())
    split = config["split"]
    old = _flat_as_before_the_data_spec({**config, "epochs": 2})  # as if stopped after epoch 1 of 2
    old["split"]["seed"] = 3
    (run_dir / CONFIG).write_text(json.dumps(old))
    assert "image_size" in old and "split_seed" not in json.dumps(old)

    _, record = load_model(run_dir)
    assert record.data == DataSpec(source="synthetic", image_size=32, count=30, val_fraction=0.2,
                                   test_fraction=0.1, split_seed=3)
    dataset, stored = run_data(record)  # the same held-out scans as before
    assert stored.test.tolist() == split["test"] and len(dataset) == 30
    train(None, tmp_path, resume=run_dir)
    assert [line["epoch"] for line in read_metrics(run_dir)] == [1, 2]

    started = tmp_path / "killed-before-its-record"  # an older job that only wrote its request
    started.mkdir()
    flat = _flat_as_before_the_data_spec(TrainConfig.from_dict({**settings, "seed": 5}).to_dict())
    (started / REQUEST).write_text(json.dumps(flat))
    train(None, tmp_path, resume=started)
    assert read_record(started).data.split_seed == 5 and load_model(started)[0] is not None

    (run_dir / CONFIG).write_text(json.dumps({key: value for key, value in old.items() if key != "image_size"}))
    with pytest.raises(CheckpointError, match="config.json: the data settings give no image_size"):
        load_model(run_dir)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real filesystem of 1 MiB (tmpfs), where a model of 45 MB cannot fit; skipped where this
    process may not mount one."""
    folder = tmp_path / "full"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_a_model_that_does_not_fit_on_the_disk_is_named_and_the_old_file_kept(full_disk: Path) -> None:
    path = full_disk / MODEL
    path.write_bytes(b"the previous model")
    kept = "No space left on device.*previous version of the file is kept"
    with pytest.raises(CheckpointError, match=kept):
        save_model(path, build_model("resnet18"))
    assert path.read_bytes() == b"the previous model"
    assert not list(full_disk.glob(".*.tmp"))
