"""The CUDA fast paths of training: bf16 autocast, channels_last, data on the GPU, torch.compile,
and NCCL DistributedDataParallel. Skipped without CUDA; ``bench/gpu.sh`` runs them on a GPU.

Tiny settings (ResNet-18, 32 px phantoms, one epoch): what is checked is that each path runs and
keeps the run store's promises (a finished status, finite metrics, a kept model that loads on the
CPU and predicts what it predicted on the GPU), not speed.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.store import list_runs, load_model, read_metrics, read_status
from pipeline.training import TrainConfig, train
from pipeline.training.distributed import DistContext
from pipeline.training.loop import Trainer
from tests.training_helpers import REPO, TINY, child_env, cli_args

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")]

ON_GPU = {**TINY, "device": "cuda", "epochs": 1, "amp": True, "channels_last": True}


def assert_finished_with_a_portable_model(run_dir: Path) -> None:
    assert read_status(run_dir)["phase"] == "done", read_status(run_dir)
    lines = read_metrics(run_dir)
    assert lines and all(math.isfinite(value) for line in lines for value in line.values()
                         if isinstance(value, float))
    on_gpu, record = load_model(run_dir, device="cuda")
    on_cpu, _ = load_model(run_dir, device="cpu")
    x = torch.rand(8, 1, record.data.image_size, record.data.image_size,
                   generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gpu_logits = on_gpu(x.cuda().contiguous(memory_format=torch.channels_last)).float().cpu()
        cpu_logits = on_cpu(x)
    # cuDNN convolutions use TF32 by default: agreement to about 1e-3 of the logits' scale
    assert torch.allclose(gpu_logits, cpu_logits, rtol=1e-2, atol=1e-2 * cpu_logits.abs().max().item())


def test_training_uses_bf16_autocast_on_cuda(tmp_path: Path) -> None:
    trainer = Trainer(TrainConfig.from_dict(ON_GPU), tmp_path, DistContext(0, 1, torch.device("cuda")), None)
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert trainer.amp_dtype == expected
    with trainer.autocast():
        out = torch.nn.Linear(4, 4).cuda()(torch.ones(2, 4, device="cuda"))
    assert out.dtype == expected


@pytest.mark.parametrize("strategy", ["standard", "pgd", "trades"])
def test_bf16_channels_last_training_keeps_the_store_promises(tmp_path: Path, strategy: str) -> None:
    run_dir = train(TrainConfig.from_dict({**ON_GPU, "strategy": strategy}), tmp_path)
    assert_finished_with_a_portable_model(run_dir)


@pytest.mark.timeout(300)  # compiling the training and the attack graphs takes a minute or two
def test_compiled_adversarial_training(tmp_path: Path) -> None:
    run_dir = train(TrainConfig.from_dict({**ON_GPU, "compile": True, "strategy": "pgd"}), tmp_path)
    assert_finished_with_a_portable_model(run_dir)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs one GPU per process: 2 GPUs")
def test_two_gpu_nccl_training_writes_one_loadable_run(tmp_path: Path) -> None:
    settings = {**ON_GPU, "epochs": 2, "strategy": "pgd"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "pipeline", "train", "--quiet", "--runs-dir", str(tmp_path), *cli_args(settings)]
    done = subprocess.run(command, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = list_runs(tmp_path)
    assert len(runs) == 1
    assert_finished_with_a_portable_model(runs[0].run_dir)
