"""Training learns, adversarial training buys robustness, and every strategy and guard works."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.attacks import get_attack
from pipeline.data import load_dataset, split_dataset
from pipeline.device import autocast, mixed_precision
from pipeline.errors import CheckpointError, UserInputError
from pipeline.evaluation import confusion_matrix, per_class_recall
from pipeline.models import build_model
from pipeline.store import load_model, read_config, read_metrics, read_status
from pipeline.params import params_of
from pipeline.training import PRESETS, TrainConfig, train
from pipeline.training.augment import Augmentation
from pipeline.training.config import CPU_CHANNELS_LAST_FROM
from pipeline.training.loop import memory_format
from pipeline.training.strategies import STRATEGY_CLASSES, FastTraining
from pipeline.training.strategies import available as available_strategies
from tests.training_helpers import TINY, checkpoint_epoch, cli_args, make_blob_folder, start_cli

#: The module's trainings (the PGD-trained fixture above all) take minutes on a busy 2-core machine;
#: pytest's 600 s default is a guard against hangs, not a budget, so these tests get more room.
pytestmark = pytest.mark.timeout(1800)

#: The phantom at 64 px: ResNet18 fits it in a few epochs (small nodules need more pixels to generalise).
LEARN = {
    **TINY,
    "count": 160,
    "image_size": 64,
    "epochs": 5,
    "optimizer": "adamw",
    "lr": 5e-4,
    "weight_decay": 0.0,
    "val_steps": 2,
    "eval_size": 16,
}
#: Standard against PGD training on an easy folder where robust features exist (see make_blob_folder).
EPS = 16 / 255
ROBUST = {
    **TINY,
    "image_size": 32,
    "epochs": 6,  # PGD-10 at 16/255 on held-out scans, measured: standard 0.03, PGD-trained 0.55
    "optimizer": "adamw",
    "lr": 1e-3,
    "weight_decay": 0.0,
    "eps": EPS,
    "alpha": EPS / 2,
    "steps": 3,
    "val_steps": 2,
    "eval_size": 16,
    "val_fraction": 0.25,
    "test_fraction": 0.15,
    "split_strategy": "random",
}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_blob_folder(tmp_path_factory.mktemp("blobs")))


def _train(settings: dict, runs: Path) -> Path:
    torch.set_num_threads(1)  # module fixtures run outside the function-scoped fixture
    return train(TrainConfig.from_dict(settings), runs)


@pytest.fixture(scope="module")
def standard_run(runs: Path, blobs: str) -> Path:
    return _train({**ROBUST, "data": blobs}, runs)


@pytest.fixture(scope="module")
def pgd_run(runs: Path, blobs: str) -> Path:
    return _train({**ROBUST, "data": blobs, "strategy": "pgd"}, runs)


def _held_out_accuracy(run_dir: Path, *, attacked: bool) -> float:
    """Accuracy of the kept model on the run's own validation and test scans, clean or under PGD-10."""
    model, record = load_model(run_dir)
    config = record.config
    dataset = load_dataset(record.data)
    x, y = dataset.tensors()
    index = torch.as_tensor(config["split"]["val"] + config["split"]["test"])
    x, y = x[index], y[index]
    if attacked:
        x = get_attack("pgd", eps=config["eps"], steps=10, seed=1)(model, x, y)
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_standard_training_learns_the_phantom(runs: Path) -> None:
    run_dir = _train(LEARN, runs)
    lines = read_metrics(run_dir)
    assert len(lines) == LEARN["epochs"]
    assert lines[-1]["train_loss"] < 0.5 * lines[0]["train_loss"]
    assert max(line["train_acc"] for line in lines) >= 0.75  # eval mode, fixed training scans
    assert max(line["val_acc"] for line in lines) > 0.4  # chance is 1/3
    assert _held_out_accuracy(run_dir, attacked=False) > 0.4
    for key in (
        "train_loss",
        "train_acc",
        "train_robust_acc",
        "val_acc",
        "val_robust_acc",
        "val_balanced_acc",
        "val_loss",
        "lr",
        "time_s",
        "images_per_s",
        "train_images",
        "best",
    ):
        assert key in lines[0], key
    assert read_config(run_dir)["dataset"]["is_synthetic"]
    # standard training keeps the epoch with the best balanced accuracy (mean recall), whose figure is
    # the kept model's own on the validation scans (to one borderline scan: bf16 batches may differ)
    kept = lines[read_status(run_dir)["best_epoch"] - 1]
    assert kept["val_balanced_acc"] == max(line["val_balanced_acc"] for line in lines)
    model, record = load_model(run_dir)
    x, y = load_dataset(record.data).tensors()
    index = torch.as_tensor(record.config["split"]["val"])
    with torch.no_grad(), autocast(torch.device("cpu"), mixed_precision(torch.device("cpu"))):
        answers = model(x[index]).float().argmax(1)
    recall = per_class_recall(confusion_matrix(y[index].numpy(), answers.numpy()))
    one_scan = 1 / min(n for n in kept["val_labels"] if n)
    assert abs(kept["val_balanced_acc"] - np.nanmean(recall)) <= one_scan + 1e-9


