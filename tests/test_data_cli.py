"""``ltcls-data``: stats (incl. the published-number check), verify (truncated and missing images, exit
status), make-split (reproducible, follows its profile) and --help."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ltcls.cli import data as data_cli
from ltcls.cli.data import main
from ltcls.data.datasets.split_file import split_file
from ltcls.data.tools.make_split import MAKE_SPLIT_PROFILES, pareto_counts
from ltcls.data.tools.published import CONVENTIONS

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "imagenet_lt_ce.yaml")


def imagenet_lt_like_counts() -> list[int]:
    """1000 class counts with ImageNet-LT's published statistics: 115,846 images, max 1280, min 5, and
    385 / 479 / 136 many / medium / few classes (Kang); 10 classes sit at 20 and 10 at 100, so the OLTR
    convention gives 395 / 459 / 146."""
    few = [5] + [10] * 135
    medium = [20] * 10 + [100] * 10 + [50] * 459
    many_total = 115_846 - sum(few) - sum(medium) - 1280
    base, extra = divmod(many_total, 384)
    return [1280] + [base + 1] * extra + [base] * (384 - extra) + medium + few


@pytest.fixture(scope="session")
def official_splits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ImageNet_LT_{train,val,test}.txt with the published sizes (text only: no image is written)."""
    folder = tmp_path_factory.mktemp("ImageNet_LT")
    counts = imagenet_lt_like_counts()
    wnid = [f"n{c:08d}" for c in range(1000)]
    train = [f"train/{wnid[c]}/{wnid[c]}_{k}.JPEG {c}\n" for c, n in enumerate(counts) for k in range(n)]
    val = [f"train/{wnid[c]}/{wnid[c]}_val{k}.JPEG {c}\n" for c in range(1000) for k in range(20)]
    test = [f"val/ILSVRC2012_val_{c * 50 + k + 1:08d}.JPEG {c}\n" for c in range(1000) for k in range(50)]
    for split, lines in (("train", train), ("val", val), ("test", test)):
        (folder / f"ImageNet_LT_{split}.txt").write_text("".join(lines))
    return folder


# ---------------------------------------------------------------- stats


def test_stats_official_train_file_matches_published(official_splits, capsys):
    assert main(["stats", str(official_splits / "ImageNet_LT_train.txt")]) == 0
    out = capsys.readouterr().out
    assert "ImageNet_LT_train.txt: train split of ImageNet-LT" in out
    assert re.search(r"train\s+1000/1000\s+115,846\s+1280\s+5\s+256\.0", out)
    assert "many / medium / few classes (train counts; many > 100, few < 20 (Kang et al.)): 385 / 479 / 136" in out
    assert re.search(r"\n\s+5-9 few\s+\|#\s+1\n", out)  # the one class of 5 images
    assert re.search(r"10-19 few\s+\|#+\s+135\n", out) and re.search(r"200-499 many\s+\|#+\s+384\n", out)
    assert re.search(r"50-100 medium \|#{40} 469\n", out)  # the tallest bar is full width
    assert re.search(r"1000-1280 many\s+\|#\s+1\n", out)
    assert "  train: matches (115,846 images, max 1280, min 5)" in out
    assert "=> matches the published ImageNet-LT split\n" in out


def test_stats_oltr_convention_and_a_modified_copy(official_splits, tmp_path, capsys):
    assert main(["stats", str(official_splits / "ImageNet_LT_train.txt"), "--convention", "oltr"]) == 0
    out = capsys.readouterr().out
    assert "many >= 100, few <= 20 (Liu et al., OLTR)): 395 / 459 / 146" in out
    assert re.search(r"10-20 few\s+\|#+\s+145\n", out) and re.search(r"100-199 many\s+\|#*\s+10\n", out)
    assert "not compared under 'oltr'" in out and "=> matches" in out

    lines = (official_splits / "ImageNet_LT_train.txt").read_text().splitlines(keepends=True)
    (tmp_path / "ImageNet_LT_train.txt").write_text("".join(lines[:-1]))  # one image fewer in the last class
    assert main(["stats", str(tmp_path / "ImageNet_LT_train.txt")]) == 0
    out = capsys.readouterr().out
    assert "  train: DIFFERS: images 115,845 (published 115,846)\n" in out
    assert "=> DIFFERS from the published ImageNet-LT split (not the official split files" in out


