"""Benchmark builders (ImageNet-LT, Places-LT, iNaturalist 2018) on tiny trees in the official formats, both
path layouts each, their error messages (file and line), many / medium / few in both conventions, and
FileListDataset's reduced-size decoding and bad-image handling."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

from ltcls.data.build import DATASETS, build_data, build_transforms
from ltcls.data.datasets.imagenet_lt import imagenet_lt
from ltcls.data.datasets.inat2018 import inat2018
from ltcls.data.datasets.places_lt import places_lt
from ltcls.data.datasets.split_file import BadImageError, FileListDataset, split_file, transform_min_size
from ltcls.data.tools.published import group_sizes

# Each class gets its own color, so a loaded image shows which file a (mapped) path reached.
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def _jpeg(path: Path, label: int, size: tuple[int, int] = (24, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, COLORS[label]).save(path, quality=95)


def _write(path: Path, lines: list[str]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _label_of_pixel(img: Image.Image) -> int:
    pixel = np.asarray(img)[img.height // 2, img.width // 2].astype(int)
    return int(np.argmin([np.abs(pixel - np.array(c)).sum() for c in COLORS]))


# ---------------------------------------------------------------- ImageNet-LT

WNIDS = ["n01440764", "n01443537", "n01484850"]
IMAGENET_TRAIN = [5, 3, 2]


def _imagenet_tree(tmp_path: Path, root_layout: str, split_layout: str) -> tuple[Path, Path]:
    """ILSVRC-2012-style root (train/<wnid>/, val/ in ``root_layout``) and the three official split files
    with test paths in ``split_layout`` ('folders' or 'flat')."""
    root, splits = tmp_path / "imagenet", tmp_path / "splits"
    train, val, test = [], [], []
    for label, (wnid, n) in enumerate(zip(WNIDS, IMAGENET_TRAIN)):
        for k in range(n + 1):  # the last image of each class goes to the val split
            rel = f"train/{wnid}/{wnid}_{k}.JPEG"
            _jpeg(root / rel, label)
            (val if k == n else train).append(f"{rel} {label}")
        for k in range(2):
            name = f"ILSVRC2012_val_{label * 10 + k + 1:08d}.JPEG"
            _jpeg(root / ("val" if root_layout == "flat" else f"val/{wnid}") / name, label)
            test.append(f"val/{name} {label}" if split_layout == "flat" else f"val/{wnid}/{name} {label}")
    _write(splits / "ImageNet_LT_train.txt", train)
    _write(splits / "ImageNet_LT_val.txt", val)
    _write(splits / "ImageNet_LT_test.txt", test)
    return root, splits


@pytest.mark.parametrize("root_layout", ["folders", "flat"])
@pytest.mark.parametrize("split_layout", ["folders", "flat"])
def test_imagenet_lt_both_test_layouts(tmp_path, root_layout, split_layout):
    root, splits = _imagenet_tree(tmp_path, root_layout, split_layout)
    data = build_data({"name": "imagenet_lt", "root": str(root), "split_dir": str(splits), "img_size": 16})
    assert data.num_classes == 3 and data.class_counts.tolist() == IMAGENET_TRAIN
    assert data.train.classes == WNIDS and data.test.classes == WNIDS
    assert len(data.val) == 3 and data.val.targets.tolist() == [0, 1, 2]
    assert data.test.targets.tolist() == [0, 0, 1, 1, 2, 2]
    expected = ("val/ILSVRC2012_val_00000001.JPEG" if root_layout == "flat"
                else "val/n01440764/ILSVRC2012_val_00000001.JPEG")
    assert data.test.paths[0] == expected
    for i in range(len(data.test)):  # every mapped path reaches an image of its own class
        assert _label_of_pixel(data.test.load(i)) == data.test.targets[i]
    img, label = data.test[5]
    assert img.shape == (3, 16, 16) and label == 2


def test_imagenet_lt_errors_name_file_and_line(tmp_path):
    root, splits = _imagenet_tree(tmp_path, "folders", "folders")
    test_file = splits / "ImageNet_LT_test.txt"
    lines = test_file.read_text().splitlines()
    test_file.write_text("\n".join([lines[0], lines[2].replace(" 1", " 0")]) + "\n")  # n01443537 image, label 0
    with pytest.raises(ValueError, match=r"ImageNet_LT_test.txt line 2: path 'val/n01443537/.*' is in folder "
                                         r"'n01443537' but label 0 is 'n01440764'"):
        imagenet_lt(root=str(root), split_dir=str(splits))

    test_file.write_text("\n".join(lines) + "\n")
    os.rename(root / "val", root / "val_moved")
    with pytest.raises(ValueError, match=r"ImageNet_LT_test.txt line 1: test image .* tried "
                                         r"val/<wnid>/ILSVRC2012_val_\*.JPEG \(class folders\) and "
                                         r"val/ILSVRC2012_val_\*.JPEG \(flat"):
        imagenet_lt(root=str(root), split_dir=str(splits))
    os.rename(root / "val_moved", root / "val")

    train_file = splits / "ImageNet_LT_train.txt"
    train = train_file.read_text().splitlines()
    train_file.write_text("\n".join(train[:2] + ["train/n01440764/missing.JPEG 0"] + train[2:]) + "\n")
    with pytest.raises(FileNotFoundError, match=r"ImageNet_LT_train.txt line 3: image "
                                                r"'train/n01440764/missing.JPEG' not found under data.root"):
        imagenet_lt(root=str(root), split_dir=str(splits))
    train_file.write_text("\n".join(train[:2] + ["train/n01443537/n01443537_0.JPEG 0"] + train[2:]) + "\n")
    with pytest.raises(ValueError, match=r"ImageNet_LT_train.txt line 3: label 0 is class folder 'n01443537' "
                                         r"here but 'n01440764' on .*ImageNet_LT_train.txt line 1"):
        imagenet_lt(root=str(root), split_dir=str(splits))
    train_file.write_text("\n".join(train[:2] + ["train/n01440764/n01440764_0.JPEG"] + train[2:]) + "\n")
    with pytest.raises(ValueError, match=r"ImageNet_LT_train.txt line 3: 1 fields .*expected 'relative/path label'"):
        imagenet_lt(root=str(root), split_dir=str(splits))

    os.remove(splits / "ImageNet_LT_test.txt")
    with pytest.raises(FileNotFoundError, match=r"ImageNet_LT_test.txt' not found \(data.split_dir must hold"):
        imagenet_lt(root=str(root), split_dir=str(splits))
    with pytest.raises(FileNotFoundError, match=r"data.split_dir '.*nowhere' not found"):
        imagenet_lt(root=str(root), split_dir=str(tmp_path / "nowhere"))


def test_groups_in_both_conventions_from_the_train_split(tmp_path):
    """Counts 101 / 100 / 21 / 20 / 19 sit on both conventions' boundaries (no image needed: check_files off)."""
    counts = [101, 100, 21, 20, 19]
    train = [f"train/n{c:08d}/img_{k}.JPEG {c}" for c, n in enumerate(counts) for k in range(n)]
    _write(tmp_path / "ImageNet_LT_train.txt", train)
    _write(tmp_path / "ImageNet_LT_test.txt", [f"val/ILSVRC2012_val_{c:08d}.JPEG {c}" for c in range(5)])
    data = imagenet_lt(root=str(tmp_path / "absent"), split_dir=str(tmp_path), check_files=False)
    assert data.val is None and data.class_counts.tolist() == counts
    assert group_sizes(data.class_counts) == {"many": 1, "medium": 3, "few": 1}  # Kang: > 100, < 20
    assert group_sizes(data.class_counts, "oltr") == {"many": 2, "medium": 1, "few": 2}  # OLTR: >= 100, <= 20
    with pytest.raises(ValueError, match="kang, oltr"):
        group_sizes(counts, "lvis")