def test_pgd_training_raises_pgd_accuracy(standard_run: Path, pgd_run: Path) -> None:
    standard = _held_out_accuracy(standard_run, attacked=True)
    robust = _held_out_accuracy(pgd_run, attacked=True)
    print(f"\nPGD-10 accuracy at 16/255 on held-out scans: standard {standard:.3f}, PGD-trained {robust:.3f}")
    assert robust > standard + 0.2
    assert _held_out_accuracy(pgd_run, attacked=False) > 0.6
    kept = read_metrics(pgd_run)[read_status(pgd_run)["best_epoch"] - 1]
    assert kept["val_robust_acc"] == max(line["val_robust_acc"] for line in read_metrics(pgd_run))


@pytest.mark.parametrize("strategy", ["fgsm-rs", "trades", "mart", "mixed"])
def test_every_adversarial_strategy_trains(runs: Path, strategy: str) -> None:
    config = TrainConfig.from_dict(
        {
            **TINY,
            "count": 30,
            "epochs": 1,
            "strategy": strategy,
            "cw_steps": 2,
            "imbalance": "sampler",
            "schedule": "onecycle",
        }
    )
    run_dir = train(config, runs)
    (line,) = read_metrics(run_dir)
    assert torch.isfinite(torch.tensor(line["train_loss"])) and 0 <= line["train_adv_acc"] <= 1
    load_model(run_dir)


def test_eps_warmup_ramps_the_training_budget_and_validates_at_the_full_one(runs: Path) -> None:
    eps = 8 / 255
    config = TrainConfig.from_dict({**TINY, "epochs": 3, "strategy": "pgd", "eps": eps, "eps_warmup": 0.5})
    lines = read_metrics(train(config, runs))
    # 3 epochs, ramp over half the steps: 2/3 of eps after the first epoch, all of it from the second
    assert [line["train_eps"] for line in lines] == pytest.approx([2 / 3 * eps, eps, eps])
    assert all(line["eps"] == eps for line in lines)  # robust validation stays at the real budget
    strategy = STRATEGY_CLASSES["pgd"](config, None)
    strategy.budget_scale = 0.25
    x = torch.rand(4, 1, 32, 32)
    model = build_model("resnet18").eval()
    delta = (strategy.pgd(model, x, torch.zeros(4, dtype=torch.long), seed=0) - x).abs().max().item()
    assert 0.2 * eps < delta <= 0.25 * eps + 1e-6


def test_init_from_starts_at_another_runs_model(runs: Path, blobs: str, standard_run: Path) -> None:
    settings = {**ROBUST, "data": blobs, "strategy": "pgd", "epochs": 1, "lr": 1e-7}
    tuned = _train({**settings, "init_from": standard_run.name}, runs)  # a name under the runs folder
    source, _ = load_model(standard_run)
    started, record = load_model(tuned)
    assert record.config["init_from"] == str(standard_run)
    weights = [(a, b) for a, b in zip(source.parameters(), started.parameters()) if a.ndim > 1]
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in weights)  # lr 1e-7: still the source's
    scratch, _ = load_model(_train(settings, runs))
    assert not torch.allclose(next(scratch.parameters()), next(source.parameters()), atol=1e-2)
    before = sorted(runs.iterdir())
    with pytest.raises(UserInputError, match="holds a resnet18"):
        _train({**settings, "arch": "resnet34", "init_from": str(standard_run)}, runs)
    assert sorted(runs.iterdir()) == before  # refused before a run directory was made
    with pytest.raises(UserInputError, match="not both"):
        TrainConfig.from_dict({**settings, "init_from": str(standard_run), "pretrained": True})
    with pytest.raises(CheckpointError, match="no run 'no-such-run' found"):
        _train({**settings, "init_from": "no-such-run"}, runs)
    assert sorted(runs.iterdir()) == before


