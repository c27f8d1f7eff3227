"""CIFAR-10-LT / CIFAR-100-LT, built exactly as LDAM-DRW (Cao et al., 2019) builds them, so published
numbers are comparable: same per-class counts, same selected images for a given seed."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import numpy as np
from torchvision.datasets import CIFAR10, CIFAR100

from ltcls.data.base import ArrayDataset, DataSplits
from ltcls.data.tools.profiles import lt_counts, select_lt
from ltcls.registries import DATASETS

logger = logging.getLogger(__name__)


class _LocalFiles:
    """Mixin for torchvision's CIFAR readers: read the python-pickle folder under ``root``, never download.

    ``_check_integrity`` only checks that the batch and meta files exist (raising ``FileNotFoundError``
    naming the missing path), and the md5 sums are dropped, because torchvision's md5 check would reject
    any CIFAR-format folder other than the official archive (e.g. the small ones the tests write).
    """

    base_folder: str
    train_list: list[list]
    test_list: list[list]
    meta: dict
    root: str

    def _check_integrity(self) -> bool:
        folder = os.path.join(self.root, self.base_folder)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"CIFAR folder not found: expected '{folder}' (the python version, "
                                    f"extracted under data.root)")
        for name, _ in self.train_list + self.test_list + [[self.meta["filename"], None]]:
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"CIFAR file missing: expected '{path}'")
        return True


def _no_md5(files: list[list]) -> list[list]:
    return [[name, None] for name, _ in files]


class CIFAR10Files(_LocalFiles, CIFAR10):
    """torchvision's CIFAR-10 reader over ``root/cifar-10-batches-py`` without md5 checks or download."""

    train_list = _no_md5(CIFAR10.train_list)
    test_list = _no_md5(CIFAR10.test_list)
    meta = {**CIFAR10.meta, "md5": None}


class CIFAR100Files(_LocalFiles, CIFAR100):
    """torchvision's CIFAR-100 reader over ``root/cifar-100-python`` without md5 checks or download."""

    train_list = _no_md5(CIFAR100.train_list)
    test_list = _no_md5(CIFAR100.test_list)
    meta = {**CIFAR100.meta, "md5": None}


def _cifar_lt(reader: type[CIFAR10], root: str, imbalance_factor: float, profile: str, seed: int,
              train_transform: Callable | None, eval_transform: Callable | None) -> DataSplits:
    """Long-tailed train split (LDAM-DRW's ``IMBALANCECIFAR``) and the full balanced test split."""
    train = reader(root, train=True)
    test = reader(root, train=False)
    num_classes = len(train.classes)
    targets = np.asarray(train.targets, dtype=np.int64)
    counts = lt_counts(num_classes, imbalance_factor, profile, img_max=len(targets) / num_classes)
    keep = select_lt(targets, counts, np.random.RandomState(seed))
    logger.info("%s-LT IF%g (%s): %d train images, %d test", reader.__name__, imbalance_factor, profile,
                len(keep), len(test.targets))
    return DataSplits(
        train=ArrayDataset(train.data[keep], targets[keep], num_classes, train.classes, train_transform),
        test=ArrayDataset(test.data, test.targets, num_classes, test.classes, eval_transform),
    )


@DATASETS.register("cifar10_lt")
def cifar10_lt(
    train_transform: Callable | None = None,
    eval_transform: Callable | None = None,
    root: str = "data",
    imbalance_factor: float = 100.0,
    profile: str = "exp",
    seed: int = 0,
) -> DataSplits:
    """CIFAR-10-LT from ``root/cifar-10-batches-py``: ``profile`` exp|step, head/tail ratio ``imbalance_factor``."""
    return _cifar_lt(CIFAR10Files, root, imbalance_factor, profile, seed, train_transform, eval_transform)


@DATASETS.register("cifar100_lt")
def cifar100_lt(
    train_transform: Callable | None = None,
    eval_transform: Callable | None = None,
    root: str = "data",
    imbalance_factor: float = 100.0,
    profile: str = "exp",
    seed: int = 0,
) -> DataSplits:
    """CIFAR-100-LT from ``root/cifar-100-python``: ``profile`` exp|step, head/tail ratio ``imbalance_factor``."""
    return _cifar_lt(CIFAR100Files, root, imbalance_factor, profile, seed, train_transform, eval_transform)