# ---------------------------------------------------------------- Places-LT

# (standard folder name, data_256 path under its letter); label = sorted position, as in the official files
PLACES = [("airfield", "a/airfield"), ("alley", "a/alley"),
          ("apartment_building-outdoor", "a/apartment_building/outdoor")]
PLACES_TRAIN = [4, 2, 1]


def _places_path(layout: str, kind: str, label: int, name: str) -> str:
    cls, deep = PLACES[label]
    if layout == "standard":
        return f"{'train' if kind == 'train' else 'val'}/{cls}/{name}"
    return f"data_256/{deep}/{name}" if kind == "train" else f"val_256/{name}"


def _places_tree(tmp_path: Path, root_layout: str, split_layout: str) -> tuple[Path, Path]:
    root, splits = tmp_path / "places365", tmp_path / "splits"
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for label, n in enumerate(PLACES_TRAIN):
        for k in range(n + 1):
            name = f"{label * 100 + k + 1:08d}.jpg"
            _jpeg(root / _places_path(root_layout, "train", label, name), label)
            lines["val" if k == n else "train"].append(f"{_places_path(split_layout, 'train', label, name)} {label}")
        name = f"Places365_val_{label + 1:08d}.jpg"
        _jpeg(root / _places_path(root_layout, "val", label, name), label)
        lines["test"].append(f"{_places_path(split_layout, 'val', label, name)} {label}")
    for split, entries in lines.items():
        _write(splits / f"Places_LT_{split}.txt", entries)
    return root, splits


