"""Data layer: CIFAR-LT counts and selection (LDAM-DRW), digits-LT, split files, transforms, build_data."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from ltcls.data.build import DATASETS, TRANSFORM_KEYS, build_data, build_transforms
from ltcls.data.datasets.cifar import cifar10_lt, cifar100_lt
from ltcls.data.datasets.digits import digits_lt
from ltcls.data.datasets.split_file import FileListDataset, split_file
from ltcls.data.tools.profiles import lt_counts

OUTSIDE = r"path .* resolves outside data.root .*expected a path relative to data.root"
CIFAR10_IF100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


# ---------------------------------------------------------------- CIFAR-LT


def test_cifar10_if100_counts_match_published(cifar_files):
    splits = cifar10_lt(root=cifar_files.root, imbalance_factor=100)
    assert splits.class_counts.tolist() == CIFAR10_IF100
    assert len(splits.train) == 12406
    assert splits.train.classes[0] == "airplane" and splits.train.classes[9] == "truck"


@pytest.mark.parametrize(("builder", "imbalance_factor", "total"), [
    (cifar10_lt, 50, 13996), (cifar10_lt, 10, 20431),
    (cifar100_lt, 100, 10847), (cifar100_lt, 50, 12608), (cifar100_lt, 10, 19573),
])
def test_cifar_lt_totals_match_published(cifar_files, builder, imbalance_factor, total):
    splits = builder(root=cifar_files.root, imbalance_factor=imbalance_factor)
    counts = splits.class_counts
    assert counts.sum() == total
    assert np.all(np.diff(counts) <= 0) and counts[0] == 50000 // splits.num_classes


def test_cifar_step_profile(cifar_files):
    c10 = cifar10_lt(root=cifar_files.root, imbalance_factor=100, profile="step")
    assert c10.class_counts.tolist() == [5000] * 5 + [50] * 5
    c100 = cifar100_lt(root=cifar_files.root, imbalance_factor=10, profile="step")
    assert c100.class_counts.tolist() == [500] * 50 + [50] * 50


def test_cifar_selection_follows_ldam_drw(cifar_files):
    """Re-compute LDAM-DRW's gen_imbalanced_data with the global numpy RNG and compare the images."""
    splits = cifar10_lt(root=cifar_files.root, imbalance_factor=100, seed=0)
    state = np.random.get_state()
    try:
        np.random.seed(0)
        keep = []
        for c, n in enumerate(CIFAR10_IF100):
            idx = np.where(cifar_files.labels10 == c)[0]
            np.random.shuffle(idx)
            keep.append(idx[:n])
    finally:
        np.random.set_state(state)
    keep = np.concatenate(keep)
    expected = cifar_files.train10[keep].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(splits.train.images, expected)
    np.testing.assert_array_equal(splits.train.targets, cifar_files.labels10[keep])
    other = cifar10_lt(root=cifar_files.root, imbalance_factor=100, seed=1)
    assert not np.array_equal(other.train.images, splits.train.images)


def test_cifar_test_split_is_full_and_balanced(cifar_files):
    tf_train, tf_eval = build_transforms(img_size=32, augment="crop_pad")
    splits = cifar100_lt(tf_train, tf_eval, root=cifar_files.root, imbalance_factor=100)
    assert len(splits.test) == 10000 and set(splits.test.class_counts.tolist()) == {100}
    assert splits.test.classes == [f"fine{i}" for i in range(100)] and splits.num_classes == 100
    img, label = splits.train[len(splits.train) - 1]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and label == 99
    assert splits.test[0][0].shape == (3, 32, 32)


