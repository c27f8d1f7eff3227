"""The standard long-tailed benchmarks from their official files: ImageNet-LT and Places-LT (split files
of OLTR / classifier-balancing) and iNaturalist 2018 (its json annotations, or the equivalent split files).

Each builder is a preset of the ``split_file`` machinery (:func:`read_split_file`, :class:`FileListDataset`)
that knows the benchmark's file names and folder layouts: ImageNet test images in class folders or flat
(as extracted), Places365 in the ``places365_standard`` layout or the ``data_256`` one. Split paths are
mapped onto the layout found under ``data.root``; errors name the file and line and the layouts tried.
Class names come from the files: WordNet ids of the ImageNet train folders, Places category folders,
iNaturalist category names.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from ltcls.data.base import DATASETS, DataSplits
from ltcls.data.published import PUBLISHED, compare_published, group_sizes
from ltcls.data.split_file import EntryChecker, PathMap, SplitList, read_split_file

logger = logging.getLogger(__name__)

IMAGENET_LT_FILES = {"train": "ImageNet_LT_train.txt", "val": "ImageNet_LT_val.txt", "test": "ImageNet_LT_test.txt"}
PLACES_LT_FILES = {"train": "Places_LT_train.txt", "val": "Places_LT_val.txt", "test": "Places_LT_test.txt"}
#: iNaturalist 2018 annotation files, tried in this order: the official json, then classifier-balancing's lists.
INAT2018_FILES = ({"train": "train2018.json", "test": "val2018.json"},
                  {"train": "iNaturalist18_train.txt", "test": "iNaturalist18_val.txt"})

_WNID = re.compile(r"n\d{8}")
IMAGENET_TEST_LAYOUTS = {"folders": "val/<wnid>/ILSVRC2012_val_*.JPEG (class folders)",
                         "flat": "val/ILSVRC2012_val_*.JPEG (flat, as extracted from ILSVRC2012_img_val.tar)"}
#: Places365 layouts: (train folder, val folder). places365_standard ("easy format") has train/<class>/ and
#: val/<class>/; the original archives have data_256/<letter>/<class>[/<sub>]/ and a flat val_256/.
PLACES_LAYOUTS: dict[str, tuple[str, str]] = {"standard": ("train", "val"), "data_256": ("data_256", "val_256"),
                                              "data_large": ("data_large", "val_large")}
_PLACES_FORMS = ("train/<class>/<file>, val/<class>/<file>, data_256/<letter>/<class>[/<sub>]/<file>, "
                 "val_256/<file> (or data_large/, val_large/)")

BadImage = Literal["error", "skip"]


# ----------------------------------------------------------------------------------------- shared helpers


def _split_files(split_dir: str, names: Mapping[str, str], dataset: str,
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


def _check_root(root: str, check_files: bool, dataset: str, expected: str) -> None:
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


def _finish(dataset: str, root: str, splits: DataSplits) -> DataSplits:
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


# ----------------------------------------------------------------------------------------- ImageNet-LT


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
    files = _split_files(split_dir, IMAGENET_LT_FILES, "imagenet_lt")
    _check_root(root, check_files, "imagenet_lt", "the ILSVRC-2012 folder holding train/ and val/")
    train = read_split_file(files["train"], root, check_files=check_files)
    num_classes = int(train.labels.max()) + 1
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
    return _finish("imagenet_lt", root, DataSplits(
        train=train.dataset(transform=train_transform, **kw),
        test=test.dataset(transform=eval_transform, **kw),
        val=val.dataset(transform=eval_transform, **kw) if val is not None else None))


# ----------------------------------------------------------------------------------------- Places-LT


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
    files = _split_files(split_dir, PLACES_LT_FILES, "places_lt")
    _check_root(root, check_files, "places_lt", "a Places365 folder holding train/ and val/, or data_256/ and "
                                                "val_256/")
    targets = places_root_layouts(root)
    train = read_split_file(files["train"], root, path_map=_places_path_map(root, targets, None, check_files),
                            check_files=check_files)
    num_classes = int(train.labels.max()) + 1
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
    return _finish("places_lt", root, DataSplits(
        train=train.dataset(transform=train_transform, **kw),
        test=test.dataset(transform=eval_transform, **kw),
        val=val.dataset(transform=eval_transform, **kw) if val is not None else None))


# ----------------------------------------------------------------------------------------- iNaturalist 2018


def read_inat_json(path: str, root: str, label_of: Mapping[int, int] | None = None,
                   check_files: bool = True) -> tuple[SplitList, dict[int, int], list[str]]:
    """Read iNaturalist (COCO-style) annotations: ``images`` (id, file_name), ``annotations`` (image_id,
    category_id), ``categories`` (id, name). Returns the entries, the category id -> label map (sorted ids:
    iNat 2018's 0..8141 map to themselves) and the class names. ``label_of`` (the train file's map) is used
    for a val file. Errors name the file and the json entry (``images[12]``) or, for bad json, the line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation file not found: '{path}'")
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {e.lineno} column {e.colno}: invalid json ({e.msg})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise ValueError(f"{path}: no '{key}' list (expected iNaturalist / COCO annotations with images, "
                             "annotations and categories)")
    cats = {}
    for k, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int):
            raise ValueError(f"{path} categories[{k}]: expected an object with an integer 'id', got {cat!r}")
        cats[cat["id"]] = str(cat.get("name", cat["id"]))
    if label_of is None:
        label_of = {cid: i for i, cid in enumerate(sorted(cats))}
    names = [""] * len(label_of)
    for cid, i in label_of.items():
        names[i] = cats.get(cid, str(cid))
    category_of: dict[int, int] = {}
    for k, ann in enumerate(data["annotations"]):
        where = f"{path} annotations[{k}]"
        if not isinstance(ann, dict) or not isinstance(ann.get("image_id"), int) \
                or not isinstance(ann.get("category_id"), int):
            raise ValueError(f"{where}: expected an object with integer 'image_id' and 'category_id', got {ann!r}")
        if ann["category_id"] not in label_of:
            raise ValueError(f"{where}: category_id {ann['category_id']} is not a category of the train annotations")
        if category_of.setdefault(ann["image_id"], ann["category_id"]) != ann["category_id"]:
            raise ValueError(f"{where}: image {ann['image_id']} has a second, different category "
                             "(expected one label per image)")
    checker = EntryChecker(path, root, len(label_of), check_files=check_files, where_format="{source} images[{n}]")
    for k, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not isinstance(img.get("file_name"), str) or "id" not in img:
            raise ValueError(f"{path} images[{k}]: expected an object with 'id' and 'file_name', got {img!r}")
        if img["id"] not in category_of:
            raise ValueError(f"{path} images[{k}]: image id {img['id']} ({img['file_name']}) has no annotation")
        checker.add(k, img["file_name"], label_of[category_of[img["id"]]])
    return checker.finish(), dict(label_of), names


