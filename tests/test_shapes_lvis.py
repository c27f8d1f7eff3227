"""shapes-LVIS (``ltcls-data make-shapes-lvis``): LVIS's frequency groups by training image count, LVIS v1 fields that
ltcls's reader and faster-coco-eval's LVIS mode accept, annotations that match the pixels, determinism."""

from __future__ import annotations

import copy
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from faster_coco_eval import COCO, COCOeval_faster
from PIL import Image
from pycocotools import mask as mask_utils

from ltcls.cli.data import main
from ltcls.detection.data import LVISDataset
from ltcls.detection.shapes_lvis import (
    COLORS,
    SHAPES,
    VAL_MIN_IMAGES,
    assign_categories,
    lvis_frequency,
    make_shapes_lvis,
    shape_polygon,
    shapes_categories,
)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """The default set, written by the command."""
    out = tmp_path_factory.mktemp("shapes") / "shapes_lvis"
    assert main(["make-shapes-lvis", str(out)]) == 0
    train = json.loads((out / "annotations" / "lvis_v1_train.json").read_text())
    val = json.loads((out / "annotations" / "lvis_v1_val.json").read_text())
    return out, train, val


def test_categories_follow_lvis_groups_and_proportions():
    cats = shapes_categories(0)
    assert len(cats) == 36 and len({c.name for c in cats}) == 36
    groups = Counter(lvis_frequency(c.train_images) for c in cats)
    assert groups == {"r": 10, "c": 14, "f": 12}  # LVIS v1: 28% / 38% / 34%
    assert [lvis_frequency(n) for n in (1, 10, 11, 100, 101)] == ["r", "r", "c", "c", "f"]
    for shape in SHAPES:  # the Latin square: every shape (and colour) has frequent categories and few rare ones
        of_shape = Counter(lvis_frequency(c.train_images) for c in cats if c.shape == shape)
        assert of_shape["f"] == 2 and of_shape["r"] <= 2
    for color in COLORS:
        of_color = Counter(lvis_frequency(c.train_images) for c in cats if c.color == color)
        assert of_color["f"] == 2 and of_color["r"] <= 2
    assert [c.train_images for c in shapes_categories(1)] != [c.train_images for c in cats]
    assert sorted(c.train_images for c in shapes_categories(1)) == sorted(c.train_images for c in cats)


def test_assign_categories_gives_exact_counts_within_capacity():
    rng = np.random.default_rng(0)
    counts = [18, 12, 9, 3, 1]
    images = assign_categories(counts, 20, rng, max_per_image=4)
    assert Counter(c for cats in images for c in cats) == dict(enumerate(counts))
    assert all(0 < len(cats) <= 4 and len(set(cats)) == len(cats) for cats in images)
    with pytest.raises(ValueError, match="cannot hold"):
        assign_categories([30], 20, rng)


def test_polygons_are_closed_shapes_of_the_right_size():
    for shape in SHAPES:
        poly = shape_polygon(shape, 50.0, 40.0, 10.0, 0.3)
        xy = np.array(poly).reshape(-1, 2)
        assert np.hypot(xy[:, 0] - 50, xy[:, 1] - 40).max() == pytest.approx(10.0, abs=0.02)
        area = mask_utils.area(mask_utils.frPyObjects([poly], 100, 100))[0]
        assert 50 < area < 330  # a triangle's 130 px to a circle's 314 px


def test_train_json_frequency_counts_and_fields(shapes):
    out, train, val = shapes
    assert train["categories"] == val["categories"]
    images_of = defaultdict(set)
    instances = Counter()
    for a in train["annotations"]:
        images_of[a["category_id"]].add(a["image_id"])
        instances[a["category_id"]] += 1
    by_id = {c.id: c for c in shapes_categories(0)}
    for cat in train["categories"]:
        assert cat["image_count"] == len(images_of[cat["id"]]) == by_id[cat["id"]].train_images
        assert cat["instance_count"] == instances[cat["id"]]
        assert cat["frequency"] == lvis_frequency(cat["image_count"])
        assert {"name", "synset", "synonyms", "def"} <= set(cat)
    assert Counter(c["frequency"] for c in train["categories"]) == {"r": 10, "c": 14, "f": 12}
    ids = [a["id"] for a in train["annotations"] + val["annotations"]]
    assert len(set(ids)) == len(ids) and min(ids) == 1
    assert not {im["id"] for im in train["images"]} & {im["id"] for im in val["images"]}


