"""torchvision's ImageFolder layout as a long-tailed dataset: ``root/train/<class>/<image>``,
``root/test/<class>/...`` and optionally ``root/val/<class>/...``.

Classes are the sorted folder names of ``train/`` (torchvision's ``find_classes``); the files are listed by
torchvision's ``make_dataset`` with every extension PIL registers, and loaded by :class:`FileListDataset`, so
reduced-size JPEG decoding and ``on_bad_image`` work as for ``split_file``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Literal

from PIL import Image
from torchvision.datasets.folder import find_classes, make_dataset

from ltcls.data.base import DataSplits
from ltcls.data.datasets.split_file import FileListDataset
from ltcls.registries import DATASETS

logger = logging.getLogger(__name__)


def image_extensions() -> tuple[str, ...]:
    """Every file extension PIL can open (lower case, with the dot), e.g. ``('.jpg', '.png', ...)``."""
    return tuple(sorted(ext.lower() for ext in Image.registered_extensions()))


def _folder_entries(root: str, split: str, class_to_idx: dict[str, int], required: bool) -> list[tuple[str, int]]:
    """(path relative to ``root``, label) of every image under ``root/split/<class>/``.

    A class folder of ``split`` that ``class_to_idx`` does not know is an error naming it; with ``required``
    (the train split) every class needs at least one image, otherwise a class folder may be missing or empty.
    """
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image_folder dataset: folder '{folder}' not found (expected "
                                f"data.root/{split}/<class>/<images>)")
    present = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    unknown = [c for c in present if c not in class_to_idx]
    if unknown:
        raise ValueError(f"image_folder dataset: class folder(s) {', '.join(repr(c) for c in unknown)} in "
                         f"'{folder}' are not classes of '{os.path.join(root, 'train')}' (expected only class "
                         f"folders that train/ has)")
    try:
        samples = make_dataset(folder, {c: class_to_idx[c] for c in present}, extensions=image_extensions(),
                               allow_empty=not required)
    except FileNotFoundError as e:  # torchvision: "Found no valid file for the classes ..."
        raise FileNotFoundError(f"image_folder dataset: {e}") from None
    return [(os.path.relpath(path, root), label) for path, label in samples]


@DATASETS.register("image_folder")
def image_folder(
    train_transform: Callable | None = None,
    eval_transform: Callable | None = None,
    root: str = "",
    decode_size: int | None = None,
    on_bad_image: Literal["error", "skip"] = "error",
) -> DataSplits:
    """Train / test (/ val) splits from ``root/{train,test,val}/<class>/<images>`` (torchvision's ImageFolder).

    Classes are the sorted folder names of ``train/``, each needing at least one image; a class folder
    missing from (or empty in) ``test/`` or ``val/`` is allowed, a folder there that ``train/`` lacks is an
    error naming it. Any extension PIL reads counts as an image. ``decode_size`` and ``on_bad_image`` as for
    ``split_file``.
    """
    if not root:
        raise ValueError("image_folder dataset: data.root must be set (a folder holding train/ and test/)")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data.root folder not found: '{root}'")
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        raise FileNotFoundError(f"image_folder dataset: folder '{train_dir}' not found (expected "
                                f"data.root/train/<class>/<images>)")
    classes, class_to_idx = find_classes(train_dir)
    num_classes = len(classes)

    def split(name: str, transform: Callable | None, required: bool) -> FileListDataset:
        entries = _folder_entries(root, name, class_to_idx, required)
        if not entries:
            raise ValueError(f"image_folder dataset: no images under '{os.path.join(root, name)}'")
        paths, labels = zip(*entries)
        return FileListDataset(root, paths, labels, num_classes, classes, transform, decode_size, on_bad_image,
                               source=os.path.join(root, name))

    has_val = os.path.isdir(os.path.join(root, "val"))
    splits = DataSplits(
        train=split("train", train_transform, required=True),
        test=split("test", eval_transform, required=False),
        val=split("val", eval_transform, required=False) if has_val else None,
    )
    logger.info("image_folder %s: %d classes, train %d, val %s, test %d", root, num_classes, len(splits.train),
                len(splits.val) if splits.val is not None else "-", len(splits.test))
    return splits
