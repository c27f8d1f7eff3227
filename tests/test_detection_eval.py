"""LVIS evaluation: the federated rules (neg / not-exhaustive), the r / c / f groups and the 300-detection limit on
a hand-made case with known APs; faster-coco-eval's path equals the pycocotools reference (``LVISEval``) on every
metric, on the hand-made cases and on generated LVIS-shaped federated sets; its category blocks and the reference's
sparse evaluate equal the dense evaluations; chunked mask encoding equals torchvision's full-image paste."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval
from torchvision.models.detection.roi_heads import paste_masks_in_image

from ltcls.detection import evaluation
from ltcls.detection.evaluation import (
    METRICS,
    LVISEval,
    encode_detections,
    federated_subset,
    gt_coco,
    lvis_evaluate,
    lvis_evaluate_all,
    reference_lvis_evaluate,
    results_coco,
)

BENCH = Path(__file__).parents[1] / "benchmarks" / "bench_lvis_eval.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_lvis_eval", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_same_metrics(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        assert (a[key] is None) == (b[key] is None), key
        if a[key] is not None:
            assert a[key] == pytest.approx(b[key], abs=1e-6), key


def _rect(x: float, y: float, w: float, h: float) -> list[list[float]]:
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _ann(i: int, img: int, cat: int, box: list[float]) -> dict:
    return {"id": i, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3],
            "segmentation": _rect(*box)}


def _img(i: int, neg: list[int], nel: list[int]) -> dict:
    return {"id": i, "height": 100, "width": 100, "coco_url": f"http://x/val2017/{i:012d}.jpg",
            "neg_category_ids": neg, "not_exhaustive_category_ids": nel}


#: cat 1 rare, 2 common, 3 frequent.
GT = {
    "images": [_img(1, neg=[2], nel=[]), _img(2, neg=[], nel=[2]), _img(3, neg=[1], nel=[])],
    "categories": [{"id": 1, "name": "r", "frequency": "r"}, {"id": 2, "name": "c", "frequency": "c"},
                   {"id": 3, "name": "f", "frequency": "f"}],
    "annotations": [_ann(1, 1, 1, [10, 10, 20, 20]), _ann(2, 1, 3, [50, 50, 30, 30]), _ann(3, 2, 2, [10, 10, 40, 40]),
                    _ann(4, 3, 3, [0, 0, 50, 50])],
}
DETS = [  # (image, category, box, score)
    (1, 1, [10, 10, 20, 20], 0.90),  # d1 TP of cat 1
    (2, 1, [60, 60, 20, 20], 0.99),  # d3 cat 1 neither annotated nor negative in image 2: not evaluated
    (3, 1, [60, 60, 20, 20], 0.97),  # d4 cat 1 verified absent from image 3: a false positive above d1
    (2, 2, [10, 10, 40, 40], 0.60),  # d5 TP of cat 2
    (2, 2, [60, 60, 30, 30], 0.70),  # d6 unmatched, cat 2 not exhaustive in image 2: ignored
    (1, 3, [50, 50, 30, 30], 0.80),  # d2 TP of cat 3
    (3, 3, [0, 0, 50, 32], 0.85),  # d7 IoU 0.64 with the gt: TP at IoU 0.50-0.60, FP above
    (1, 3, [0, 80, 15, 15], 0.30),  # d8 FP of cat 3 ranked last: no effect
]
# cat 1: FP then TP -> precision 0.5 at recall 1 at every IoU: AP 50 (33.3 without the federated filter).
# cat 2: the ignored d6 then TP: AP 100 (50 if d6 counted).
# cat 3: IoU <= .6 (3 thresholds) AP 1; above (7): FP then TP, recall .5 at precision .5 -> .5 * 51/101.
APR, APC = 50.0, 100.0
APF = 100.0 * (3 + 7 * 0.5 * 51 / 101) / 10
AP = (APR + APC + APF) / 3


def _results(iou_type: str, dets=DETS) -> list[dict]:
    out = []
    for img, cat, box, score in dets:
        r = {"image_id": img, "category_id": cat, "score": score}
        if iou_type == "bbox":
            r["bbox"] = box
        else:
            r["segmentation"] = mask_utils.merge(mask_utils.frPyObjects(_rect(*box), 100, 100))
        out.append(r)
    return out


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_hand_made_case_gives_known_apr_apc_apf(iou_type):
    m = lvis_evaluate(GT, _results(iou_type), iou_type)
    assert m["APr"] == pytest.approx(APR, abs=1e-6)
    assert m["APc"] == pytest.approx(APC, abs=1e-6)
    assert m["APf"] == pytest.approx(APF, abs=1e-6)
    assert m["AP"] == pytest.approx(AP, abs=1e-6)
    assert m["AP50"] == pytest.approx((50 + 100 + 100) / 3, abs=1e-6)
    assert m["APl"] is None and m["APs"] is not None  # no gt above 96^2 px; small and medium exist


def test_empty_detections_are_not_evaluated():
    """A detection with an empty mask (area 0) is skipped, as the LVIS API does: no extra false positive."""
    empty = {"image_id": 3, "category_id": 1, "score": 0.999,
             "segmentation": mask_utils.encode(np.zeros((100, 100, 1), dtype=np.uint8, order="F"))[0]}
    assert lvis_evaluate(GT, [*_results("segm"), empty], "segm")["APr"] == pytest.approx(APR, abs=1e-6)


def test_rules_change_the_result_when_broken():
    """The known values depend on each rule: breaking one gives the value the comments predict."""
    no_neg = copy.deepcopy(GT)
    no_neg["images"][2]["neg_category_ids"] = []  # d4 becomes 'unknown' and is dropped: cat 1 AP 100
    assert lvis_evaluate(no_neg, _results("bbox"), "bbox")["APr"] == pytest.approx(100.0)
    neg_everywhere = copy.deepcopy(GT)
    neg_everywhere["images"][1]["neg_category_ids"] = [1]  # d3 now evaluated: FP, FP, TP -> 1/3
    assert lvis_evaluate(neg_everywhere, _results("bbox"), "bbox")["APr"] == pytest.approx(100 / 3)
    exhaustive = copy.deepcopy(GT)
    exhaustive["images"][1]["not_exhaustive_category_ids"] = []  # d6 is a false positive: cat 2 AP 50
    assert lvis_evaluate(exhaustive, _results("bbox"), "bbox")["APc"] == pytest.approx(50.0)


def test_at_most_300_detections_per_image():
    """301 detections in image 1: a true positive ranked 301st is cut (LVIS's per-image limit)."""
    fps = [(1, 3, [float(i % 60), 90.0, 5.0, 5.0], 0.5) for i in range(300)]
    tp = [(1, 3, [50, 50, 30, 30], 0.1)]
    gt = copy.deepcopy(GT)
    gt["annotations"] = [a for a in gt["annotations"] if a["id"] == 2]  # image 1, cat 3 only
    assert lvis_evaluate(gt, _results("bbox", fps + tp), "bbox", img_ids=[1])["APf"] == pytest.approx(0.0)
    assert lvis_evaluate(gt, _results("bbox", fps + tp), "bbox", max_dets=301, img_ids=[1])["APf"] > 0.0


def test_only_the_evaluated_images_count():
    m = lvis_evaluate(GT, _results("bbox", [d for d in DETS if d[0] == 1]), "bbox", img_ids=[1])
    assert m["APr"] == pytest.approx(100.0) and m["APc"] is None and m["APf"] == pytest.approx(100.0)


def test_empty_results_give_zero_ap():
    m = lvis_evaluate(GT, [], "segm")
    assert m["AP"] == 0.0 and m["APr"] == 0.0


def test_sparse_evaluate_equals_cocoeval_evaluate():
    """The sparse evaluate visits only (image, category) pairs with data; COCOeval's dense loop gives the same."""
    rng = np.random.default_rng(0)
    dets = list(DETS)
    for _ in range(200):
        img, cat = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        x, y = rng.uniform(0, 70, 2)
        dets.append((img, cat, [float(x), float(y), float(rng.uniform(5, 30)), float(rng.uniform(5, 30))],
                     float(rng.uniform())))
    arrays = []
    for dense in (False, True):
        gt = gt_coco(GT)
        ev = LVISEval(gt, results_coco(gt, _results("segm", dets), "segm", 300), "segm")
        (COCOeval.evaluate if dense else LVISEval.evaluate)(ev)
        ev.accumulate()
        arrays.append((ev.eval["precision"], ev.eval["recall"]))
    np.testing.assert_array_equal(arrays[0][0], arrays[1][0])
    np.testing.assert_array_equal(arrays[0][1], arrays[1][1])


def test_chunked_mask_encoding_equals_full_paste():
    g = torch.Generator().manual_seed(0)
    n, h, w = 70, 60, 80
    xy = torch.rand(n, 2, generator=g) * torch.tensor([60.0, 40.0])
    boxes = torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g) * 20], dim=1)
    probs = torch.rand(n, 1, 28, 28, generator=g)
    out = {"boxes": boxes, "scores": torch.rand(n, generator=g), "labels": torch.randint(1, 4, (n,), generator=g),
           "mask_probs": probs}
    bbox, segm = encode_detections(out, 7, (h, w), [10, 20, 30], mask_threshold=0.5, chunk=16)
    full = (paste_masks_in_image(probs, boxes, (h, w), padding=1)[:, 0] > 0.5).numpy().astype(np.uint8)
    decoded = mask_utils.decode([s["segmentation"] for s in segm]).transpose(2, 0, 1)
    np.testing.assert_array_equal(decoded, full)
    assert {b["category_id"] for b in bbox} <= {10, 20, 30} and all(b["image_id"] == 7 for b in bbox)
    b0 = boxes[0].tolist()
    assert bbox[0]["bbox"] == pytest.approx([b0[0], b0[1], b0[2] - b0[0], b0[3] - b0[1]])