def test_image_level_lvis_fields(shapes):
    out, train, val = shapes
    all_ids = {c["id"] for c in train["categories"]}
    for split, data in (("train", train), ("val", val)):
        present = defaultdict(set)
        for a in data["annotations"]:
            present[a["image_id"]].add(a["category_id"])
        for im in data["images"]:
            pos, neg = present[im["id"]], set(im["neg_category_ids"])
            assert pos and not pos & neg and set(im["not_exhaustive_category_ids"]) <= pos
            if split == "val":  # every absent category verified: AP counts false positives on every val image
                assert pos | neg == all_ids
            folder, name = im["coco_url"].split("/")[-2:]
            assert (out / folder / name).is_file() and (im["height"], im["width"]) == (128, 128)
        assert any(im["not_exhaustive_category_ids"] for im in data["images"])
    assert {im["coco_url"].split("/")[-2] for im in val["images"]} == {"train2017", "val2017"}  # as LVIS v1 val
    val_images = Counter(c for im, cats in _present(val).items() for c in cats)
    assert min(val_images[c] for c in all_ids) >= VAL_MIN_IMAGES


def _present(data):
    present = defaultdict(set)
    for a in data["annotations"]:
        present[a["image_id"]].add(a["category_id"])
    return present


def test_annotations_match_the_pixels(shapes):
    """Each polygon covers its colour: the median pixel inside the (eroded) mask is near the category's colour."""
    out, train, _ = shapes
    colors = {c["id"]: np.array(COLORS[c["name"].split("_")[0]]) for c in train["categories"]}
    urls = {im["id"]: im["coco_url"].split("/")[-2:] for im in train["images"]}
    for a in train["annotations"][:150]:
        image = np.asarray(Image.open(out.joinpath(*urls[a["image_id"]])))
        mask = mask_utils.decode(mask_utils.frPyObjects(a["segmentation"], 128, 128))[..., 0].astype(bool)
        assert mask.sum() == pytest.approx(a["area"], abs=1)
        x, y, w, h = a["bbox"]
        ys, xs = np.nonzero(mask)
        assert max(abs(xs.min() - x), abs(ys.min() - y), abs(xs.max() + 1 - (x + w)), abs(ys.max() + 1 - (y + h))) < 2
        inner = mask & np.roll(mask, 2, 0) & np.roll(mask, -2, 0) & np.roll(mask, 2, 1) & np.roll(mask, -2, 1)
        median = np.median(image[inner], axis=0)
        assert np.abs(median - colors[a["category_id"]]).max() <= 32, a


def test_ltcls_reader_and_faster_coco_eval_lvis_mode_accept_it(shapes):
    out, train, val = shapes
    ds = LVISDataset(out, out / "annotations" / "lvis_v1_train.json", filter_empty=True)
    assert len(ds) == len(train["images"]) and ds.num_classes == 36
    assert ds.class_counts.tolist() == [c["image_count"] for c in train["categories"]]
    assert ds.frequency == [c["frequency"] for c in train["categories"]]
    image, target = ds[0]
    assert image.shape == (3, 128, 128) and target["masks"].shape[0] == len(target["labels"]) > 0
    gt = COCO(copy.deepcopy(val))
    res = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
            "segmentation": a["segmentation"], "score": 1.0} for a in val["annotations"]]
    neg = next(im for im in val["images"] if im["neg_category_ids"])  # a false positive of a verified-absent one
    res.append({"image_id": neg["id"], "category_id": neg["neg_category_ids"][0], "bbox": [1, 1, 30, 30],
                "segmentation": [[1, 1, 31, 1, 31, 31, 1, 31]], "score": 2.0})
    for iou_type in ("bbox", "segm"):
        ev = COCOeval_faster(gt, gt.loadRes(copy.deepcopy(res)), iou_type, lvis_style=True, print_function=print)
        ev.params.maxDets = [300]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        stats = ev.stats_as_dict
        assert min(stats["APr"], stats["APc"], stats["APf"]) > 0.97 and stats["AP_all"] < 1.0


def test_generation_is_deterministic_and_refuses_to_overwrite(shapes, tmp_path, capsys):
    out, train, val = shapes
    again = make_shapes_lvis(tmp_path / "again", seed=0)
    assert json.loads(again.train_ann.read_text()) == train and json.loads(again.val_ann.read_text()) == val
    for rel in ("train2017/000000000001.jpg", "val2017/000001000002.jpg"):
        assert (again.root / rel).read_bytes() == (out / rel).read_bytes()
    with pytest.raises(SystemExit) as exit_:
        main(["make-shapes-lvis", str(out)])
    assert exit_.value.code == 2
    assert "exists" in capsys.readouterr().err and not list(Path(out).rglob("*.tmp"))
