"""The image_folder dataset: torchvision's ImageFolder layout read into FileListDataset splits."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ltcls.data.datasets.digits import digits_lt
from ltcls.data.datasets.image_folder import image_folder
from ltcls.data.datasets.split_file import BadImageError
from ltcls.data.transforms import build_transforms
from ltcls.registries import DATASETS


def _image(path: Path, value: int, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 10, 3), value, dtype=np.uint8)).save(path, format=fmt)


def _tree(root: Path) -> None:
    """train: cat 3 (jpg, png, bmp), dog 1, zebra 2; test: cat 1, zebra 1 (no dog); val: dog 1."""
    for i, ext in enumerate(("jpg", "png", "bmp")):
        _image(root / "train" / "cat" / f"c{i}.{ext}", 10 + i)
    _image(root / "train" / "dog" / "d0.webp", 50)
    _image(root / "train" / "zebra" / "z0.tif", 90)
    _image(root / "train" / "zebra" / "z1.JPEG", 91, fmt="JPEG")
    (root / "train" / "zebra" / "notes.txt").write_text("not an image")
    _image(root / "test" / "cat" / "t0.png", 20)
    _image(root / "test" / "zebra" / "t1.png", 95)
    _image(root / "val" / "dog" / "v0.png", 55)


def test_classes_counts_and_splits(tmp_path: Path) -> None:
    _tree(tmp_path)
    train_tf, eval_tf = build_transforms(img_size=8, augment="none")
    data = image_folder(train_transform=train_tf, eval_transform=eval_tf, root=str(tmp_path))
    assert data.class_names == ["cat", "dog", "zebra"]
    assert data.num_classes == 3
    assert data.class_counts.tolist() == [3, 1, 2]  # notes.txt is not an image
    assert sorted(data.test.targets.tolist()) == [0, 2]
    assert data.val is not None and data.val.targets.tolist() == [1]
    assert data.test.classes == ["cat", "dog", "zebra"]
    img, label = data.test[int(np.flatnonzero(data.test.targets == 2)[0])]
    assert label == 2 and isinstance(img, torch.Tensor) and img.shape == (3, 8, 8)


def test_registered_and_no_val(tmp_path: Path) -> None:
    _tree(tmp_path)
    shutil.rmtree(tmp_path / "val")
    data = DATASETS.build("image_folder", {"root": str(tmp_path)}, train_transform=None, eval_transform=None)
    assert data.val is None
    img, label = data.train[0]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and label == 0


def test_unknown_test_class_is_named(tmp_path: Path) -> None:
    _tree(tmp_path)
    _image(tmp_path / "test" / "unicorn" / "u.png", 1)
    with pytest.raises(ValueError, match="'unicorn'.*not classes of"):
        image_folder(root=str(tmp_path))


def test_empty_train_class_and_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train"):
        image_folder(root=str(tmp_path))
    _tree(tmp_path)
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        image_folder(root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="data.root"):
        image_folder(root=str(tmp_path / "nowhere"))


def test_bad_image_uses_file_list_dataset_rules(tmp_path: Path) -> None:
    _tree(tmp_path)
    (tmp_path / "train" / "cat" / "c0.jpg").write_bytes(b"not a jpeg")
    strict = image_folder(root=str(tmp_path))
    bad = strict.train.paths.index(str(Path("train") / "cat" / "c0.jpg"))
    with pytest.raises(BadImageError, match="c0.jpg"):
        strict.train[bad]
    lenient = image_folder(root=str(tmp_path), on_bad_image="skip")
    img, label = lenient.train[bad]
    assert label == 0 and lenient.train.bad_image_count == 1


def test_class_names_of_digits_lt() -> None:
    assert digits_lt(test_per_class=5).class_names == [str(d) for d in range(10)]