@pytest.fixture(scope="module")
def generated() -> tuple[dict, list[dict]]:
    """An LVIS-shaped federated set (1203 categories, neg / not-exhaustive ids), 330 detections per image."""
    bench = load_bench()
    gt = bench.make_gt(24, seed=3)
    dets = [d for image in bench.iter_detections(gt, per_image=330, seed=4) for d in image]
    return gt, dets


def _as(iou_type: str, dets: list[dict]) -> list[dict]:
    drop = "bbox" if iou_type == "segm" else "segmentation"
    return [{k: v for k, v in d.items() if k != drop} for d in dets]


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_faster_path_equals_reference_on_hand_made_cases(iou_type):
    """Every metric of every hand-made case (federated rules broken one at a time, > 300 per image, subsets)."""
    cases = [(GT, _results(iou_type), {})]
    for img, field, value in ((2, "neg_category_ids", []), (1, "neg_category_ids", [1]),
                              (1, "not_exhaustive_category_ids", [])):
        gt = copy.deepcopy(GT)
        gt["images"][img][field] = value
        cases.append((gt, _results(iou_type), {}))
    fps = [(1, 3, [float(i % 60), 90.0, 5.0, 5.0], 0.5) for i in range(300)]
    cases.append((GT, _results(iou_type, DETS + fps), {}))
    cases.append((GT, _results(iou_type, DETS + fps), {"max_dets": 301, "img_ids": [1, 3]}))
    cases.append((GT, [], {}))
    for gt, res, kw in cases:
        assert_same_metrics(lvis_evaluate(gt, res, iou_type, **kw), reference_lvis_evaluate(gt, res, iou_type, **kw))


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_faster_path_equals_reference_on_generated_federated_set(generated, iou_type):
    gt, dets = generated
    res = _as(iou_type, dets)
    fast = lvis_evaluate(gt, res, iou_type)
    assert_same_metrics(fast, reference_lvis_evaluate(gt, res, iou_type))
    assert fast["APr"] is not None and fast["APc"] is not None and fast["APf"] is not None and 0 < fast["AP"] < 100
    some = [im["id"] for im in gt["images"]][::3]
    assert_same_metrics(lvis_evaluate(gt, res, iou_type, img_ids=some),
                        reference_lvis_evaluate(gt, res, iou_type, img_ids=some))


