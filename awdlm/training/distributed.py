"""Data-parallel training under ``torchrun``: the process group, column shards and rank-0-only output.

``torchrun --nproc_per_node=N -m awdlm.train ...`` starts N processes and sets
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``. Each process trains a replica of
the model on its own contiguous share of the ``trainer.batch_size`` training
columns, and ``DistributedDataParallel`` averages the gradients. Without
``WORLD_SIZE`` > 1 in the environment nothing here starts a process group.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from awdlm.config import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place among the data-parallel ranks; ``world_size == 1`` without ``torchrun``."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_gather_object(self, value: Any) -> list[Any]:
        """Return ``value`` from every rank, in rank order; ``[value]`` without a process group."""
        if not self.enabled:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def broadcast_object(self, value: Any) -> Any:
        """Return rank 0's ``value`` on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def environment_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_process_group(device_name: str) -> ProcessGroup:
    """Join the process group that ``torchrun`` describes in the environment, if ``WORLD_SIZE`` > 1.

    The backend is NCCL when the run trains on CUDA, else gloo. On CUDA each
    rank uses ``cuda:LOCAL_RANK``; :func:`rank_device` returns that device.
    """
    world_size = environment_world_size()
    if world_size <= 1:
        return ProcessGroup()
    if dist.is_initialized():
        return ProcessGroup(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size())
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    uses_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    backend = "nccl" if uses_cuda else "gloo"
    if uses_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    log.debug("rank %d of %d joined the %s process group", rank, world_size, backend)
    return ProcessGroup(rank, local_rank, world_size)


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: torch.device, group: ProcessGroup) -> torch.device:
    """Return ``cuda:LOCAL_RANK`` for a CUDA run with a process group, else ``device`` unchanged."""
    if group.enabled and device.type == "cuda":
        return torch.device("cuda", group.local_rank)
    return device


def local_batch_size(batch_size: int, group: ProcessGroup) -> int:
    """Return the columns each rank trains on; raise ConfigError when they do not split evenly."""
    if batch_size % group.world_size:
        raise ConfigError(
            f"invalid trainer.batch_size={batch_size} for {group.world_size} processes: each process "
            f"trains on an equal share of the columns, so the batch size must be a multiple of "
            f"{group.world_size}; set trainer.batch_size={max(1, batch_size // group.world_size) * group.world_size} "
            f"or change --nproc_per_node"
        )
    return batch_size // group.world_size


def shard_columns(columns: Tensor, group: ProcessGroup) -> Tensor:
    """Return this rank's contiguous share of the ``(N, B)`` columns, ``(N, B / world_size)``."""
    width = local_batch_size(columns.size(1), group)
    return columns[:, group.rank * width : (group.rank + 1) * width].contiguous()


def gather_columns(tensor: Tensor, group: ProcessGroup, dim: int) -> Tensor:
    """Concatenate every rank's ``tensor`` along ``dim`` in rank order: the inverse of sharding."""
    if not group.enabled:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(group.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=dim)


def take_columns(tensor: Tensor, group: ProcessGroup, dim: int) -> Tensor:
    """Return this rank's share of ``tensor`` along ``dim``, as :func:`shard_columns` cuts it."""
    if not group.enabled:
        return tensor
    width = tensor.size(dim) // group.world_size
    return tensor.narrow(dim, group.rank * width, width).contiguous()


def mean_over_ranks(values: Tensor, group: ProcessGroup) -> Tensor:
    """Return the element-wise mean of ``values`` over the ranks; NaN on any rank gives NaN everywhere."""
    if not group.enabled:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / group.world_size


def max_over_ranks(value: int, group: ProcessGroup, device: torch.device) -> int:
    if not group.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def parameter_digests(model: torch.nn.Module, group: ProcessGroup) -> list[str]:
    """Return every rank's SHA-256 of its parameter bytes, in rank order, to check that the replicas agree."""
    digest = hashlib.sha256()
    for parameter in model.parameters():
        digest.update(parameter.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return group.all_gather_object(digest.hexdigest())
