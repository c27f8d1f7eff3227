"""torch.distributed set-up for runs launched by ``torchrun`` (NCCL on GPUs, gloo on CPU).

Nothing here is home-made communication: process groups, DistributedDataParallel and collectives
are PyTorch's. A run without torchrun's environment is a single process and every helper is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ltcls.data.base import Split, SplitBase
from ltcls.errors import world_size


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), once.

    The backend is NCCL when the run uses CUDA, gloo otherwise; each process uses GPU ``LOCAL_RANK``.
    """
    world = world_size()
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def info() -> DistInfo:
    """The current process's place in the (possibly absent) process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))



def gather_shards(tensor: torch.Tensor, total: int) -> torch.Tensor:
    """Rebuild a full sequence from rank shards taken as ``seq[rank::world]`` (all ranks get the result).

    Shards are padded to the same length for ``all_gather`` and interleaved back in the original order.
    """
    d = info()
    if not d.enabled:
        return tensor
    per_rank = -(-total // d.world_size)
    pad = per_rank - tensor.shape[0]
    padded = torch.cat([tensor, tensor.new_zeros((pad, *tensor.shape[1:]))]) if pad else tensor
    backend_device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    padded = padded.to(backend_device)
    parts = [torch.empty_like(padded) for _ in range(d.world_size)]
    dist.all_gather(parts, padded.contiguous())
    stacked = torch.stack(parts, dim=1).reshape(per_rank * d.world_size, *tensor.shape[1:])
    return stacked[:total].to(tensor.device)


class Shard(SplitBase):
    """Samples ``indices`` of ``dataset``, with its loading traits (``in_memory``, ``batched``)."""

    def __init__(self, dataset: Split, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, indices
        self.in_memory, self.batched, self.collate_fn = dataset.in_memory, dataset.batched, dataset.collate_fn

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int | Sequence[int]) -> object:
        if isinstance(index, int):
            return self.dataset[self.indices[index]]
        return self.dataset[[self.indices[i] for i in index]]  # a batched dataset: one batch of indices


def rank_shard(dataset: Split) -> Split:
    """This process's shard ``dataset[rank::world]`` for evaluation (the whole dataset in one process); the
    one sharding rule, undone by :func:`gather_shards` / :func:`gather_objects`."""
    d = info()
    return Shard(dataset, range(d.rank, len(dataset), d.world_size)) if d.enabled else dataset


def gather_objects(items: list[Any]) -> list[Any] | None:
    """Concatenate every rank's list on rank 0 (``None`` on the other ranks); the list itself in one process."""
    d = info()
    if not d.enabled:
        return items
    parts: list[Any] | None = [None] * d.world_size if d.is_main else None
    dist.gather_object(items, parts, dst=0)
    return [x for p in parts for x in p] if parts is not None else None


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
