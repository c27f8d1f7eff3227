"""The dataset interface shared by every builder: what the engine asks of a split, image splits, the splits of a
dataset."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ltcls.data.images import to_rgb


@dataclass(frozen=True)
class ImageFileList:
    """The image files a split reads from disk (for the start-up check that they open): ``paths`` under
    ``root``, and ``where(i)`` naming sample ``i``'s source line (or None)."""

    root: str
    paths: Sequence[str]
    where: Callable[[int], str | None]


class SplitBase(Dataset):
    """What the engine asks of every split and dataset it loads, with the defaults of a plain image split.

    ``in_memory``: the samples live in memory (no loader worker processes); ``batched``: the dataset is
    indexed with a whole batch of indices at once (``dataset[list]`` returns the stacked batch);
    ``targets``: one label per sample (samplers), or None; ``seed_augmentation`` / ``set_epoch``: per-sample
    seeded augmentation; ``bad_image_count``: images skipped as unreadable; ``image_files()``: the files to
    check before training (None: nothing on disk to check)."""

    in_memory: bool = False
    batched: bool = False
    targets: np.ndarray | None = None
    #: How the dataset's samples batch, where it knows better than the task (None: the task's collate).
    collate_fn: Callable | None = None

    def seed_augmentation(self, seed: int | None) -> None:  # noqa: B027 - optional hook
        """Draw sample ``i``'s augmentation from a generator seeded by (seed, epoch, i) alone."""

    def set_epoch(self, epoch: int) -> None:  # noqa: B027 - optional hook
        """The epoch the per-sample seeds use."""

    @property
    def bad_image_count(self) -> int:
        return 0

    def image_files(self) -> ImageFileList | None:
        return None


class Split(Protocol):
    """What the engine needs of any split (an :class:`LTDataset` for classification, LVIS images for
    detection, cached features): :class:`SplitBase`'s members, its length, number of classes and per-class
    training counts."""

    num_classes: int
    in_memory: bool
    batched: bool
    targets: np.ndarray | None
    collate_fn: Callable | None

    def __len__(self) -> int: ...

    @property
    def class_counts(self) -> np.ndarray: ...

    def seed_augmentation(self, seed: int | None) -> None: ...

    def set_epoch(self, epoch: int) -> None: ...

    @property
    def bad_image_count(self) -> int: ...

    def image_files(self) -> ImageFileList | None: ...


def sample_seed(seed: int, epoch: int, index: int, stream: int = 0) -> int:
    """The seed of sample ``index``'s random draws in ``epoch`` (the one formula: the same draws whatever the
    number of workers or processes). ``stream`` separates independent draws of the same sample."""
    return ((seed * 1_000_003 + epoch) * 2_654_435_761 + int(index) + stream * 0x9E3779B97F4A7C15) % (2**63)


class LTDataset(SplitBase):
    """An image classification split: ``targets`` (one int label per sample), ``num_classes``,
    ``classes`` (names) and a ``transform`` applied to the RGB PIL image in ``__getitem__``.

    Subclasses implement ``load(index) -> PIL.Image`` (RGB). ``with_transform`` gives a shallow
    copy with another transform (e.g. the train split seen through eval transforms).

    With ``seed_augmentation(seed)`` and ``set_epoch(epoch)``, the random transform of sample ``i``
    draws from generators seeded by (seed, epoch, i) alone: the same augmentation whatever the
    number of DataLoader workers or processes, so an N-process run sees exactly the images a
    1-process run sees. The surrounding torch and Python random states are restored afterwards.
    """

    aug_seed: int | None = None
    epoch: int = 0

    def __init__(self, targets: Sequence[int], num_classes: int, classes: Sequence[str] | None = None,
                 transform: Callable | None = None) -> None:
        self.targets = np.asarray(targets, dtype=np.int64)
        self.num_classes = int(num_classes)
        self.classes = list(classes) if classes is not None else [str(i) for i in range(self.num_classes)]
        self.transform = transform

    def load(self, index: int) -> Image.Image:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.apply_transform(self.load(index), index), int(self.targets[index])

    def seed_augmentation(self, seed: int | None) -> None:
        self.aug_seed = seed

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def apply_transform(self, img: Image.Image, index: int):
        """``transform(img)``, with per-sample seeded randomness when ``seed_augmentation`` was called."""
        if self.transform is None:
            return img
        if self.aug_seed is None:
            return self.transform(img)
        seed = sample_seed(self.aug_seed, self.epoch, index)
        # The CPU generator directly (torch.manual_seed would also seed every accelerator: ~100 us a call).
        # NumPy's global state is seeded but not restored (saving it costs ~60 us a sample).
        torch_state, py_state = torch.default_generator.get_state(), random.getstate()
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            return self.transform(img)
        finally:
            torch.default_generator.set_state(torch_state)
            random.setstate(py_state)

    @property
    def class_counts(self) -> np.ndarray:
        """Number of samples of each class (length ``num_classes``)."""
        return np.bincount(self.targets, minlength=self.num_classes)

    def with_transform(self, transform: Callable | None) -> LTDataset:
        view = copy.copy(self)
        view.transform = transform
        return view


class ArrayDataset(LTDataset):
    """Images held in memory as a uint8 array (N, H, W, 3) or (N, H, W) (CIFAR, digits)."""

    def __init__(self, images: np.ndarray, targets: Sequence[int], num_classes: int,
                 classes: Sequence[str] | None = None, transform: Callable | None = None) -> None:
        super().__init__(targets, num_classes, classes, transform)
        if len(images) != len(self.targets):
            raise ValueError(f"{len(images)} images but {len(self.targets)} targets")
        self.images = images

    def load(self, index: int) -> Image.Image:
        return to_rgb(Image.fromarray(self.images[index]))


@dataclass
class DataSplits:
    """What a dataset builder returns: the train and test splits and an optional validation split."""

    train: Split
    test: Split
    val: Split | None = None

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def class_counts(self) -> np.ndarray:
        return self.train.class_counts

    def get(self, split: str) -> Split:
        """The split named ``split`` (train / val / test); a ``ValueError`` saying which splits there are."""
        dataset = {"train": self.train, "val": self.val, "test": self.test}.get(split)
        if dataset is None:
            have = [s for s in ("train", "val", "test") if self.has(s)]
            raise ValueError(f"the dataset has no {split} split (it has: {', '.join(have)})")
        return dataset

    def has(self, split: str) -> bool:
        return {"train": self.train, "val": self.val, "test": self.test}.get(split) is not None

    @property
    def class_names(self) -> list[str]:
        """Name of every class (the train split's ``classes``: label names where the data gives them, else
        the label index as text)."""
        names = getattr(self.train, "classes", None)
        return list(names) if names is not None else [str(c) for c in range(self.num_classes)]
