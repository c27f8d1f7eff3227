"""Datasets described by split files (ImageNet-LT, Places-LT, iNaturalist, ...): one ``relative/path label``
per line, paths relative to ``data.root``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from ltcls.data.base import DATASETS, DataSplits, LTDataset

logger = logging.getLogger(__name__)

_FORMAT = "(expected 'relative/path label')"


class FileListDataset(LTDataset):
    """Images on disk at ``root/paths[i]``, opened with PIL and converted to RGB."""

    def __init__(self, root: str, paths: Sequence[str], targets: Sequence[int], num_classes: int,
                 classes: Sequence[str] | None = None, transform: Callable | None = None) -> None:
        super().__init__(targets, num_classes, classes, transform)
        if len(paths) != len(self.targets):
            raise ValueError(f"{len(paths)} paths but {len(self.targets)} targets")
        self.root = root
        self.paths = list(paths)

    def load(self, index: int) -> Image.Image:
        with Image.open(os.path.join(self.root, self.paths[index])) as img:
            return img.convert("RGB")


def read_split(split: str, root: str, num_classes: int | None = None) -> tuple[list[str], np.ndarray]:
    """Parse and check one split file; returns (relative paths, labels).

    Every error names the file and the 1-based line: a line that is not ``path label``, a non-integer or
    negative label, a label ``>= num_classes`` (when given: val/test against train), a path outside
    ``root`` (absolute, or escaping with ``..``) and an image missing under ``root``.
    """
    if not os.path.isfile(split):
        raise FileNotFoundError(f"split file not found: '{split}'")
    root_abs = os.path.abspath(root)
    paths: list[str] = []
    labels: list[int] = []
    missing: list[tuple[int, str]] = []
    with open(split, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{split} line {lineno}"
            if len(fields) != 2:
                raise ValueError(f"{where}: {len(fields)} fields in {line.strip()!r} {_FORMAT}")
            rel, label_str = fields
            try:
                label = int(label_str)
            except ValueError:
                raise ValueError(f"{where}: label {label_str!r} is not an integer {_FORMAT}") from None
            if label < 0:
                raise ValueError(f"{where}: label {label} is negative (expected a class index >= 0)")
            if num_classes is not None and label >= num_classes:
                raise ValueError(f"{where}: label {label} out of range (expected 0..{num_classes - 1}: "
                                 f"the train split has {num_classes} classes)")
            # Lexical resolution: '..' and absolute paths cannot escape root, but symlinked folders inside
            # root (a common way to mount a dataset) stay allowed.
            full = os.path.normpath(os.path.join(root_abs, rel))
            if os.path.isabs(rel) or os.path.commonpath([root_abs, full]) != root_abs:
                raise ValueError(f"{where}: path {rel!r} resolves outside data.root '{root}' "
                                 f"(expected a path relative to data.root)")
            if not os.path.exists(full):
                missing.append((lineno, rel))
            paths.append(rel)
            labels.append(label)
    if missing:
        lineno, rel = missing[0]
        more = f" (and {len(missing) - 1} more missing images)" if len(missing) > 1 else ""
        raise FileNotFoundError(f"{split} line {lineno}: image {rel!r} not found under data.root '{root}'{more}")
    if not paths:
        raise ValueError(f"{split}: no entries {_FORMAT}")
    return paths, np.asarray(labels, dtype=np.int64)


@DATASETS.register("split_file")
def split_file(
    train_transform: Callable | None = None,
    eval_transform: Callable | None = None,
    root: str = "",
    train_split: str = "",
    test_split: str = "",
    val_split: str | None = None,
) -> DataSplits:
    """Train / test (/ val) splits from split files under image folder ``root``.

    ``num_classes`` is the largest train label + 1; val/test labels must fall in that range.
    """
    for key, value in (("root", root), ("train_split", train_split), ("test_split", test_split)):
        if not value:
            raise ValueError(f"split_file dataset: data.{key} must be set")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data.root folder not found: '{root}'")
    paths, labels = read_split(train_split, root)
    num_classes = int(labels.max()) + 1

    def split(path: str, transform: Callable | None) -> FileListDataset:
        p, y = read_split(path, root, num_classes)
        return FileListDataset(root, p, y, num_classes, transform=transform)

    splits = DataSplits(
        train=FileListDataset(root, paths, labels, num_classes, transform=train_transform),
        test=split(test_split, eval_transform),
        val=split(val_split, eval_transform) if val_split else None,
    )
    logger.info("split_file %s: %d classes, train %d, val %s, test %d", root, num_classes, len(splits.train),
                len(splits.val) if splits.val is not None else "-", len(splits.test))
    return splits
