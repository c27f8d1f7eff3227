"""Dataset interface shared by every builder, and the dataset / sampler registries."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ltcls.registry import Registry

#: Dataset builders take their hyper-parameters from ``data.*`` and the two transforms at runtime;
#: each returns a :class:`DataSplits`.
DATASETS = Registry("dataset", runtime=("train_transform", "eval_transform"))

#: Samplers take their hyper-parameters from ``sampler.*``; the trainer passes the runtime facts.
SAMPLERS = Registry("sampler", runtime=("targets", "seed", "epochs", "num_replicas", "rank", "dataset"))


class LTDataset(Dataset):
    """An image classification split: ``targets`` (one int label per sample), ``num_classes``,
    ``classes`` (names) and a ``transform`` applied to the RGB PIL image in ``__getitem__``.

    Subclasses implement ``load(index) -> PIL.Image`` (RGB). ``with_transform`` gives a shallow
    copy with another transform (e.g. the train split seen through eval transforms).
    """

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
        img = self.load(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])

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
        return Image.fromarray(self.images[index]).convert("RGB")


@dataclass
class DataSplits:
    """What a dataset builder returns: the train and test splits and an optional validation split."""

    train: LTDataset
    test: LTDataset
    val: LTDataset | None = None

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def class_counts(self) -> np.ndarray:
        return self.train.class_counts