@pytest.mark.parametrize("root_layout", ["standard", "data_256"])
@pytest.mark.parametrize("split_layout", ["standard", "data_256"])
def test_places_lt_both_layouts(tmp_path, root_layout, split_layout):
    root, splits = _places_tree(tmp_path, root_layout, split_layout)
    data = places_lt(*build_transforms(16), root=str(root), split_dir=str(splits))
    assert data.train.classes == [cls for cls, _ in PLACES]
    assert data.class_counts.tolist() == PLACES_TRAIN and len(data.val) == 3
    assert data.test.targets.tolist() == [0, 1, 2]
    assert data.test.paths[2] == _places_path(root_layout, "val", 2, "Places365_val_00000003.jpg")
    assert data.train.paths[-1] == _places_path(root_layout, "train", 2, "00000201.jpg")
    for ds in (data.train, data.val, data.test):
        for i in range(len(ds)):
            assert _label_of_pixel(ds.load(i)) == ds.targets[i]
    assert data.test[0][0].shape == (3, 16, 16)


def test_places_lt_errors_name_file_line_and_layouts(tmp_path):
    root, splits = _places_tree(tmp_path, "standard", "standard")
    train_file = splits / "Places_LT_train.txt"
    train = train_file.read_text().splitlines()
    train_file.write_text("\n".join(train[:1] + ["images/airfield/x.jpg 0"] + train[1:]) + "\n")
    with pytest.raises(ValueError, match=r"Places_LT_train.txt line 2: path 'images/airfield/x.jpg' is in no "
                                         r"known Places365 layout \(expected train/<class>/<file>, .*val_256/"):
        places_lt(root=str(root), split_dir=str(splits))
    train_file.write_text("\n".join(train) + "\n")

    test_file = splits / "Places_LT_test.txt"
    test = test_file.read_text().splitlines()
    test_file.write_text("\n".join([test[0], test[1].replace(" 1", " 2")]) + "\n")
    with pytest.raises(ValueError, match=r"Places_LT_test.txt line 2: path 'val/alley/.*' is in category folder "
                                         r"'alley' but label 2 is 'apartment_building-outdoor'"):
        places_lt(root=str(root), split_dir=str(splits))
    test_file.write_text("\n".join(test) + "\n")

    empty = tmp_path / "empty_root"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"Places_LT_train.txt line 1: train image .* holds no Places365 train "
                                         r"folder; tried train/ \(standard\), data_256/ \(data_256\), "
                                         r"data_large/ \(data_large\)"):
        places_lt(root=str(empty), split_dir=str(splits))
    with pytest.raises(FileNotFoundError, match=r"data.root folder '.*nope' not found \(expected a Places365 folder"):
        places_lt(root=str(tmp_path / "nope"), split_dir=str(splits))


# ---------------------------------------------------------------- iNaturalist 2018

INAT_CATEGORIES = [{"id": 0, "name": "Abies concolor", "supercategory": "Plantae", "kingdom": "Plantae"},
                   {"id": 1, "name": "Danaus plexippus", "supercategory": "Insecta", "kingdom": "Animalia"},
                   {"id": 2, "name": "Pica pica", "supercategory": "Aves", "kingdom": "Animalia"}]
INAT_TRAIN = [4, 2, 1]


def _inat_tree(tmp_path: Path) -> Path:
    """``train_val2018/<supercategory>/<id>/<hash>.jpg`` with train2018.json / val2018.json (the official
    keys) and classifier-balancing's iNaturalist18_{train,val}.txt lists of the same images."""
    root = tmp_path / "inat2018"
    files: dict[str, dict] = {}
    lists: dict[str, list[str]] = {"train": [], "val": []}
    image_id = 0
    for split, per_class in (("train", INAT_TRAIN), ("val", [1, 1, 1])):
        images, annotations = [], []
        for cat, n in zip(INAT_CATEGORIES, per_class):
            for _ in range(n):
                rel = f"train_val2018/{cat['supercategory']}/{cat['id']}/{split}{image_id:04x}.jpg"
                _jpeg(root / rel, cat["id"])
                images.append({"id": image_id, "file_name": rel, "width": 24, "height": 16, "license": 1,
                               "rights_holder": "tests"})
                annotations.append({"id": image_id, "image_id": image_id, "category_id": cat["id"]})
                lists[split].append(f"{rel} {cat['id']}")
                image_id += 1
        files[split] = {"info": {"year": 2018}, "images": images, "annotations": annotations,
                        "categories": INAT_CATEGORIES, "licenses": [{"id": 1, "name": "CC BY"}]}
    for split, data in files.items():
        (root / f"{split}2018.json").write_text(json.dumps(data))
        _write(tmp_path / "lists" / f"iNaturalist18_{split}.txt", lists[split])
    return root


