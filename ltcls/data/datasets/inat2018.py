"""iNaturalist 2018 from its json annotations (or classifier-balancing's equivalent split files); class names
are the category names."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping

from ltcls.data.base import DataSplits
from ltcls.data.datasets.benchmark_files import BadImage, check_root, finish
from ltcls.data.datasets.split_file import EntryChecker, SplitList, read_split_file
from ltcls.registries import DATASETS

logger = logging.getLogger(__name__)

#: iNaturalist 2018 annotation files, tried in this order: the official json, then classifier-balancing's lists.
INAT2018_FILES = ({"train": "train2018.json", "test": "val2018.json"},
                  {"train": "iNaturalist18_train.txt", "test": "iNaturalist18_val.txt"})




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
    check_root(root, check_files, "inat2018", "the iNaturalist 2018 folder holding train_val2018/")
    train_path, test_path = (os.path.join(folder, found[s]) for s in ("train", "test"))
    if train_path.endswith(".json"):
        train, label_of, classes = read_inat_json(train_path, root, check_files=check_files)
        test = read_inat_json(test_path, root, label_of, check_files=check_files)[0]
        num_classes = len(label_of)
    else:
        train = read_split_file(train_path, root, check_files=check_files)
        num_classes = train.class_count()
        classes = None
        test = read_split_file(test_path, root, num_classes, check_files=check_files)
    kw = dict(root=root, num_classes=num_classes, classes=classes, decode_size=decode_size,
              on_bad_image=on_bad_image)
    return finish("inat2018", root, DataSplits(train=train.dataset(transform=train_transform, **kw),
                                                test=test.dataset(transform=eval_transform, **kw)))
