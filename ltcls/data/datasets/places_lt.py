"""Places-LT (Liu et al., CVPR 2019) from its split files, Places365 in the ``places365_standard`` layout or the
``data_256`` / ``data_large`` one; class names are the category folders."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence

from ltcls.data.base import DataSplits
from ltcls.data.datasets.benchmark_files import BadImage, check_root, class_names_from_paths, finish, split_files
from ltcls.data.datasets.split_file import PathMap, SplitList, read_split_file
from ltcls.registries import DATASETS

logger = logging.getLogger(__name__)

PLACES_LT_FILES = {"train": "Places_LT_train.txt", "val": "Places_LT_val.txt", "test": "Places_LT_test.txt"}
#: Places365 layouts: (train folder, val folder). places365_standard ("easy format") has train/<class>/ and
#: val/<class>/; the original archives have data_256/<letter>/<class>[/<sub>]/ and a flat val_256/.
PLACES_LAYOUTS: dict[str, tuple[str, str]] = {"standard": ("train", "val"), "data_256": ("data_256", "val_256"),
                                              "data_large": ("data_large", "val_large")}
_PLACES_FORMS = ("train/<class>/<file>, val/<class>/<file>, data_256/<letter>/<class>[/<sub>]/<file>, "
                 "val_256/<file> (or data_large/, val_large/)")




def places_parse(rel: str) -> tuple[str, str | None, str, str]:
    """``(kind, class, file name, layout)`` of a Places365 path; kind is ``'train'`` or ``'val'``, class the
    category folder in the standard form (``apartment_building-outdoor``; None for a flat val path)."""
    parts = rel.split("/")
    for layout, (train_dir, val_dir) in PLACES_LAYOUTS.items():
        if parts[0] == train_dir:
            if layout == "standard" and len(parts) == 3:
                return "train", parts[1], parts[2], layout
            if layout != "standard" and len(parts) >= 4 and len(parts[1]) == 1:
                return "train", "-".join(parts[2:-1]), parts[-1], layout
        elif parts[0] == val_dir:
            if len(parts) == 2:
                return "val", None, parts[1], layout
            if layout == "standard" and len(parts) == 3:
                return "val", parts[1], parts[2], layout
    raise ValueError(f"path {rel!r} is in no known Places365 layout (expected {_PLACES_FORMS})")


def places_format(kind: str, cls: str | None, name: str, layout: str) -> str:
    """The path of an image in ``layout`` (inverse of :func:`places_parse`)."""
    train_dir, val_dir = PLACES_LAYOUTS[layout]
    if kind == "val":
        return f"{val_dir}/{name}" if layout != "standard" else f"{val_dir}/{cls}/{name}"
    if layout == "standard":
        return f"{train_dir}/{cls}/{name}"
    return f"{train_dir}/{cls[0]}/{cls.replace('-', '/')}/{name}"


def places_root_layouts(root: str) -> dict[str, str | None]:
    """Which layout ``root`` holds for train-type and val-type images (None: none found)."""
    found: dict[str, str | None] = {}
    for k, kind in enumerate(("train", "val")):
        found[kind] = next((layout for layout, dirs in PLACES_LAYOUTS.items()
                            if os.path.isdir(os.path.join(root, dirs[k]))), None)
    return found


def _places_path_map(root: str, targets: Mapping[str, str | None], classes: Sequence[str] | None,
                     check_files: bool) -> PathMap:
    def path_map(rel: str, label: int) -> str:
        kind, cls, name, layout = places_parse(rel)
        known = classes[label] if classes is not None and label < len(classes) else None
        if cls is not None and known is not None and cls != known:
            raise ValueError(f"path {rel!r} is in category folder '{cls}' but label {label} is '{known}' in the "
                             "train split")
        target = targets[kind]
        if target is None:
            if check_files:
                tried = ", ".join(f"{dirs[0 if kind == 'train' else 1]}/ ({layout})"
                                  for layout, dirs in PLACES_LAYOUTS.items())
                raise ValueError(f"{kind} image {rel!r} not found: data.root '{root}' holds no Places365 {kind} "
                                 f"folder; tried {tried}")
            return rel
        if target == layout and (cls is not None or layout != "standard"):
            return rel
        cls = cls or known
        if cls is None:
            raise ValueError(f"cannot map {rel!r} onto the {target} layout: label {label} has no training image to "
                             "give its category")
        return places_format(kind, cls, name, target)

    return path_map


@DATASETS.register("places_lt")
def places_lt(
    train_transform: Callable | None = None,
    eval_transform: Callable | None = None,
    root: str = "data/places365",
    split_dir: str = "data_splits/Places_LT",
    decode_size: int | None = None,
    on_bad_image: BadImage = "error",
    check_files: bool = True,
) -> DataSplits:
    """Places-LT (Liu et al., 2019): ``root`` is a Places365 folder, ``split_dir`` holds the official
    ``Places_LT_{train,val,test}.txt`` (val optional).

    Both path layouts are accepted in the split files and under ``root`` (``train/<class>/``, ``val/<class>/``
    of places365_standard, or ``data_256/<letter>/<class>/``, ``val_256/``); split paths are mapped onto the
    layout ``root`` holds. Class names are the category folders (``apartment_building-outdoor``).
    ``decode_size``, ``on_bad_image``, ``check_files``: as for ``split_file``.
    """
    files = split_files(split_dir, PLACES_LT_FILES, "places_lt")
    check_root(root, check_files, "places_lt", "a Places365 folder holding train/ and val/, or data_256/ and "
                                                "val_256/")
    targets = places_root_layouts(root)
    train = read_split_file(files["train"], root, path_map=_places_path_map(root, targets, None, check_files),
                            check_files=check_files)
    num_classes = train.class_count()
    classes = class_names_from_paths(train, num_classes, lambda p: places_parse(p)[1])
    if any(layout is not None for layout in targets.values()):
        logger.info("places_lt: data.root holds the %s layout for train images and the %s layout for val images",
                    targets["train"], targets["val"])
    path_map = _places_path_map(root, targets, classes, check_files)

    def split(name: str) -> SplitList | None:
        path = files[name]
        return read_split_file(path, root, num_classes, path_map, check_files) if path else None

    val, test = split("val"), split("test")
    kw = dict(root=root, num_classes=num_classes, classes=classes, decode_size=decode_size,
              on_bad_image=on_bad_image)
    return finish("places_lt", root, DataSplits(
        train=train.dataset(transform=train_transform, **kw),
        test=test.dataset(transform=eval_transform, **kw),
        val=val.dataset(transform=eval_transform, **kw) if val is not None else None))