def test_inat2018_json_and_split_files_agree(tmp_path):
    root = _inat_tree(tmp_path)
    from_json = build_data({"name": "inat2018", "root": str(root), "img_size": 16})
    assert from_json.train.classes == ["Abies concolor", "Danaus plexippus", "Pica pica"]
    assert from_json.class_counts.tolist() == INAT_TRAIN and from_json.val is None
    assert from_json.test.targets.tolist() == [0, 1, 2] and from_json.test.where(1) == \
        f"{root / 'val2018.json'} images[1]"
    from_lists = inat2018(root=str(root), split_dir=str(tmp_path / "lists"))
    assert from_lists.train.paths == from_json.train.paths
    assert from_lists.train.targets.tolist() == from_json.train.targets.tolist()
    assert from_lists.train.classes == ["0", "1", "2"]
    for i in range(len(from_json.train)):
        assert _label_of_pixel(from_json.train.load(i)) == from_json.train.targets[i]


def test_inat2018_errors_name_file_and_entry(tmp_path):
    root = _inat_tree(tmp_path)
    train_json, val_json = root / "train2018.json", root / "val2018.json"
    good = train_json.read_text()
    data = json.loads(good)
    data["annotations"] = data["annotations"][1:]
    train_json.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"train2018.json images\[0\]: image id 0 .* has no annotation"):
        inat2018(root=str(root))
    train_json.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(ValueError, match=r"train2018.json line 2 column 12: invalid json"):
        inat2018(root=str(root))
    train_json.write_text(good)
    data = json.loads(val_json.read_text())
    data["annotations"][2]["category_id"] = 7
    val_json.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"val2018.json annotations\[2\]: category_id 7 is not a category"):
        inat2018(root=str(root))
    with pytest.raises(FileNotFoundError, match=r"tried train2018.json \+ val2018.json or iNaturalist18_train.txt "
                                                r"\+ iNaturalist18_val.txt"):
        inat2018(root=str(root), split_dir=str(tmp_path))


def test_benchmarks_are_registered_with_their_parameters():
    assert {"imagenet_lt", "places_lt", "inat2018", "split_file", "cifar10_lt", "cifar100_lt"} <= set(DATASETS.names())
    for name in ("imagenet_lt", "places_lt", "inat2018"):
        assert list(DATASETS.hyperparams(name)) == ["root", "split_dir", "decode_size", "on_bad_image", "check_files"]


# ---------------------------------------------------------------- reduced-size decoding


