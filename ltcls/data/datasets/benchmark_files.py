"""What the file-based benchmark builders (ImageNet-LT, Places-LT, iNaturalist 2018) share: locating the
official split files, checking the root, class names from folders, comparing the splits with the published ones.

Each builder is a preset of the ``split_file`` machinery (:func:`read_split_file`, :class:`FileListDataset`)
that knows the benchmark's file names and folder layouts; errors name the file and line and the layouts tried.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from ltcls.data.base import DataSplits
from ltcls.data.datasets.split_file import SplitList
from ltcls.data.tools.published import PUBLISHED, compare_published, group_sizes

logger = logging.getLogger(__name__)

BadImage = Literal["error", "skip"]

# ----------------------------------------------------------------------------------------- shared helpers


def split_files(split_dir: str, names: Mapping[str, str], dataset: str,
                 optional: Sequence[str] = ("val",)) -> dict[str, str | None]:
    """Paths of a benchmark's split files in ``split_dir``; a missing required one is an error naming it."""
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(f"{dataset}: data.split_dir '{split_dir}' not found (expected the folder holding "
                                f"{', '.join(names.values())})")
    out: dict[str, str | None] = {}
    for split, name in names.items():
        path = os.path.join(split_dir, name)
        if os.path.isfile(path):
            out[split] = path
        elif split in optional:
            logger.info("%s: no %s in %s; no %s split", dataset, name, split_dir, split)
            out[split] = None
        else:
            raise FileNotFoundError(f"{dataset}: split file '{path}' not found (data.split_dir must hold "
                                    f"{', '.join(names.values())})")
    return out


def check_root(root: str, check_files: bool, dataset: str, expected: str) -> None:
    if check_files and not os.path.isdir(root):
        raise FileNotFoundError(f"{dataset}: data.root folder '{root}' not found (expected {expected})")


def class_names_from_paths(split: SplitList, num_classes: int, folder_of: Callable[[str], str | None]) -> list[str]:
    """One name per label from the folder of its training images; a label seen with two folders is an error
    naming both lines. A label without a training image keeps its number as name."""
    names: dict[int, tuple[str, int]] = {}
    for i, (path, label) in enumerate(zip(split.paths, split.labels.tolist())):
        folder = folder_of(path)
        if folder is None:
            raise ValueError(f"{split.where(i)}: cannot read a class folder from {path!r}")
        seen = names.setdefault(label, (folder, i))
        if seen[0] != folder:
            raise ValueError(f"{split.where(i)}: label {label} is class folder '{folder}' here but '{seen[0]}' on "
                             f"{split.where(seen[1])} (expected one class folder per label)")
    return [names[c][0] if c in names else str(c) for c in range(num_classes)]


def finish(dataset: str, root: str, splits: DataSplits) -> DataSplits:
    """Log the split sizes and whether they match the published ones."""
    counts = splits.class_counts
    sizes = group_sizes(counts)
    logger.info("%s %s: %d classes; train %d (max %d, min %d; many/medium/few %d/%d/%d), val %s, test %d", dataset,
                root, splits.num_classes, len(splits.train), counts.max(), counts.min(), sizes["many"],
                sizes["medium"], sizes["few"], len(splits.val) if splits.val is not None else "-", len(splits.test))
    differences = []
    for name in ("train", "val", "test"):
        split = getattr(splits, name)
        result = compare_published(dataset, name, split.class_counts, splits.num_classes) if split is not None else None
        if result is not None and not result[0]:
            differences.append(f"{name}: {', '.join(result[1])}")
    if differences:
        logger.warning("%s: the splits differ from the published %s (not the official split files?) %s", dataset,
                       PUBLISHED[dataset].title, "; ".join(differences))
    return splits


