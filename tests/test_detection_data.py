"""LVIS data: v1 json parsing (paths from coco_url, category mapping, boxes, the three mask encodings, counts),
flip augmentation, the toy dataset generator, and repeat-factor sampling on hand-made category sets."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from ltcls import config as C
from ltcls.data.build import DATASETS, build_sampler
from ltcls.data.samplers import RepeatFactorSampler, repeat_factors
from ltcls.detection.data import DetectionFlip, LVISDataset, relative_image_path
from ltcls.engine.preflight import check_images_open

TOOLS = Path(__file__).parents[1] / "tools" / "make_toy_lvis.py"


def load_toy_tool():
    spec = importlib.util.spec_from_file_location("make_toy_lvis", TOOLS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_images(root: Path, names: list[str], size=(40, 30)) -> None:
    for name in names:
        (root / Path(name).parent).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (200, 10, 10)).save(root / name)


@pytest.fixture
def hand_lvis(tmp_path: Path) -> tuple[Path, Path]:
    """3 images (30 x 40); categories with ids 3, 7, 12; polygon, uncompressed-RLE and RLE masks; a degenerate box."""
    root = tmp_path / "coco"
    _write_images(root, ["train2017/000000000001.jpg", "val2017/000000000002.jpg", "train2017/000000000003.jpg"])
    rle_mask = np.zeros((30, 40), dtype=np.uint8)
    rle_mask[5:10, 20:30] = 1
    compressed = mask_utils.encode(np.asfortranarray(rle_mask))
    compressed["counts"] = compressed["counts"].decode()
    uncompressed = {"size": [30, 40], "counts": _uncompressed_counts(rle_mask)}  # column-major runs

    def img(i, folder):
        return {"id": i, "coco_url": f"http://images.cocodataset.org/{folder}/{i:012d}.jpg", "height": 30,
                "width": 40, "neg_category_ids": [12], "not_exhaustive_category_ids": [], "license": 1}

    data = {
        "images": [img(1, "train2017"), img(2, "val2017"), img(3, "train2017")],
        "categories": [{"id": 12, "name": "c12", "frequency": "r", "image_count": 1},
                       {"id": 3, "name": "c3", "frequency": "f", "image_count": 2},
                       {"id": 7, "name": "c7", "frequency": "c", "image_count": 1}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [2, 3, 10, 5], "area": 50,
             "segmentation": [[2, 3, 12, 3, 12, 8, 2, 8]]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [20, 5, 10, 5], "area": 50,
             "segmentation": compressed},
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [20, 5, 10, 5], "area": 50,
             "segmentation": uncompressed},
            {"id": 4, "image_id": 2, "category_id": 12, "bbox": [1, 1, 0, 4], "area": 0,
             "segmentation": [[1, 1, 1, 5]]},
        ],
    }
    ann = tmp_path / "lvis.json"
    ann.write_text(json.dumps(data))
    return root, ann


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    flat = mask.flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    return counts


def test_lvis_json_parsing(hand_lvis):
    root, ann = hand_lvis
    ds = LVISDataset(root, ann)
    assert ds.cat_ids == [3, 7, 12] and ds.classes == ["c3", "c7", "c12"] and ds.frequency == ["f", "c", "r"]
    assert ds.paths == ["train2017/000000000001.jpg", "val2017/000000000002.jpg", "train2017/000000000003.jpg"]
    image, target = ds[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert target["labels"].tolist() == [1, 2] and target["image_id"] == 1
    assert target["boxes"].tolist() == [[2, 3, 12, 8], [20, 5, 30, 10]]
    assert target["masks"].shape == (2, 30, 40) and target["masks"].dtype == torch.uint8
    assert target["masks"][1].sum() == 50 and target["masks"][1][5:10, 20:30].all()  # compressed RLE
    poly = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([[2, 3, 12, 3, 12, 8, 2, 8]], 30, 40)))
    assert np.array_equal(target["masks"][0].numpy(), poly)
    _, target2 = ds[1]  # the degenerate box (w = 0) of category 12 is dropped
    assert target2["labels"].tolist() == [1] and target2["masks"][0][5:10, 20:30].all()  # uncompressed RLE
    _, empty = ds[2]
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 30, 40)
    assert ds.class_counts.tolist() == [2, 1, 0] and ds.instance_counts.tolist() == [2, 1, 0]
    assert [c.tolist() for c in ds.image_categories] == [[0, 1], [0], []]
    assert ds.targets.tolist() == [1, 0, 0]  # the rarest category of each image (0-based)
    assert len(LVISDataset(root, ann, filter_empty=True)) == 2


def test_lvis_json_errors_name_the_file(tmp_path, hand_lvis):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"id": 1}], "annotations": [], "categories": []}))
    with pytest.raises(ValueError, match="bad.json"):
        LVISDataset(tmp_path, bad)
    root, ann = hand_lvis
    (root / "train2017/000000000001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="000000000001.jpg"):
        LVISDataset(root, ann)[0]


def test_start_up_image_check_with_a_relative_root(hand_lvis, monkeypatch):
    """``paths`` are relative to ``root`` (the file-listed datasets' convention the start-up check relies on): with a
    relative ``data.root`` the check used to join the root twice and refuse every image."""
    root, ann = hand_lvis
    monkeypatch.chdir(root.parent)
    ds = LVISDataset(Path(root.name), ann)
    assert ds.paths[0] == "train2017/000000000001.jpg"
    check_images_open(ds, "val")  # raised "cannot be opened" before
    assert ds[0][0].shape == (3, 30, 40)
    (root / "val2017/000000000002.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="1 image"):
        check_images_open(ds, "val")


def test_image_path_from_coco_url_and_file_name():
    assert relative_image_path({"coco_url": "http://images.cocodataset.org/train2017/000000391895.jpg"}) == \
        "train2017/000000391895.jpg"
    assert relative_image_path({"file_name": "val2017/x.jpg"}) == "val2017/x.jpg"


def test_flip_moves_boxes_and_masks():
    image = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    masks = torch.zeros(1, 3, 4, dtype=torch.uint8)
    masks[0, :, 0] = 1
    target = {"boxes": torch.tensor([[0.0, 0.0, 1.0, 3.0]]), "labels": torch.tensor([1]), "masks": masks}
    out_img, out = DetectionFlip(1.0)(image, target)
    assert torch.equal(out_img, image.flip(-1)) and out["boxes"].tolist() == [[3.0, 0.0, 4.0, 3.0]]
    assert out["masks"][0, :, 3].all() and target["boxes"].tolist() == [[0.0, 0.0, 1.0, 3.0]]  # input untouched
    same_img, same = DetectionFlip(0.0)(image, target)
    assert same_img is image and same is target


def test_seeded_flip_depends_on_seed_epoch_index_only(hand_lvis):
    root, ann = hand_lvis
    ds = LVISDataset(root, ann, transform=DetectionFlip(0.5))
    ds.seed_augmentation(3)
    flips = []
    for epoch in range(8):
        ds.set_epoch(epoch)
        torch.manual_seed(epoch)  # the global generator must not matter
        flips.append(ds[0][1]["boxes"][0, 0].item() != 2.0)
    ds.set_epoch(5)
    torch.manual_seed(123)
    assert (ds[0][1]["boxes"][0, 0].item() != 2.0) == flips[5]
    assert 0 < sum(flips) < 8


def test_toy_lvis_generator(tmp_path):
    tool = load_toy_tool()
    paths = tool.make_toy_lvis(tmp_path / "toy", num_train=60, num_val=12, image_size=64, seed=1)
    train = json.loads(paths["train_ann"].read_text())
    val = json.loads(paths["val_ann"].read_text())
    freq = [c["frequency"] for c in train["categories"]]
    assert set(freq) == {"r", "c", "f"} or set(freq) == {"r", "c"}  # 60 images: nothing can exceed 100
    for c in train["categories"]:
        images = {a["image_id"] for a in train["annotations"] if a["category_id"] == c["id"]}
        assert c["image_count"] == len(images) and c["frequency"] == tool.lvis_frequency(len(images))
    assert any(im["not_exhaustive_category_ids"] for im in train["images"] + val["images"])
    for im in val["images"]:
        present = {a["category_id"] for a in val["annotations"] if a["image_id"] == im["id"]}
        assert not present & set(im["neg_category_ids"])
        assert set(im["not_exhaustive_category_ids"]) <= present
    assert any("/train2017/" in im["coco_url"] for im in val["images"])  # as LVIS v1 val
    splits = DATASETS.build("lvis", {"root": str(paths["root"]), "train_ann": str(paths["train_ann"]),
                                     "val_ann": str(paths["val_ann"])})
    image, target = splits.train[0]
    assert image.shape == (3, 64, 64) and len(target["labels"]) == target["masks"].shape[0] >= 1
    ann = train["annotations"][0]
    ds_index = splits.train.image_ids.index(ann["image_id"])
    mask = splits.train.target(ds_index)["masks"][0]
    assert abs(int(mask.sum()) - ann["area"]) <= 1
    assert splits.val is splits.test and splits.val.gt is not None and splits.train.gt is None


def test_lvis_config_section_is_strict():
    cfg = C.resolve({"data": {"name": "lvis", "root": "/coco"}, "detection": {"nms_thresh": 0.3}})
    assert cfg.data.train_ann.endswith("lvis_v1_train.json") and cfg.detection.detections_per_img == 300
    with pytest.raises(C.ConfigError, match="detection.nms_tresh"):
        C.resolve({"detection": {"nms_tresh": 0.3}})
    with pytest.raises(C.ConfigError, match="sampler.repeat_thresh"):
        C.resolve({"sampler": {"name": "repeat_factor", "repeat_thresh": "x"}})


# ------------------------------------------------------------------------------------------- repeat factors
CATS = [[0]] * 9 + [[0, 1]]  # category 0 in 10 of 10 images, category 1 in 1 of 10


def test_repeat_factors_on_hand_made_sets():
    r = repeat_factors(CATS, repeat_thresh=0.5).numpy()
    # r(c) = max(1, sqrt(t / f(c))): f = (1.0, 0.1) -> (1, sqrt(5)); an image takes the max of its categories.
    np.testing.assert_allclose(r, [1.0] * 9 + [math.sqrt(5)])
    r = repeat_factors([[0], [1], [0, 2], []], repeat_thresh=1.0).numpy()  # f = (.5, .25, .25)
    np.testing.assert_allclose(r, [math.sqrt(2), 2.0, 2.0, 1.0])


def test_rfs_ceil_repeats_each_image_ceil_r_times_and_shards():
    ds = SimpleNamespace(image_categories=CATS)
    sampler = build_sampler({"name": "repeat_factor", "repeat_thresh": 0.5}, None, seed=0, epochs=2, dataset=ds)
    assert isinstance(sampler, RepeatFactorSampler) and len(sampler) == 9 + 3
    seq = sampler.global_indices(0)
    assert np.bincount(seq.numpy()).tolist() == [1] * 9 + [3]
    assert not torch.equal(seq, sampler.global_indices(1))  # reshuffled per epoch
    shards = [build_sampler({"name": "repeat_factor", "repeat_thresh": 0.5}, None, seed=0, epochs=2, dataset=ds,
                            num_replicas=2, rank=r) for r in range(2)]
    for s in shards:
        s.set_epoch(0)
    together = sorted(list(shards[0]) + list(shards[1]))
    assert together == sorted(seq.tolist()) and len(shards[0]) == len(shards[1]) == 6


def test_rfs_stochastic_rounding_matches_r_on_average():
    """detectron2's rounding: floor(r) + Bernoulli(frac(r)) per epoch, so an image with r = sqrt(5) is drawn
    2 or 3 times, sqrt(5) on average; the epoch keeps the expected length (here 90 + 10 sqrt(5) -> 112)."""
    ds = SimpleNamespace(image_categories=[[0]] * 90 + [[0, 1]] * 10)
    sampler = build_sampler({"name": "repeat_factor", "repeat_thresh": 0.5, "rounding": "stochastic"}, None,
                            seed=0, epochs=1, dataset=ds)
    assert len(sampler) == round(90 + 10 * math.sqrt(5)) == 112
    rare = []
    for epoch in range(200):
        seq = sampler.global_indices(epoch)
        assert len(seq) == 112
        rare.append(np.bincount(seq.numpy(), minlength=100)[90:])
    rare = np.array(rare)
    assert (rare == 3).mean() > 0.1 and (rare == 2).mean() > 0.5  # mostly floor(r) or ceil(r) draws
    assert rare.mean() == pytest.approx(math.sqrt(5), abs=0.04)


def test_rfs_needs_image_categories_and_checks_params(hand_lvis):
    with pytest.raises(ValueError, match="image_categories"):
        build_sampler({"name": "repeat_factor"}, [0, 1], seed=0, epochs=1, dataset=None)
    with pytest.raises(ValueError, match="rounding"):
        RepeatFactorSampler(dataset=SimpleNamespace(image_categories=CATS), rounding="floor")
    root, ann = hand_lvis
    ds = LVISDataset(root, ann, filter_empty=True)  # categories {3, 7} in image 1, {3} in image 2
    sampler = build_sampler({"name": "repeat_factor", "repeat_thresh": 1.0}, ds.targets, seed=0, epochs=1, dataset=ds)
    np.testing.assert_allclose(sampler.repeat_factors.numpy(), [math.sqrt(2), 1.0])  # f(c7) = 1/2
