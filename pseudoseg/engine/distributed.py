"""Several processes (GPUs or nodes) through ``torch.distributed``.

Launch with ``torchrun --nproc_per_node N -m pseudoseg train ...`` (add
``--nnodes``/``--rdzv-endpoint`` for several machines). Every process draws the
same global batch indices and augmentation parameters and takes its own slice
of them; gradients are averaged by ``DistributedDataParallel``. With per-sample
losses and a global batch divisible by the number of processes, N processes
train the same model as one process with the same global batch (up to
floating-point reduction order; batch-norm statistics are per process unless
``SyncBatchNorm`` is used, which the engine does on CUDA).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def shard(self) -> slice:
        """This process's part of a global batch."""
        return slice(self.rank, None, self.world)


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group described by torchrun's environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