def test_bbox_and_segm_side_by_side_equal_separate_runs(generated):
    gt, dets = generated
    both = lvis_evaluate_all(gt, {"segm": _as("segm", dets), "bbox": _as("bbox", dets)})
    assert set(both) == {"segm", "bbox"} and set(METRICS) <= set(both["segm"])
    for iou_type in ("segm", "bbox"):
        assert both[iou_type] == lvis_evaluate(gt, _as(iou_type, dets), iou_type)
    assert both["segm"] != both["bbox"]  # octagon masks are not their boxes


def test_category_blocks_equal_one_dense_evaluation(generated, monkeypatch):
    """Blocks of 3 categories, each on its own images, give the arrays of one evaluation over everything."""
    gt, dets = generated
    res = _as("bbox", dets)
    arrays = []
    original = evaluation.COCOeval_faster.evaluate
    for block in (3, 10**6):
        calls = []

        def evaluate(self, calls=calls):
            calls.append(len(self.params.imgIds) * len(self.params.catIds))
            return original(self)

        monkeypatch.setattr(evaluation.COCOeval_faster, "evaluate", evaluate)
        monkeypatch.setattr(evaluation, "CATEGORY_BLOCK", block)
        monkeypatch.setattr(evaluation._evaluate_sparse, "__defaults__", (block,))
        gt_anns = [{**a, "iscrowd": 0} for a in gt["annotations"]]
        ids = [im["id"] for im in gt["images"]]
        selected = federated_subset(gt, res, "bbox", 300)
        arrays.append(evaluation._evaluate_sparse(gt, gt_anns, evaluation._fast_results(selected, "bbox"), "bbox",
                                                  ids, 300)[:2])
        arrays[-1] += (calls,)
    (p_blocks, r_blocks, calls_blocks), (p_dense, r_dense, calls_dense) = arrays
    np.testing.assert_array_equal(p_blocks, p_dense)
    np.testing.assert_array_equal(r_blocks, r_dense)
    assert len(calls_dense) == 1 and len(calls_blocks) > 10
    assert sum(calls_blocks) < calls_dense[0] / 2  # the point of the blocks: far fewer (image, category) pairs


