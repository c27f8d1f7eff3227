"""digits-LT: scikit-learn's bundled 8x8 handwritten digits made long-tailed. No download; a real (if
tiny) image dataset for tests and quick end-to-end runs on CPU."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from ltcls.data.base import ArrayDataset, DataSplits
from ltcls.data.tools.profiles import lt_counts, select_lt
from ltcls.registries import DATASETS

logger = logging.getLogger(__name__)


@DATASETS.register("digits_lt")
def digits_lt(
    train_transform: Callable | None = None,
    eval_transform: Callable | None = None,
    imbalance_factor: float = 50.0,
    profile: str = "exp",
    test_per_class: int = 30,
    val_per_class: int = 0,
    seed: int = 0,
) -> DataSplits:
    """A balanced test split of ``test_per_class`` images per class, an optional balanced validation split
    of ``val_per_class`` (0: none), and a long-tailed train split of the rest (``exp`` / ``step`` profile
    as CIFAR-LT, ``img_max`` = the smallest remaining class, class 0 the head). Images are (8, 8) uint8
    in 0..255, loaded as RGB; the transforms resize them.
    """
    from sklearn.datasets import load_digits  # lazy: config checks import this module; scikit-learn is slow to import

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    targets = digits.target.astype(np.int64)
    num_classes = len(digits.target_names)
    smallest = int(np.bincount(targets, minlength=num_classes).min())
    if not 0 < test_per_class < smallest:
        raise ValueError(f"test_per_class must be in [1, {smallest - 1}] (smallest digits class: {smallest}), "
                         f"got {test_per_class}")
    if not 0 <= val_per_class < smallest - test_per_class:
        raise ValueError(f"val_per_class must be in [0, {smallest - test_per_class - 1}] with test_per_class "
                         f"{test_per_class}, got {val_per_class}")

    rng = np.random.RandomState(seed)
    test_idx = select_lt(targets, [test_per_class] * num_classes, rng)
    rest = np.setdiff1d(np.arange(len(targets)), test_idx)
    val_idx = rest[select_lt(targets[rest], [val_per_class] * num_classes, rng)] if val_per_class else None
    if val_idx is not None:
        rest = np.setdiff1d(rest, val_idx)
    img_max = int(np.bincount(targets[rest], minlength=num_classes).min())
    counts = lt_counts(num_classes, imbalance_factor, profile, img_max)
    train_idx = rest[select_lt(targets[rest], counts, rng)]
    logger.info("digits_lt: %d train images (%s), %d test", len(train_idx), counts, len(test_idx))

    classes = [str(c) for c in digits.target_names]
    return DataSplits(
        train=ArrayDataset(images[train_idx], targets[train_idx], num_classes, classes, train_transform),
        test=ArrayDataset(images[test_idx], targets[test_idx], num_classes, classes, eval_transform),
        val=None if val_idx is None else ArrayDataset(images[val_idx], targets[val_idx], num_classes, classes,
                                                      eval_transform),
    )