@DATASETS.register("inat2018")
def inat2018(
    train_transform: Callable | None = None,
    eval_transform: Callable | None = None,
    root: str = "data/inat2018",
    split_dir: str = "",
    decode_size: int | None = None,
    on_bad_image: BadImage = "error",
    check_files: bool = True,
) -> DataSplits:
    """iNaturalist 2018: ``root`` holds ``train_val2018/``; ``split_dir`` (default: ``root``) holds the official
    ``train2018.json`` / ``val2018.json`` or classifier-balancing's ``iNaturalist18_{train,val}.txt``.

    The 2018 test labels are not public: val2018 (3 images per class) is the test split, as in the
    literature. Class names are the json category names (label numbers with the text lists).
    ``decode_size``, ``on_bad_image``, ``check_files``: as for ``split_file``.
    """
    folder = split_dir or root
    found = next((names for names in INAT2018_FILES
                  if all(os.path.isfile(os.path.join(folder, n)) for n in names.values())), None)
    if found is None:
        tried = " or ".join(" + ".join(names.values()) for names in INAT2018_FILES)
        raise FileNotFoundError(f"inat2018: no annotations in '{folder}' (data.split_dir, default data.root); "
                                f"tried {tried}")
    _check_root(root, check_files, "inat2018", "the iNaturalist 2018 folder holding train_val2018/")
    train_path, test_path = (os.path.join(folder, found[s]) for s in ("train", "test"))
    if train_path.endswith(".json"):
        train, label_of, classes = read_inat_json(train_path, root, check_files=check_files)
        test = read_inat_json(test_path, root, label_of, check_files=check_files)[0]
        num_classes = len(label_of)
    else:
        train = read_split_file(train_path, root, check_files=check_files)
        num_classes = int(train.labels.max()) + 1
        classes = None
        test = read_split_file(test_path, root, num_classes, check_files=check_files)
    kw = dict(root=root, num_classes=num_classes, classes=classes, decode_size=decode_size,
              on_bad_image=on_bad_image)
    return _finish("inat2018", root, DataSplits(train=train.dataset(transform=train_transform, **kw),
                                                test=test.dataset(transform=eval_transform, **kw)))
