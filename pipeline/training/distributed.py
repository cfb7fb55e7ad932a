"""Several processes, one training: the same loop under ``torchrun`` with DistributedDataParallel.

``torchrun --nproc_per_node=N -m pipeline train ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
without them everything here degrades to a single process and costs nothing. Every rank holds
the (small) dataset in memory and takes its own share of each epoch's shuffled order, crafts its
own adversarial examples, and only rank 0 writes the run directory. A sharded evaluation joins
the group the same way (:mod:`pipeline.evaluation.shards`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.device import select_device
from pipeline.errors import UserInputError


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among ``world_size`` and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> DistContext:
    """Join the process group when started by torchrun (gloo on CPU, NCCL on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(0, 1, select_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    chosen = select_device(device)
    if chosen.type == "cuda":
        if torch.cuda.device_count() <= local_rank:
            raise UserInputError(
                f"rank {rank} needs GPU {local_rank} but only {torch.cuda.device_count()} are visible"
            )
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    elif chosen.type != "cpu":
        raise UserInputError(
            f"several processes (torchrun) run on CUDA or CPU, not {chosen.type}; use --device cpu"
        )
    if not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return DistContext(rank, world_size, chosen)


def teardown(context: DistContext) -> None:
    if context.active and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, context: DistContext) -> nn.Module:
    """DistributedDataParallel around ``model`` when several processes train together."""
    if not context.active:
        return model
    return DistributedDataParallel(
        model, device_ids=[context.device.index] if context.device.type == "cuda" else None
    )


def shard(order: torch.Tensor, context: DistContext) -> torch.Tensor:
    """This rank's share of an epoch's order: equal lengths on all ranks (the rest is dropped)."""
    if not context.active:
        return order
    usable = len(order) - len(order) % context.world_size
    return order[context.rank : usable : context.world_size]


def all_sum(values: torch.Tensor, context: DistContext) -> torch.Tensor:
    """Sum a tensor of counts over all ranks (in place on a float64 copy; gloo needs CPU or CUDA)."""
    total = values.detach().to(torch.float64).clone()
    if context.active:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def any_rank(flag: bool, context: DistContext) -> bool:
    """True on every rank when it is true on one (so all ranks stop at the same batch)."""
    if not context.active:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=context.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_text(text: str, context: DistContext) -> str:
    """Rank 0's ``text`` on every rank (the run directory's path, chosen once)."""
    if not context.active:
        return text
    data = torch.zeros(4096, dtype=torch.uint8, device=context.device)
    if context.is_main:
        encoded = text.encode()
        if len(encoded) > len(data):
            raise UserInputError(
                "the run directory's path is longer than 4096 bytes; choose a shorter --runs-dir"
            )
        data[: len(encoded)] = torch.tensor(list(encoded), dtype=torch.uint8)
    dist.broadcast(data, src=0)
    return bytes(data.cpu().tolist()).rstrip(b"\0").decode()
