"""Class-aware samplers for decoupled training (Kang et al., ICLR 2020), distributed-ready.

Every sampler draws one GLOBAL index sequence per epoch from a generator seeded by (seed, epoch) alone, so
all ranks agree on it without communication; the sequence is padded by wrapping around to a multiple of
``num_replicas`` and rank ``r`` takes ``seq[r::num_replicas]``. An epoch has ``len(targets)`` draws
whatever the sampler ("an epoch is N/batch steps"). The trainer passes the runtime facts (``targets``,
``seed``, ``epochs``, ``num_replicas``, ``rank``); everything else in a constructor is a yaml
hyper-parameter.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from ltcls.data.base import SAMPLERS

_SEED_STRIDE = 1_000_003


class LTSampler(Sampler[int]):
    """Base class: the global sequence of an epoch (``global_indices``), rank sharding, epoch state."""

    def __init__(self, targets: Sequence[int], seed: int = 0, epochs: int = 1, num_replicas: int = 1,
                 rank: int = 0) -> None:
        targets = np.asarray(targets, dtype=np.int64)
        if targets.ndim != 1 or len(targets) == 0:
            raise ValueError(f"targets must be a non-empty 1-D sequence of labels, got shape {targets.shape}")
        if targets.min() < 0:
            raise ValueError(f"targets must be >= 0, got {int(targets.min())}")
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.targets = torch.from_numpy(targets)
        self.class_counts = torch.bincount(self.targets)
        self.seed = int(seed)
        self.epochs = int(epochs)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        """Draws per epoch, over all ranks (before padding)."""
        return len(self.targets)

    def generator(self, epoch: int) -> torch.Generator:
        """The same generator on every rank for a given (seed, epoch)."""
        return torch.Generator().manual_seed((self.seed * _SEED_STRIDE + epoch) % 2**63)

    def global_indices(self, epoch: int) -> torch.Tensor:
        """The full (unpadded) index sequence of ``epoch``: what a single process would iterate."""
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.set_epoch(int(state["epoch"]))

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        seq = self.global_indices(self.epoch)
        total = len(self) * self.num_replicas
        if total > len(seq):
            seq = seq.repeat(math.ceil(total / len(seq)))[:total]
        return iter(seq[self.rank:total:self.num_replicas].tolist())


@SAMPLERS.register("instance")
class InstanceSampler(LTSampler):
    """Instance-balanced (q = 1): a fresh random permutation of the samples each epoch, no replacement."""

    def global_indices(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.num_samples, generator=self.generator(epoch))


class ClassWeightedSampler(LTSampler):
    """Draws ``N`` samples with replacement, class ``j`` with probability ``class_probs(epoch)[j]`` and
    uniformly within the class (sample weight ``p_j / n_j``). Subclasses define ``class_probs``."""

    def class_probs(self, epoch: int) -> torch.Tensor:
        raise NotImplementedError

    def global_indices(self, epoch: int) -> torch.Tensor:
        counts = self.class_counts.double()
        per_class = torch.where(counts > 0, self.class_probs(epoch) / counts.clamp(min=1), 0.0)
        weights = per_class[self.targets]
        return torch.multinomial(weights, self.num_samples, replacement=True, generator=self.generator(epoch))


@SAMPLERS.register("power")
class PowerSampler(ClassWeightedSampler):
    """``p_j ∝ n_j ** q`` over classes with samples: q = 1 instance-, 1/2 square-root-, 0 class-balanced."""

    def __init__(self, targets: Sequence[int], seed: int = 0, epochs: int = 1, num_replicas: int = 1,
                 rank: int = 0, q: float = 1.0) -> None:
        super().__init__(targets, seed=seed, epochs=epochs, num_replicas=num_replicas, rank=rank)
        if q < 0:
            raise ValueError(f"q must be >= 0, got {q}")
        self.q = float(q)

    def class_probs(self, epoch: int) -> torch.Tensor:
        counts = self.class_counts.double()
        p = torch.where(counts > 0, counts.pow(self.q), 0.0)
        return p / p.sum()


@SAMPLERS.register("class_balanced")
class ClassBalancedSampler(PowerSampler):
    """Class-balanced (q = 0): every class with samples equally likely (cRT, LWS)."""

    def __init__(self, targets: Sequence[int], seed: int = 0, epochs: int = 1, num_replicas: int = 1,
                 rank: int = 0) -> None:
        super().__init__(targets, seed=seed, epochs=epochs, num_replicas=num_replicas, rank=rank, q=0.0)


@SAMPLERS.register("sqrt")
class SqrtSampler(PowerSampler):
    """Square-root sampling (q = 1/2)."""

    def __init__(self, targets: Sequence[int], seed: int = 0, epochs: int = 1, num_replicas: int = 1,
                 rank: int = 0) -> None:
        super().__init__(targets, seed=seed, epochs=epochs, num_replicas=num_replicas, rank=rank, q=0.5)


@SAMPLERS.register("progressive")
class ProgressiveSampler(ClassWeightedSampler):
    """Progressively balanced: ``p_j(e) = (1 - e/E) * n_j/N + (e/E) / C``, ``E = epochs``, ``e`` the 0-based
    epoch (clamped to E), ``C`` the number of classes with samples."""

    def class_probs(self, epoch: int) -> torch.Tensor:
        counts = self.class_counts.double()
        t = min(epoch, self.epochs) / self.epochs
        present = (counts > 0).double()
        return (1.0 - t) * counts / counts.sum() + t * present / present.sum()
