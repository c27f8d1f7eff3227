"""Class-aware samplers for decoupled training (Kang et al., ICLR 2020), distributed-ready.
from ltcls.registries import SAMPLERS

Every sampler draws one GLOBAL index sequence per epoch from a generator seeded by (seed, epoch) alone, so
all ranks agree on it without communication; the sequence is padded by wrapping around to a multiple of
``num_replicas`` and rank ``r`` takes ``seq[r::num_replicas]``. An epoch has ``len(targets)`` draws
("an epoch is N/batch steps") except for ``class_aware`` (Kang's cRT / LWS sampler: ``max_class_count * C``
draws) and ``repeat_factor`` (``sum(r(I))`` draws), whose epochs are longer by design. The trainer passes
the runtime facts (``targets``, ``seed``, ``epochs``, ``num_replicas``, ``rank``); everything else in a
constructor is a yaml hyper-parameter.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Sampler

from ltcls.registries import SAMPLERS

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


@SAMPLERS.register("class_aware")
class ClassAwareSampler(LTSampler):
    """Kang et al.'s stage-2 sampler (classifier-balancing ``ClassAwareSampler``, ``num_samples_cls: 4`` in its
    ImageNet-LT / Places-LT cRT and LWS configs).

    Classes are drawn by cycling a list of the classes with samples, reshuffled at every pass; each drawn
    class contributes ``num_samples_cls`` consecutive images taken from its own cycle over its images,
    also reshuffled at every pass (so an image repeats only after all images of its class were drawn).
    One epoch is ``max_class_count * C`` draws (C = classes with samples): every class is seen as often as
    the largest one, 11x the instance-balanced epoch on ImageNet-LT, 29x on Places-LT.

    Unlike the reference, whose cycles carry over from one epoch to the next, every epoch's sequence is
    drawn afresh from the (seed, epoch) generator, so that it is the same on every rank and after a resume.
    """

    def __init__(self, targets: Sequence[int], seed: int = 0, epochs: int = 1, num_replicas: int = 1,
                 rank: int = 0, num_samples_cls: int = 4) -> None:
        super().__init__(targets, seed=seed, epochs=epochs, num_replicas=num_replicas, rank=rank)
        if isinstance(num_samples_cls, bool) or not isinstance(num_samples_cls, int) or num_samples_cls < 1:
            raise ValueError(f"num_samples_cls must be an integer >= 1, got {num_samples_cls!r}")
        self.num_samples_cls = num_samples_cls
        self.present = torch.nonzero(self.class_counts > 0).flatten()
        order = torch.argsort(self.targets, stable=True)
        self.class_indices = list(order.split(self.class_counts[self.present].tolist()))

    @property
    def num_samples(self) -> int:
        return int(self.class_counts.max()) * len(self.present)

    def global_indices(self, epoch: int) -> torch.Tensor:
        gen = self.generator(epoch)
        s, num_present = self.num_samples_cls, len(self.present)
        picks = math.ceil(self.num_samples / s)
        # The class cycle: shuffled passes over the present classes (positions 0..C-1 of self.present).
        passes = math.ceil(picks / num_present)
        class_seq = torch.rand(passes, num_present, generator=gen).argsort(dim=1).flatten()[:picks]
        picks_per_class = torch.bincount(class_seq, minlength=num_present).tolist()
        blocks = []
        for members, k in zip(self.class_indices, picks_per_class):
            n = len(members)
            # The class's own cycle: shuffled passes over its images, cut into k runs of s.
            cycle = torch.rand(math.ceil(k * s / n), n, generator=gen).argsort(dim=1).flatten()[:k * s]
            blocks.append(members[cycle].view(k, s))
        runs = torch.empty(picks, s, dtype=torch.int64)
        runs[torch.argsort(class_seq, stable=True)] = torch.cat(blocks)  # the j-th pick of a class gets its j-th run
        return runs.flatten()[:self.num_samples]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "num_samples_cls": self.num_samples_cls}


@SAMPLERS.register("repeat_factor")
class RepeatFactorSampler(LTSampler):
    """Repeat-factor sampling for detection (Gupta et al., LVIS, CVPR 2019), on images.

    ``r(c) = max(1, sqrt(repeat_thresh / f(c)))`` with ``f(c)`` the fraction of training images that
    contain category ``c``; an image repeats ``r(I) = max over its categories of r(c)`` times per epoch
    (1 for an image without annotations). The per-image category sets come from the runtime ``dataset``
    (its ``image_categories``: the labels present in each image).

    ``rounding``: ``"ceil"`` (default, mmdetection's ``ClassBalancedDataset``) repeats each image
    ``ceil(r(I))`` times, so every epoch has the same ``sum(ceil(r))`` draws; ``"stochastic"``
    (detectron2's ``RepeatFactorTrainingSampler``) repeats it ``floor(r) + Bernoulli(frac(r))`` times,
    drawn per epoch from the (seed, epoch) generator; detectron2 streams these without epochs, ltcls
    keeps the epoch at ``round(sum(r))`` draws (the expected number), truncating or wrapping the
    epoch's sequence, so the lr schedule and the step count stay fixed. The repeated indices are
    shuffled; an epoch is longer than the dataset (that is the point of RFS).
    """

    def __init__(self, targets: Sequence[int] | None = None, dataset: object = None, seed: int = 0, epochs: int = 1,
                 num_replicas: int = 1, rank: int = 0, repeat_thresh: float = 1e-3,
                 rounding: Literal["ceil", "stochastic"] = "ceil") -> None:
        categories = getattr(dataset, "image_categories", None)
        if categories is None:
            raise ValueError("repeat_factor sampling needs a dataset with per-image category sets "
                             "(image_categories), e.g. lvis")
        if targets is None:
            targets = np.zeros(len(categories), dtype=np.int64)
        super().__init__(targets, seed=seed, epochs=epochs, num_replicas=num_replicas, rank=rank)
        if len(categories) != len(self.targets):
            raise ValueError(f"{len(categories)} per-image category sets for {len(self.targets)} targets")
        if not repeat_thresh > 0:
            raise ValueError(f"repeat_thresh must be positive, got {repeat_thresh}")
        if rounding not in ("ceil", "stochastic"):
            raise ValueError(f"rounding must be 'ceil' or 'stochastic', got {rounding!r}")
        self.repeat_thresh = float(repeat_thresh)
        self.rounding = rounding
        self.repeat_factors = repeat_factors(categories, self.repeat_thresh)

    @property
    def num_samples(self) -> int:
        if self.rounding == "ceil":
            return int(torch.ceil(self.repeat_factors).sum())
        return max(1, int(round(float(self.repeat_factors.sum()))))

    def global_indices(self, epoch: int) -> torch.Tensor:
        gen = self.generator(epoch)
        r = self.repeat_factors
        if self.rounding == "ceil":
            reps = torch.ceil(r).long()
        else:
            floor = torch.floor(r)
            reps = (floor + (torch.rand(len(r), generator=gen, dtype=torch.float64) < r - floor)).long()
        seq = torch.repeat_interleave(torch.arange(len(r)), reps)
        seq = seq[torch.randperm(len(seq), generator=gen)]
        n = self.num_samples
        return seq.repeat(math.ceil(n / max(len(seq), 1)))[:n]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "repeat_thresh": self.repeat_thresh, "rounding": self.rounding}


def repeat_factors(image_categories: Sequence[Sequence[int]], repeat_thresh: float) -> torch.Tensor:
    """Per-image repeat factors ``max(1, max_c sqrt(t / f(c)))`` (float64), ``f(c)`` = image frequency of c."""
    num_images = len(image_categories)
    present = [np.asarray(c, dtype=np.int64) for c in image_categories]
    num_classes = max((int(c.max()) + 1 for c in present if len(c)), default=0)
    image_count = np.zeros(num_classes, dtype=np.float64)
    for c in present:
        image_count[np.unique(c)] += 1
    freq = image_count / max(num_images, 1)
    with np.errstate(divide="ignore"):
        class_r = np.maximum(1.0, np.sqrt(repeat_thresh / freq))
    out = np.array([class_r[c].max() if len(c) else 1.0 for c in present], dtype=np.float64)
    return torch.from_numpy(out)