def test_stats_of_a_config_checks_every_split(official_splits, tmp_path, capsys):
    """No image is needed: stats reads the split files only (the root does not exist)."""
    rc = main(["stats", CONFIG, "--set", f"data.split_dir={official_splits}", f"data.root={tmp_path / 'none'}"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "dataset 'imagenet_lt'" in out
    assert re.search(r"val\s+1000/1000\s+20,000\s+20\s+20\s+1\.0", out)
    assert re.search(r"test\s+1000/1000\s+50,000\s+50\s+50\s+1\.0", out)
    assert "  val: matches (20,000 images, max 20, min 20)" in out
    assert "  test: matches (50,000 images, max 50, min 50)" in out
    assert "=> matches the published ImageNet-LT splits" in out


def _exit_code(argv: list[str]) -> int:
    """The exit status of ``ltcls-data ARGV`` that ends in a one-line error (SystemExit, as argparse's)."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code


def test_stats_of_a_non_benchmark_file_and_bad_input(tmp_path, capsys):
    split = tmp_path / "mine.txt"
    split.write_text("a.jpg 0\nb.jpg 0\nc.jpg 0\nd.jpg 1\n")
    assert main(["stats", str(split)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"train\s+2/2\s+4\s+3\s+1\s+3\.0", out) and "published" not in out
    split.write_text("a.jpg 0\nb.jpg x\n")
    assert _exit_code(["stats", str(split)]) == 2
    assert re.search(r"mine.txt line 2: label 'x' is not an integer", capsys.readouterr().err)


# ---------------------------------------------------------------- verify


def _tiny_imagenet(tmp_path: Path) -> tuple[Path, Path]:
    """Two WordNet ids, 3 train + 1 val + 2 test (flat val/) images each, and the three split files."""
    root, splits = tmp_path / "imagenet", tmp_path / "splits"
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for label, wnid in enumerate(["n01440764", "n01443537"]):
        for k in range(4):
            rel = f"train/{wnid}/{wnid}_{k}.JPEG"
            lines["val" if k == 3 else "train"].append(f"{rel} {label}")
        for k in range(2):
            lines["test"].append(f"val/ILSVRC2012_val_{label * 2 + k + 1:08d}.JPEG {label}")
    for split, entries in lines.items():
        for entry in entries:
            path = root / entry.split()[0]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 24), (200, 100, 50)).save(path, quality=90)
        splits.mkdir(exist_ok=True)
        (splits / f"ImageNet_LT_{split}.txt").write_text("\n".join(entries) + "\n")
    return root, splits


def test_verify_reports_truncated_and_missing_images(tmp_path, capsys):
    root, splits = _tiny_imagenet(tmp_path)
    args = ["verify", CONFIG, "--set", f"data.root={root}", f"data.split_dir={splits}", "--workers", "2",
            "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "checked 12 listed images (train 6, val 2, test 4) with 2 threads" in out and out.rstrip().endswith(
        "OK: every listed image exists and decodes, and every label is in range")

    bad = root / "train/n01443537/n01443537_1.JPEG"  # train line 5
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    os.remove(root / "val/ILSVRC2012_val_00000002.JPEG")  # test line 2
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "MISSING: 1 image(s) not found under data.root\n" in out
    assert f"  {splits / 'ImageNet_LT_test.txt'} line 2: val/ILSVRC2012_val_00000002.JPEG\n" in out
    assert "UNREADABLE: 1 image(s) cannot be opened or decoded\n" in out
    assert re.search(re.escape(f"  {splits / 'ImageNet_LT_train.txt'} line 5: train/n01443537/n01443537_1.JPEG: ")
                     + "OSError: ", out)
    assert out.rstrip().endswith("FAILED: 2 of 12 listed entries have problems")
    assert main([*args, "--show", "0"]) == 1
    out = capsys.readouterr().out
    assert "  ... and 1 more (1 in all)" in out and "line 2" not in out


def test_verify_exit_status_2_when_a_split_cannot_be_read(tmp_path, capsys):
    root, splits = _tiny_imagenet(tmp_path)
    test_file = splits / "ImageNet_LT_test.txt"
    test_file.write_text(test_file.read_text() + "val/ILSVRC2012_val_00000009.JPEG 7\n")
    assert _exit_code(["verify", CONFIG, "--set", f"data.root={root}", f"data.split_dir={splits}",
                       "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "ltcls-data verify: error:" in err and "ImageNet_LT_test.txt line 5: label 7 out of range" in err
    assert _exit_code(["verify", CONFIG, "--set", "data.nope=1"]) == 2
    assert "unknown key 'data.nope'" in capsys.readouterr().err


def test_verify_lists_duplicates_and_classes_without_training_images(tmp_path, capsys):
    root, splits = _tiny_imagenet(tmp_path)
    train = splits / "ImageNet_LT_train.txt"
    lines = train.read_text().splitlines()
    # class 1's training images become class 2's: class 1 keeps its val / test images but has no training image
    lines = [line[:-1] + "2" if line.endswith(" 1") else line for line in lines] + [lines[0], lines[1], lines[0]]
    train.write_text("\n".join(lines) + "\n")
    args = ["verify", CONFIG, "--set", f"data.root={root}", f"data.split_dir={splits}", "--no-progress"]
    assert main(args) == 0  # warnings only
    out = capsys.readouterr().out
    assert "DUPLICATE (warning): 2 image(s) listed more than once, each copy counted as a sample\n" in out
    assert (f"  {train} line 1: train/n01440764/n01440764_0.JPEG: listed 3 times (at line 1, line 7, line 9)\n"
            in out)
    assert f"  {train} line 2: train/n01440764/n01440764_1.JPEG: listed 2 times (at line 2, line 8)\n" in out
    assert f"EMPTY CLASS (warning): 1 class(es) without a training image\n  {train}: class 1\n" in out
    assert out.rstrip().endswith("OK: every listed image exists and decodes, and every label is in range "
                                 "(3 warning(s) above)")

    os.remove(root / "val/ILSVRC2012_val_00000002.JPEG")  # an error as well: exit status 1, warnings still listed
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "DUPLICATE (warning): 2 image(s)" in out and "EMPTY CLASS (warning): 1 class(es)" in out
    assert out.rstrip().endswith("FAILED: 1 of 15 listed entries have problems (3 warning(s) above)")


# ---------------------------------------------------------------- make-split


def _class_folders(tmp_path: Path, sizes: list[int]) -> Path:
    root = tmp_path / "full"
    for c, n in enumerate(sizes):
        for split, count in (("train", n), ("val", 2)):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                Image.new("RGB", (8, 8), (c * 40, k, 0)).save(folder / f"img{k:03d}.jpg")
    (root / "train" / "class0" / "notes.txt").write_text("not an image")
    return root


def _make(root: Path, out: Path, *extra: str) -> int:
    argv = ["make-split", "--root", str(root), "--test-dir", "val", "--val-per-class", "3", "--name", "Tiny_LT",
            "--out", str(out), *extra]
    try:
        return main(argv)
    except SystemExit as e:  # a one-line error
        return e.code


def _counts(path: Path) -> list[int]:
    labels = [int(line.split()[1]) for line in path.read_text().splitlines()]
    return np.bincount(labels, minlength=5).tolist()


def test_make_split_pareto_is_reproducible_and_follows_its_profile(tmp_path, capsys):
    root = _class_folders(tmp_path, [30, 28, 26, 24, 23])
    assert _make(root, tmp_path / "a", "--img-max", "19", "--img-min", "2", "--seed", "1") == 0
    assert "wrote " + str(tmp_path / "a" / "Tiny_LT_train.txt") in capsys.readouterr().out
    assert _make(root, tmp_path / "b", "--img-max", "19", "--img-min", "2", "--seed", "1") == 0
    assert _make(root, tmp_path / "c", "--img-max", "19", "--img-min", "2", "--seed", "2") == 0
    names = ["Tiny_LT_train.txt", "Tiny_LT_val.txt", "Tiny_LT_test.txt", "Tiny_LT_counts.json"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / names[0]).read_bytes() != (tmp_path / "c" / names[0]).read_bytes()

    # Pareto profile, computed independently: sorted draws scaled onto [img_min, img_max]
    x = np.sort(np.random.default_rng(1).pareto(6.0, 5))[::-1]
    expected = np.rint(2 + (x - x[-1]) / (x[0] - x[-1]) * 17).astype(int).tolist()
    train = _counts(tmp_path / "a" / names[0])
    assert sorted(train, reverse=True) == expected and max(train) == 19 and min(train) == 2
    assert _counts(tmp_path / "a" / names[1]) == [3] * 5 and _counts(tmp_path / "a" / names[2]) == [2] * 5

    summary = json.loads((tmp_path / "a" / names[3]).read_text())
    assert summary["classes"] == [f"class{c}" for c in range(5)] and summary["counts"]["train"] == train
    assert summary["totals"] == {"train": sum(train), "val": 15, "test": 10} and summary["profile"] == "pareto"
    train_paths = {line.split()[0] for line in (tmp_path / "a" / names[0]).read_text().splitlines()}
    val_paths = {line.split()[0] for line in (tmp_path / "a" / names[1]).read_text().splitlines()}
    assert not train_paths & val_paths and all(p.endswith(".jpg") for p in train_paths)
    data = split_file(root=str(root), train_split=str(tmp_path / "a" / names[0]),
                      val_split=str(tmp_path / "a" / names[1]), test_split=str(tmp_path / "a" / names[2]))
    assert data.class_counts.tolist() == train and len(data.test) == 10

    assert _make(root, tmp_path / "a", "--img-max", "19", "--img-min", "2") == 2
    assert "Tiny_LT_train.txt exists; pass overwrite (--force)" in capsys.readouterr().err
    assert _make(root, tmp_path / "a", "--img-max", "19", "--img-min", "2", "--force") == 0


def test_make_split_exp_profile_and_infeasible_request(tmp_path, capsys):
    root = _class_folders(tmp_path, [30, 28, 26, 24, 23])
    assert _make(root, tmp_path / "e", "--profile", "exp", "--imbalance-factor", "10", "--img-max", "20") == 0
    train = _counts(tmp_path / "e" / "Tiny_LT_train.txt")
    assert sorted(train, reverse=True) == [int(20 * 0.1 ** (i / 4)) for i in range(5)] == [20, 11, 6, 3, 2]
    summary = json.loads((tmp_path / "e" / "Tiny_LT_counts.json").read_text())
    assert summary["imbalance_factor"] == 10.0 and summary["alpha"] is None
    assert summary["groups"]["kang"] == {"many": 0, "medium": 1, "few": 4}
    assert summary["groups"]["oltr"] == {"many": 0, "medium": 0, "few": 5}
    capsys.readouterr()
    assert _make(root, tmp_path / "f", "--img-max", "28") == 2  # the largest class has 27 left after val
    assert "needs 28 images but only 0 classes have that many left" in capsys.readouterr().err


def test_pareto_counts_follow_imagenet_lt_procedure():
    for seed in range(3):
        counts = pareto_counts(1000, alpha=6.0, img_max=1280, img_min=5, seed=seed)
        x = np.sort(np.random.default_rng(seed).pareto(6.0, 1000))[::-1]
        assert counts == np.rint(5 + (x - x[-1]) / (x[0] - x[-1]) * 1275).astype(int).tolist()
        assert counts[0] == 1280 and counts[-1] == 5 and all(np.diff(counts) <= 0)
        assert 80_000 < sum(counts) < 170_000  # the official ImageNet-LT: 115,846
    with pytest.raises(ValueError, match="img_min <= img_max"):
        pareto_counts(10, img_max=5, img_min=6)


# ---------------------------------------------------------------- --help


def test_help_lists_commands(capsys):
    exe = shutil.which("ltcls-data", path=str(Path(sys.executable).parent)) or shutil.which("ltcls-data")
    assert exe, "ltcls-data is not installed (pip install -e .)"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    for word in ("stats", "verify", "make-split", "ltcls-data stats configs/imagenet_lt_ce.yaml"):
        assert word in out
    with pytest.raises(SystemExit) as exit_info:
        main(["make-split", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "pareto" in out and "--val-per-class" in out and "Same seed" in out
    with pytest.raises(SystemExit):
        main(["stats", "x.txt", "--convention", "lvis"])
    assert "invalid choice: 'lvis'" in capsys.readouterr().err
    assert list(data_cli.CONVENTIONS) == list(CONVENTIONS) and data_cli.PROFILES == MAKE_SPLIT_PROFILES