def _photo(path: Path, size: tuple[int, int]) -> None:
    """A smooth RGB image with mild noise, saved as JPEG (a stand-in for a photograph)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (w + h) * 255], axis=-1)
    arr += np.random.default_rng(0).normal(0, 3, arr.shape)
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)


def test_transform_min_size_reads_the_first_resize():
    train, evaluation = build_transforms(224, augment="rrc")
    assert transform_min_size(train) == 224 and transform_min_size(evaluation) == 256
    assert transform_min_size(build_transforms(32, augment="crop_pad", crop_pct=1.0)[0]) == 32
    assert transform_min_size(T.Compose([T.CenterCrop(100), T.ToTensor()])) == 0
    assert transform_min_size(T.Compose([T.Resize((120, 200))])) == 200
    assert transform_min_size(None) == 0


def test_reduced_decoding_keeps_what_the_transform_needs(tmp_path):
    _photo(tmp_path / "big.jpg", (1200, 900))
    Image.open(tmp_path / "big.jpg").save(tmp_path / "big.png")
    train_tf, eval_tf = build_transforms(224)
    auto = FileListDataset(str(tmp_path), ["big.jpg", "big.png"], [0, 0], 1, transform=eval_tf)
    assert auto.load(0).size == (600, 450)  # 1/2: 1/4 would leave 225 < 256 rows for Resize(256)
    assert auto.load(1).size == (1200, 900)  # PNG: no reduced decoding
    assert auto.with_transform(train_tf).load(0).size == (300, 225)  # 1/4 keeps >= 224 for the RRC
    full = FileListDataset(str(tmp_path), ["big.jpg"], [0], 1, transform=eval_tf, decode_size=0)
    assert full.load(0).size == (1200, 900)
    assert FileListDataset(str(tmp_path), ["big.jpg"], [0], 1, decode_size=100).load(0).size == (150, 113)
    # the eval tensors barely differ (normalized units; a one-level change of 8-bit color is ~0.017)
    diff = (auto[0][0] - full[0][0]).abs()
    assert auto[0][0].shape == (3, 224, 224) and diff.mean() < 0.01 and diff.max() < 0.1


# ---------------------------------------------------------------- bad images


@pytest.fixture
def bad_tree(tmp_path: Path) -> tuple[Path, str, str]:
    """Class 0: a.jpg, truncated.jpg (half its bytes), b.jpg, a listed but missing gone.jpg; class 1: c.jpg."""
    root = tmp_path / "images"
    for name, label in (("a", 0), ("b", 0), ("c", 1)):
        _jpeg(root / f"{name}.jpg", label)
    _photo(root / "truncated.jpg", (64, 48))
    data = (root / "truncated.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    train = _write(tmp_path / "train.txt", ["a.jpg 0", "truncated.jpg 0", "b.jpg 0", "gone.jpg 0", "c.jpg 1"])
    test = _write(tmp_path / "test.txt", ["c.jpg 1"])
    return root, train, test


def test_bad_image_error_names_file_and_line(bad_tree):
    root, train, test = bad_tree
    data = split_file(root=str(root), train_split=train, test_split=test, check_files=False)
    assert data.train.bad_image_count == 0
    with pytest.raises(BadImageError, match=r"cannot read image 'truncated.jpg' under data.root .* \(.*train.txt "
                                            r"line 2\): OSError: (image file is truncated|Truncated File Read)"
                                            r".*on_bad_image: skip"):
        data.train[1]
    with pytest.raises(BadImageError, match=r"'gone.jpg' .*train.txt line 4\): FileNotFoundError"):
        data.train[3]


def test_bad_image_skip_logs_once_counts_and_replaces(bad_tree, caplog):
    root, train, test = bad_tree
    data = split_file(root=str(root), train_split=train, test_split=test, check_files=False, on_bad_image="skip")
    with caplog.at_level(logging.WARNING, logger="ltcls.data.datasets.split_file"):
        for _ in range(3):
            img, label = data.train[1]
            assert label == 0 and _label_of_pixel(img) == 0  # replaced by b.jpg, of the same class
        img, label = data.train[3]
        assert label == 0 and np.asarray(img).shape == (16, 24, 3)
    assert data.train.bad_image_count == 2
    assert sorted(data.train.bad_image_paths) == ["gone.jpg", "truncated.jpg"]
    logged = [r.getMessage() for r in caplog.records if "skipping unreadable" in r.getMessage()]
    assert len(logged) == 2 and "train.txt line 2" in logged[0] and "truncated" in logged[0]
    assert data.train.with_transform(None).bad_image_count == 2  # views share the counter


def test_bad_image_count_across_dataloader_workers(bad_tree):
    root, train, test = bad_tree
    _, eval_tf = build_transforms(16)
    data = split_file(eval_tf, eval_tf, root=str(root), train_split=train, test_split=test, check_files=False,
                      on_bad_image="skip")
    loader = DataLoader(data.train, batch_size=1, num_workers=2, shuffle=False)
    labels = torch.cat([y for _, y in loader]).tolist()
    assert labels == [0, 0, 0, 0, 1]
    assert data.train.bad_image_count == 2  # counted in the worker processes, read in the parent


def test_skip_fails_when_a_whole_class_is_unreadable(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    ds = FileListDataset(str(tmp_path), ["bad.jpg", "gone.jpg"], [0, 0], 1, on_bad_image="skip",
                         source="s.txt", lines=[1, 2])
    with pytest.raises(BadImageError, match=re.escape("every image of class 0 (0) is unreadable; the first was "
                                                      "image 'bad.jpg'") + r".*s.txt line 1"):
        ds[0]
    with pytest.raises(ValueError, match="on_bad_image must be one of error, skip"):
        FileListDataset(str(tmp_path), ["bad.jpg"], [0], 1, on_bad_image="ignore")
