"""ImageNet-LT (Liu et al., CVPR 2019) from the split files of OLTR / classifier-balancing: test images
in class folders or flat (as extracted); class names are the WordNet ids of the train folders."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence

from ltcls.data.base import DataSplits
from ltcls.data.datasets.benchmark_files import BadImage, check_root, class_names_from_paths, finish, split_files
from ltcls.data.datasets.split_file import PathMap, SplitList, read_split_file
from ltcls.registries import DATASETS

logger = logging.getLogger(__name__)

IMAGENET_LT_FILES = {"train": "ImageNet_LT_train.txt", "val": "ImageNet_LT_val.txt", "test": "ImageNet_LT_test.txt"}

_WNID = re.compile(r"n\d{8}")
IMAGENET_TEST_LAYOUTS = {"folders": "val/<wnid>/ILSVRC2012_val_*.JPEG (class folders)",
                         "flat": "val/ILSVRC2012_val_*.JPEG (flat, as extracted from ILSVRC2012_img_val.tar)"}




def imagenet_test_layout(root: str) -> str | None:
    """``'folders'`` if ``root/val`` holds WordNet-id folders, ``'flat'`` if it holds the ILSVRC2012_val_*
    images directly, None if neither (or no ``val/``)."""
    val = os.path.join(root, "val")
    if not os.path.isdir(val):
        return None
    with os.scandir(val) as entries:
        for entry in entries:
            if _WNID.fullmatch(entry.name) and entry.is_dir():
                return "folders"
            if entry.name.startswith("ILSVRC2012_val_") and entry.is_file():
                return "flat"
    return None


def _imagenet_path_map(layout: str | None, wnids: Sequence[str], check_files: bool, root: str) -> PathMap:
    """Maps ``val/...`` test paths onto ``layout`` and checks that a path's WordNet-id folder is its label's."""

    def path_map(rel: str, label: int) -> str:
        parts = rel.split("/")
        folder = parts[-2] if len(parts) >= 2 else ""
        known = label < len(wnids) and _WNID.fullmatch(wnids[label])
        if known and _WNID.fullmatch(folder) and folder != wnids[label]:
            raise ValueError(f"path {rel!r} is in folder '{folder}' but label {label} is '{wnids[label]}' in the "
                             "train split (expected the labels of the official split files: sorted WordNet ids)")
        if parts[0] != "val" or len(parts) not in (2, 3):
            return rel
        if layout is None:
            if check_files:
                raise ValueError(f"test image {rel!r} not found: data.root '{root}' holds the ILSVRC-2012 val "
                                 f"images in neither layout; tried {' and '.join(IMAGENET_TEST_LAYOUTS.values())}")
            return rel
        if layout == "flat":
            return f"val/{parts[-1]}"
        if not known:
            raise ValueError(f"cannot place {rel!r} into val/<wnid>/: label {label} has no training image to give "
                             "its WordNet id")
        return f"val/{wnids[label]}/{parts[-1]}"

    return path_map


@DATASETS.register("imagenet_lt")
def imagenet_lt(
    train_transform: Callable | None = None,
    eval_transform: Callable | None = None,
    root: str = "data/imagenet",
    split_dir: str = "data_splits/ImageNet_LT",
    decode_size: int | None = None,
    on_bad_image: BadImage = "error",
    check_files: bool = True,
) -> DataSplits:
    """ImageNet-LT (Liu et al., 2019): ``root`` is the ILSVRC-2012 folder (``train/<wnid>/``, ``val/``),
    ``split_dir`` holds the official ``ImageNet_LT_{train,val,test}.txt`` (val optional).

    Test images may lie in class folders or flat in ``val/``; the split's test paths (either form) are
    mapped onto what ``root`` holds. Class names are the WordNet ids of the train folders. ``decode_size``,
    ``on_bad_image``, ``check_files``: as for ``split_file``.
    """
    files = split_files(split_dir, IMAGENET_LT_FILES, "imagenet_lt")
    check_root(root, check_files, "imagenet_lt", "the ILSVRC-2012 folder holding train/ and val/")
    train = read_split_file(files["train"], root, check_files=check_files)
    num_classes = train.class_count()
    wnids = class_names_from_paths(train, num_classes, lambda p: p.split("/")[-2] if "/" in p else None)
    if all(_WNID.fullmatch(w) for w in wnids) and wnids != sorted(wnids):
        logger.warning("imagenet_lt: labels of %s do not follow sorted WordNet ids (the official files do)",
                       files["train"])
    path_map = _imagenet_path_map(imagenet_test_layout(root), wnids, check_files, root)

    def split(name: str) -> SplitList | None:
        path = files[name]
        return read_split_file(path, root, num_classes, path_map, check_files) if path else None

    val, test = split("val"), split("test")
    kw = dict(root=root, num_classes=num_classes, classes=wnids, decode_size=decode_size, on_bad_image=on_bad_image)
    return finish("imagenet_lt", root, DataSplits(
        train=train.dataset(transform=train_transform, **kw),
        test=test.dataset(transform=eval_transform, **kw),
        val=val.dataset(transform=eval_transform, **kw) if val is not None else None))
