"""The one place a run's DataLoaders are made: images, cached features and detection batches alike.

A loader can start in the middle of an epoch (``skip`` micro-batches already consumed, after an interrupt
checkpoint): the skip happens on the sampler's index sequence, before batching, so it works the same for a
per-sample dataset (PyTorch batches the samples) and for a ``batched`` one (cached features: the loader hands
the dataset each whole batch of indices).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass

import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler, SequentialSampler

from ltcls.data.base import Split


class SkipSampler(Sampler[int]):
    """``sampler`` without its first ``skip`` indices: the rest of an epoch interrupted after ``skip`` samples."""

    def __init__(self, sampler: Iterable[int] | Sized, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.skip, None)


@dataclass
class LoaderFactory:
    """Makes every DataLoader of a run: ``num_workers`` loader processes (none for in-memory data), pinned
    memory on CUDA, the task's ``collate_fn`` (unless the dataset has its own)."""

    num_workers: int
    device: torch.device
    collate_fn: Callable | None = None

    def __call__(self, dataset: Split, batch_size: int, sampler: Sampler[int] | None = None, *, train: bool = False,
                 skip: int = 0) -> DataLoader:
        """A loader over ``dataset`` in ``sampler``'s order (dataset order without one); ``train`` drops a last
        incomplete batch (when there is a full one); ``skip``: micro-batches of this epoch already consumed."""
        order: Sampler[int] = sampler if sampler is not None else SequentialSampler(dataset)
        drop_last = train and len(order) >= batch_size
        if skip:
            order = SkipSampler(order, skip * batch_size)
        workers = 0 if dataset.in_memory else self.num_workers
        pin = self.device.type == "cuda"
        batches = BatchSampler(order, batch_size, drop_last)
        if dataset.batched:  # indexed with each whole batch of indices: one gather, no collation
            return DataLoader(dataset, batch_size=None, sampler=batches, num_workers=workers, pin_memory=pin)
        return DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                          collate_fn=dataset.collate_fn or self.collate_fn, pin_memory=pin, persistent_workers=False)