def test_cifar_missing_folder_names_expected_path(tmp_path, cifar_files):
    with pytest.raises(FileNotFoundError, match=re.escape(os.path.join(str(tmp_path), "cifar-10-batches-py"))):
        cifar10_lt(root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        cifar100_lt(root=str(tmp_path))
    with pytest.raises(ValueError, match="exp, step"):
        cifar10_lt(root=cifar_files.root, profile="linear")


def test_lt_counts_validates():
    assert lt_counts(10, 1.0, "exp", 100) == [100] * 10
    with pytest.raises(ValueError, match="imbalance_factor"):
        lt_counts(10, 0.5, "exp", 100)


# ---------------------------------------------------------------- digits-LT


def test_digits_lt_deterministic_balanced_test_long_tailed_train():
    a, b = digits_lt(seed=3), digits_lt(seed=3)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    np.testing.assert_array_equal(a.test.targets, b.test.targets)
    c = digits_lt(seed=4)
    assert not np.array_equal(a.train.images, c.train.images)

    assert a.test.class_counts.tolist() == [30] * 10
    remaining = 174 - 30  # the smallest digits class has 174 images
    expected = [int(remaining * (1 / 50) ** (i / 9)) for i in range(10)]
    assert a.class_counts.tolist() == expected == [144, 93, 60, 39, 25, 16, 10, 6, 4, 2]
    assert (a.class_counts < 20).sum() >= 3  # few-shot classes exist
    assert len(a.train) + len(a.test) <= 1797
    assert a.train.images.dtype == np.uint8 and a.train.images.shape[1:] == (8, 8)
    assert a.train.images.max() == 255 and a.train.classes == [str(i) for i in range(10)]
    img = a.train.load(0)
    assert img.mode == "RGB" and img.size == (8, 8)


def test_digits_lt_step_profile_and_test_size():
    splits = digits_lt(imbalance_factor=10, profile="step", test_per_class=20)
    assert splits.test.class_counts.tolist() == [20] * 10
    assert splits.class_counts.tolist() == [154] * 5 + [15] * 5
    with pytest.raises(ValueError, match="test_per_class"):
        digits_lt(test_per_class=174)


# ---------------------------------------------------------------- transforms and build_data


@pytest.mark.parametrize("augment", ["rrc", "crop_pad", "none"])
def test_transforms_output_configured_size(augment):
    train_tf, eval_tf = build_transforms(img_size=24, augment=augment, mean=[0.5, 0.5, 0.5], std=[0.25] * 3)
    img = Image.new("RGB", (50, 30), (255, 128, 0))
    for tf in (train_tf, eval_tf):
        out = tf(img)
        assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    # eval normalizes with the configured mean/std: the center pixel (255, 128, 0) -> (2, ~0.008, -2)
    np.testing.assert_allclose(eval_tf(img)[:, 12, 12].numpy(), [2.0, (128 / 255 - 0.5) / 0.25, -2.0], atol=1e-5)
    if augment == "none":
        assert train_tf is eval_tf


def test_crop_pad_pads_by_an_eighth():
    torch.manual_seed(0)
    train_tf, _ = build_transforms(img_size=16, augment="crop_pad", hflip=0.0, mean=[0, 0, 0], std=[1, 1, 1])
    img = Image.new("RGB", (16, 16), (255, 255, 255))
    outs = torch.stack([train_tf(img) for _ in range(200)])
    # zero padding of 16 // 8 = 2 pixels: some crops show a black border, none more than 2 pixels deep
    black_rows = (outs[:, 0].amax(dim=2) == 0).sum(dim=1)
    assert black_rows.max() == 2 and (black_rows > 0).any()


def test_transforms_reject_unknown_values():
    with pytest.raises(ValueError, match="rrc, crop_pad, none"):
        build_transforms(augment="autoaug")
    with pytest.raises(ValueError, match="interpolation"):
        build_transforms(interpolation="cubic")


def test_build_data_splits_transform_and_dataset_keys():
    assert TRANSFORM_KEYS == ("img_size", "augment", "crop_pct", "hflip", "mean", "std", "interpolation")
    splits = build_data({"name": "digits_lt", "img_size": 16, "augment": "crop_pad", "imbalance_factor": 10.0})
    assert splits.train[0][0].shape == (3, 16, 16) and splits.test[0][0].shape == (3, 16, 16)
    assert splits.class_counts[0] / splits.class_counts[-1] == pytest.approx(10, rel=0.1)
    with pytest.raises(TypeError, match="imbalance_facter"):
        build_data({"name": "digits_lt", "imbalance_facter": 10.0})
    with pytest.raises(KeyError, match="digits_lt"):
        build_data({"name": "digits"})
    assert {"cifar10_lt", "cifar100_lt", "digits_lt", "split_file"} <= set(DATASETS.names())


# ---------------------------------------------------------------- split files


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_split_file_parses_real_images(image_tree, tmp_path):
    train = _write(tmp_path / "train.txt", ["cls0/a.png 0", "", "cls0/b.jpg 0", "  cls1/c.png\t1  ", ""])
    val = _write(tmp_path / "val.txt", ["cls1/sub/d.jpg 1"])
    test = _write(tmp_path / "test.txt", ["cls1/c.png 1", "cls0/a.png 0"])
    splits = build_data({"name": "split_file", "root": str(image_tree), "train_split": train, "test_split": test,
                         "val_split": val, "img_size": 20, "augment": "rrc"})
    assert isinstance(splits.train, FileListDataset)
    assert splits.num_classes == 2 and splits.class_counts.tolist() == [2, 1]
    assert splits.train.paths == ["cls0/a.png", "cls0/b.jpg", "cls1/c.png"]
    assert len(splits.val) == 1 and splits.test.targets.tolist() == [1, 0]
    gray = splits.train.load(1)
    assert gray.mode == "RGB" and gray.size == (40, 30)
    img, label = splits.test[0]
    assert img.shape == (3, 20, 20) and label == 1
    assert split_file(root=str(image_tree), train_split=train, test_split=test).val is None


@pytest.mark.parametrize(("which", "line", "error", "message"), [
    ("train", "cls0/a.png", ValueError, r"1 fields in 'cls0/a.png' \(expected 'relative/path label'\)"),
    ("train", "cls0/a.png 0 extra", ValueError, r"label 'extra' is not an integer .*the label is the last field"),
    ("train", "cls0/a.png x", ValueError, r"label 'x' is not an integer \(expected 'relative/path label'\)"),
    ("train", "cls0/a.png 1.5", ValueError, r"label '1.5' is not an integer"),
    ("train", "cls0/a.png -1", ValueError, r"label -1 is negative"),
    ("test", "cls0/a.png 2", ValueError, r"label 2 out of range \(expected 0..1"),
    ("val", "cls0/a.png 7", ValueError, r"label 7 out of range"),
    ("train", "../outside.png 0", ValueError, OUTSIDE),
    ("test", "cls0/../../outside.png 0", ValueError, OUTSIDE),
    ("train", "ABSOLUTE 0", ValueError, OUTSIDE),
    ("test", "cls0/missing.png 0", FileNotFoundError, r"image 'cls0/missing.png' not found under data.root"),
])
def test_split_file_errors_name_file_and_line(image_tree, tmp_path, which, line, error, message):
    line = line.replace("ABSOLUTE", str(tmp_path / "outside.png"))
    lines = {"train": ["cls0/a.png 0", "cls1/c.png 1"], "val": ["cls0/b.jpg 0"], "test": ["cls1/c.png 1"]}
    lines[which] = [lines[which][0], "", line]  # the bad entry is on line 3 (after a blank line)
    files = {k: _write(tmp_path / f"{k}_split.txt", v) for k, v in lines.items()}
    with pytest.raises(error, match=re.escape(f"{which}_split.txt line 3: ") + message):
        split_file(root=str(image_tree), train_split=files["train"], test_split=files["test"],
                   val_split=files["val"])


def test_split_file_missing_files_and_root(image_tree, tmp_path):
    train = _write(tmp_path / "train.txt", ["cls0/a.png 0", "cls1/c.png 1"])
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope_test.txt"))):
        split_file(root=str(image_tree), train_split=train, test_split=str(tmp_path / "nope_test.txt"))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "no_root"))):
        split_file(root=str(tmp_path / "no_root"), train_split=train, test_split=train)
    with pytest.raises(ValueError, match="data.train_split must be set"):
        split_file(root=str(image_tree), test_split=train)
    many = _write(tmp_path / "many.txt", ["cls0/a.png 0", "gone1.png 0", "gone2.png 1"])
    with pytest.raises(FileNotFoundError, match=r"many.txt line 2: image 'gone1.png'.*1 more missing"):
        split_file(root=str(image_tree), train_split=many, test_split=train)