def test_zero_init_residual_starts_every_block_as_its_shortcut(runs: Path) -> None:
    run_dir = train(TrainConfig.from_dict({**TINY, "epochs": 1, "lr": 1e-7, "zero_init_residual": True}), runs)
    model, _ = load_model(run_dir)
    backbone = model.backbone
    blocks = [block for layer in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)
              for block in layer]
    assert all(block.bn2.weight.abs().max() < 1e-4 for block in blocks)  # lr 1e-7: still zero
    default = build_model("resnet18").backbone.layer1[0].bn2.weight
    assert (default == 1).all()


def test_transfer_uses_another_runs_model(runs: Path, standard_run: Path) -> None:
    config = TrainConfig.from_dict(
        {
            **TINY,
            "count": 30,
            "epochs": 1,
            "strategy": "transfer",
            "transfer_run": str(standard_run),
            "transfer_eps": "2/255,4/255",
        }
    )
    run_dir = train(config, runs)
    (line,) = read_metrics(run_dir)
    train_scans = len(read_config(run_dir)["split"]["train"])
    assert line["train_images"] > 2 * train_scans  # the originals plus one crafted copy per budget
    assert read_config(run_dir)["transfer_run"] == str(standard_run)
    with pytest.raises(UserInputError, match="does not exist"):
        train(TrainConfig.from_dict({**TINY, "strategy": "transfer", "transfer_run": str(runs / "missing")}), runs)


def test_distillation_learns_another_runs_soft_labels(runs: Path, standard_run: Path) -> None:
    settings = {**TINY, "count": 30, "epochs": 1, "strategy": "distillation", "temperature": 10}
    run_dir = train(TrainConfig.from_dict({**settings, "teacher_run": standard_run.name}), runs)
    stored = read_config(run_dir)
    assert stored["teacher_run"] == str(standard_run)  # a name under the runs folder, resolved once
    assert stored["temperature"] == 10 and stored["select_by"] == "auto"
    (line,) = read_metrics(run_dir)
    assert math.isfinite(line["train_loss"]) and line["train_loss"] > 0
    with pytest.raises(UserInputError, match="no run 'missing' found"):
        train(TrainConfig.from_dict({**settings, "teacher_run": "missing"}), runs)


class _CollapsingFastTraining(FastTraining):
    """FGSM-RS whose objective turns against the labels after two epochs: a crafted, certain
    collapse of validation PGD accuracy (real catastrophic overfitting takes far longer to appear)."""

    steps_before_collapse = 0

    def step(self, net, model, x, y, seed):
        self.steps_before_collapse -= 1
        if self.steps_before_collapse < 0:
            y = (y + 1) % 3
        return super().step(net, model, x, y, seed)