def test_federated_subset_keeps_top_per_image_then_filters():
    gt = copy.deepcopy(GT)
    res = _results("bbox", [
        (1, 1, [0, 0, 5, 5], 0.5), (1, 2, [0, 0, 5, 5], 0.9),  # cat 2 negative in image 1: kept
        (1, 3, [0, 0, 5, 5], 0.5), (1, 2, [0, 0, 5, 5], 0.1),  # equal score to the first: the earlier one wins
        (2, 3, [0, 0, 5, 5], 0.8),  # cat 3 neither positive nor negative in image 2: dropped
        (2, 2, [0, 0, 0, 5], 0.7),  # zero area: dropped
        (3, 1, [0, 0, 5, 5], 0.3),  # image 3 not evaluated below
    ])
    kept = federated_subset(gt, res, "bbox", max_dets=2, img_ids=[1, 2])
    assert [r["score"] for r in kept] == [0.5, 0.9]  # input order; top 2 of image 1 (tie broken by position)
    assert federated_subset(gt, kept, "bbox", max_dets=2, img_ids=[1, 2]) == kept  # idempotent
    with pytest.raises(ValueError, match="not in the ground truth"):
        federated_subset(gt, [{**res[0], "image_id": 99}], "bbox")
    with pytest.raises(ValueError, match="iou_type"):
        lvis_evaluate(gt, res, "keypoints")