def test_catastrophic_overfitting_guard_rolls_back_and_stops(
    runs: Path, blobs: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {
        **ROBUST,
        "data": blobs,
        "strategy": "fgsm-rs",
        "eps": 2 / 255,
        "alpha": None,
        "epochs": 5,
        "co_tolerance": 0.2,
    }
    dataset = load_dataset(blobs, image_size=settings["image_size"])
    split = split_dataset(
        dataset,
        val_fraction=settings["val_fraction"],
        test_fraction=settings["test_fraction"],
        strategy="random",
    )
    batches = len(split.train) // settings["batch_size"]
    monkeypatch.setattr(_CollapsingFastTraining, "steps_before_collapse", 2 * batches)  # two good epochs
    monkeypatch.setitem(STRATEGY_CLASSES, "fgsm-rs", _CollapsingFastTraining)
    run_dir = train(TrainConfig.from_dict(settings), runs)
    lines = read_metrics(run_dir)
    status = read_status(run_dir)
    assert "catastrophic overfitting" in (status["stop_reason"] or ""), lines
    collapsed = lines[-1]
    assert collapsed["rolled_back"] and len(lines) < settings["epochs"]
    best_before = max(line["val_robust_acc"] for line in lines[:-1])
    assert best_before - collapsed["val_robust_acc"] > settings["co_tolerance"]
    # the resumable checkpoint is the last good epoch's, and resuming does not train again
    assert checkpoint_epoch(run_dir) == collapsed["epoch"] - 1
    train(None, runs, resume=run_dir)
    assert read_metrics(run_dir) == lines


def test_config_validation_names_field_and_range() -> None:
    with pytest.raises(UserInputError, match=r"epochs must lie in \[1, 1000\]"):
        TrainConfig(epochs=0)
    with pytest.raises(UserInputError, match="eps must lie in .*4/255"):
        TrainConfig(eps=4)
    with pytest.raises(UserInputError, match="strategy must be one of"):
        TrainConfig(strategy="magic")
    with pytest.raises(UserInputError, match="unknown training setting"):
        TrainConfig.from_dict({"epoch": 3}, strict=True)
    assert TrainConfig(eps="4/255").eps == pytest.approx(4 / 255)
    assert TrainConfig(strategy="fgsm-rs").step_size == pytest.approx(1.25 * 4 / 255)
    assert TrainConfig(strategy="pgd").step_size == pytest.approx(1 / 255)
    assert set(PRESETS) == {"quick", "full"}
    assert params_of(TrainConfig)["strategy"].choices == available_strategies()  # the registry is the list
    assert available_strategies() == (
        "standard", "pgd", "fgsm-rs", "trades", "mart", "mixed", "transfer", "distillation", "extraction"
    )
    for name in PRESETS:
        assert TrainConfig.from_preset(name, strategy="pgd").strategy == "pgd"


def test_channels_last_is_used_where_it_makes_training_faster() -> None:
    """Channels-last on CUDA; on a CPU only from CPU_CHANNELS_LAST_FROM px (bench/memory_format.py)."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    small = TrainConfig.from_dict({**TINY, "image_size": CPU_CHANNELS_LAST_FROM - 1})
    large = TrainConfig.from_dict({**TINY, "image_size": CPU_CHANNELS_LAST_FROM})
    assert memory_format(small, cpu) == torch.contiguous_format
    assert memory_format(large, cpu) == memory_format(small, cuda) == torch.channels_last
    refused = TrainConfig.from_dict({**TINY, "image_size": CPU_CHANNELS_LAST_FROM, "channels_last": False})
    assert memory_format(refused, cpu) == memory_format(refused, cuda) == torch.contiguous_format
    assert memory_format(large, torch.device("meta")) == torch.contiguous_format  # neither CUDA nor a CPU


def test_augmentation_is_batched_bounded_and_replayable() -> None:
    x = torch.rand(6, 1, 32, 32)
    first = Augmentation()(x, torch.Generator().manual_seed(1))
    again = Augmentation()(x, torch.Generator().manual_seed(1))
    assert first.shape == x.shape and first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, again) and not torch.equal(first, x)
    still = Augmentation(0, 0, 0, 0, 0, 0, 0)(x, torch.Generator().manual_seed(1))
    assert torch.allclose(still, x, atol=1e-5)


def test_cli_trains_and_refuses_bad_input(tmp_path: Path) -> None:
    process = start_cli(
        "train",
        "--data",
        "synthetic",
        "--count",
        "30",
        "--arch",
        "resnet18",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--eps",
        "4/255",
        "--val-steps",
        "1",
        "--eval-size",
        "8",
        "--device",
        "cpu",
        "--runs-dir",
        str(tmp_path),
        "--quiet",
    )
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output
    assert f"run: {tmp_path}" in output and "synthetic" in output
    bad = start_cli("train", "--eps", "4", "--runs-dir", str(tmp_path))
    output = bad.communicate(timeout=120)[0]
    assert bad.returncode == 2 and "eps must lie in" in output and "Traceback" not in output


def _runs_in(runs: Path) -> list[str]:
    """The run folders under ``runs`` (MLflow's store beside them is not a run)."""
    if not runs.is_dir():
        return []
    return sorted(path.name for path in runs.iterdir() if path.is_dir() and not path.name.startswith(("mlruns", ".")))


def test_a_training_that_fails_before_its_first_epoch_leaves_no_run(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    # bad data, typed on the command line as a user would
    settings = {**TINY, "data": str(tmp_path / "no-such-folder")}
    process = start_cli("train", "--quiet", "--no-tracking", "--runs-dir", str(runs), *cli_args(settings))
    output, _ = process.communicate(timeout=300)
    assert process.returncode != 0 and "no-such-folder" in output, output
    assert _runs_in(runs) == []
    # a setting that passes its own check but fails at set-up: a transfer source that is not there
    config = TrainConfig.from_dict({**TINY, "strategy": "transfer", "transfer_run": str(runs / "missing")})
    with pytest.raises(UserInputError, match="does not exist"):
        train(config, runs, track=False)
    assert _runs_in(runs) == []


def test_a_training_that_fails_later_keeps_what_it_saved(tmp_path: Path) -> None:
    runs = tmp_path / "runs"

    def fail_in_the_second_epoch(done: int, total: int, message: str) -> None:
        if message.startswith("epoch 2/"):
            raise RuntimeError("the disk went away")

    with pytest.raises(RuntimeError, match="disk went away"):
        train(TrainConfig.from_dict({**TINY, "epochs": 2}), runs, progress=fail_in_the_second_epoch, track=False)
    (name,) = _runs_in(runs)
    assert checkpoint_epoch(runs / name) == 1 and [line["epoch"] for line in read_metrics(runs / name)] == [1]
    assert read_status(runs / name)["phase"] == "failed"
