"""LVIS evaluation: the federated rules (neg / not-exhaustive), the r / c / f groups and the 300-detection limit on
a hand-made case with known APs; the bounded path (columns, per-category C++ evaluation) equals the pycocotools
oracle (``tests/lvis_oracle.py``) on every metric, on the hand-made cases and on generated LVIS-shaped federated
sets, from every source (result dicts, an LVIS json read in chunks, ltcls's shards, columns); its per-category
evaluation equals one COCOeval_faster evaluation of everything; the oracle's sparse evaluate equals the dense one;
chunked mask encoding equals torchvision's full-image paste."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from faster_coco_eval import COCO as FastCOCO
from faster_coco_eval import COCOeval_faster
from lvis_oracle import LVISEval, gt_coco, reference_lvis_evaluate, results_coco
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval
from torchvision.models.detection.roi_heads import paste_masks_in_image

from ltcls.detection import evaluation
from ltcls.detection.evaluation import (
    METRICS,
    LVISGroundTruth,
    lvis_evaluate,
    lvis_evaluate_all,
    select_results,
)
from ltcls.detection.results import (
    Detections,
    Shards,
    ShardWriter,
    iter_json_results,
    read_shard,
    write_shard,
)
from ltcls.detection.task import LVISEvaluator, encode_detections

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
    dets = encode_detections(out, 7, (h, w), [10, 20, 30], mask_threshold=0.5, chunk=16)
    full = (paste_masks_in_image(probs, boxes, (h, w), padding=1)[:, 0] > 0.5).numpy().astype(np.uint8)
    decoded = mask_utils.decode(dets.masks.rles()).transpose(2, 0, 1)
    np.testing.assert_array_equal(decoded, full)
    assert set(dets.category_id.tolist()) <= {10, 20, 30} and (dets.image_id == 7).all()
    b0 = boxes[0].tolist()
    assert dets.bbox[0].tolist() == pytest.approx([b0[0], b0[1], b0[2] - b0[0], b0[3] - b0[1]])
    rows = np.array([3, 5, 64])  # only these rows: the same columns and masks as the full encoding's rows
    part = encode_detections(out, 7, (h, w), [10, 20, 30], mask_threshold=0.5, rows=rows, chunk=2)
    np.testing.assert_array_equal(part.bbox, dets.bbox[rows])
    np.testing.assert_array_equal(part.score, dets.score[rows])
    assert part.masks.rles() == dets.masks.take(rows).rles()


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


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_per_category_evaluation_equals_one_cocoeval_faster(generated, iou_type):
    """One category at a time, each on its own images, gives the precision / recall of faster-coco-eval's
    ``COCOeval_faster(lvis_style=True)`` run once over every image and category on the selected results."""
    gt, dets = generated
    res = _as(iou_type, dets)
    index = LVISGroundTruth(gt)
    sel = select_results(res, index, iou_type)
    ev = evaluation._CategoryEvaluation(index, sel, iou_type, index.image_ids, 300)
    ev.run()
    kept = [res[i] for i in _selected_rows(res, sel)]
    anns = []
    for i, r in enumerate(kept):
        ann = {**r, "id": i + 1, "iscrowd": 0, "area": float(sel.area[i])}
        if iou_type == "bbox":
            ann["bbox"] = [float(v) for v in r["bbox"]]
        anns.append(ann)
    gt_anns = [{**a, "iscrowd": 0} for a in gt["annotations"]]
    dense = COCOeval_faster(FastCOCO({**gt, "annotations": gt_anns}), FastCOCO({**gt, "annotations": anns}),
                            iou_type, lvis_style=True, print_function=lambda *a: None)
    dense.params.maxDets = [300]
    dense.evaluate()
    dense.accumulate()
    np.testing.assert_array_equal(ev.precision, dense.eval["precision"])
    np.testing.assert_array_equal(ev.recall, dense.eval["recall"])


def _selected_rows(res: list[dict], sel) -> list[int]:
    """Input rows of a selection (selections keep input order; image, category and score identify rows here)."""
    want = set(zip(sel.image_id.tolist(), sel.category_id.tolist(), sel.score.tolist()))
    rows = [i for i, r in enumerate(res) if (r["image_id"], r["category_id"], r["score"]) in want]
    assert len(rows) == len(sel)
    return rows


def test_selection_keeps_top_per_image_then_filters():
    gt = copy.deepcopy(GT)
    res = _results("bbox", [
        (1, 1, [0, 0, 5, 5], 0.5), (1, 2, [0, 0, 5, 5], 0.9),  # cat 2 negative in image 1: kept
        (1, 3, [0, 0, 5, 5], 0.5), (1, 2, [0, 0, 5, 5], 0.1),  # equal score to the first: the earlier one wins
        (2, 3, [0, 0, 5, 5], 0.8),  # cat 3 neither positive nor negative in image 2: dropped
        (2, 2, [0, 0, 0, 5], 0.7),  # zero area: dropped
        (3, 1, [0, 0, 5, 5], 0.3),  # image 3 not evaluated below
        (1, 999, [0, 0, 5, 5], 0.01),  # a category the ground truth does not know: dropped
    ])
    index = LVISGroundTruth(gt)
    sel = select_results(res, index, "bbox", max_dets=2, img_ids=[1, 2])
    assert sel.score.tolist() == [0.5, 0.9] and sel.num_results == len(res)  # input order; top 2 of image 1
    assert sel.geometry.tolist() == [0, -1]  # only the positive pair (image 1, cat 1) keeps its box for an IoU
    np.testing.assert_array_equal(sel.bbox[0], [0, 0, 5, 5])
    kept = index.kept(np.array([1, 1, 1, 1]), np.array([1, 2, 3, 2]), np.array([0.5, 0.9, 0.5, 0.1]), 2)
    assert kept.tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="not in the ground truth"):
        select_results([{**res[0], "image_id": 99}], index, "bbox")
    with pytest.raises(ValueError, match="iou_type"):
        lvis_evaluate(gt, res, "keypoints")
    with pytest.raises(ValueError, match="no 'bbox'"):
        lvis_evaluate(gt, _results("segm"), "bbox")


# ------------------------------------------------------------------------------------------------ columnar reading


def _write_json(path: Path, results: list[dict], **dump_kw) -> Path:
    path.write_text(json.dumps(results, **dump_kw))
    return path


def _segm_json_ready(results: list[dict]) -> list[dict]:
    """Results as they are written to json (RLE counts as str)."""
    out = []
    for r in results:
        r = dict(r)
        if "segmentation" in r:
            seg = r["segmentation"]
            counts = seg["counts"]
            text = counts.decode() if isinstance(counts, bytes) else counts
            r["segmentation"] = {"size": seg["size"], "counts": text}
        out.append(r)
    return out


@pytest.mark.parametrize("dump_kw", [{}, {"indent": 1}, {"separators": (",", ":")}])
def test_json_reader_yields_every_result_in_order_in_chunks(tmp_path, generated, dump_kw):
    """An LVIS results json (any whitespace; RLE strings with backslashes, escaped in json) read in small chunks
    gives the objects json.load gives, in file order, a chunk at a time."""
    _, dets = generated
    dets = dets[:3000]
    assert any("\\" in d["segmentation"]["counts"] for d in dets)  # escaped in the file: "\\"
    path = _write_json(tmp_path / "res.json", dets, **dump_kw)
    chunks = list(iter_json_results(path, chunk_bytes=50_000))
    assert len(chunks) > 10 and [d for c in chunks for d in c] == json.loads(path.read_text())
    assert list(iter_json_results(_write_json(tmp_path / "empty.json", []))) == []


def test_json_reader_errors_name_the_file(tmp_path):
    for text, message in (("{}", "json list"), ('[{"image_id": 1}, {"image_id"', "truncated|not valid json"),
                          ("", "json list")):
        path = tmp_path / "bad.json"
        path.write_text(text)
        with pytest.raises(ValueError, match=message) as err:
            list(iter_json_results(path, chunk_bytes=8))
        assert str(path) in str(err.value)
    path = _write_json(tmp_path / "nofield.json", [{"image_id": 1, "category_id": 1, "score": 0.5}])
    with pytest.raises(ValueError, match=r"nofield.json: a result has no 'bbox'"):
        lvis_evaluate(GT, path, "bbox")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        lvis_evaluate(GT, tmp_path / "missing.json", "bbox")


def test_columns_round_trip_dicts_and_shards(tmp_path, generated):
    """Result dicts -> columns -> a shard -> columns: every field equal; masks stay the same compressed RLEs."""
    _, dets = generated
    dets = dets[:500]
    cols = Detections.from_dicts(dets)
    assert cols.bbox.shape == (500, 4) and len(cols.masks) == 500
    assert [r["counts"] for r in cols.masks.rles()] == [d["segmentation"]["counts"].encode() for d in dets]
    path = write_shard(tmp_path / "s.npz", cols, [5, 1, 3])
    back, images = read_shard(path)
    assert images.tolist() == [5, 1, 3]
    for name in ("image_id", "category_id", "score", "bbox"):
        np.testing.assert_array_equal(getattr(back, name), getattr(cols, name))
    assert back.masks.rles() == cols.masks.rles()
    np.testing.assert_array_equal(back.masks.areas(), [mask_utils.area(d["segmentation"]) for d in dets])
    assert read_shard(path, ("bbox",))[0].masks is None
    (tmp_path / "junk.npz").write_bytes(b"not a shard")
    with pytest.raises(ValueError, match="junk.npz: not a readable ltcls results shard"):
        read_shard(tmp_path / "junk.npz")


def _shard_folder(folder: Path, dets: list[dict], gt: dict, ranks: int = 3, rows: int = 700) -> Path:
    """The results as ``ranks`` processes would write them: image i on rank i % ranks, whole images per shard."""
    by_image: dict[int, list[dict]] = {im["id"]: [] for im in gt["images"]}
    for d in dets:
        by_image[d["image_id"]].append(d)
    writers = [ShardWriter(folder, prefix=f"rank{r:03d}", rows=rows) for r in range(ranks)]
    for n, (image, image_dets) in enumerate(by_image.items()):
        cols = Detections.from_dicts(image_dets) if image_dets else Detections.empty()
        writers[n % ranks].add(cols, [image])
    for w in writers:
        w.close()
    return folder


def test_every_source_gives_the_oracle_metrics(tmp_path, generated):
    """Result dicts, an LVIS json read in chunks, a folder of shards of three 'ranks' and columns: the same
    metrics, equal to the oracle's, for bbox and segm."""
    gt, dets = generated
    dets = [d for d in dets if d["image_id"] != 2]  # an evaluated image without detections (its gt: misses)
    folder = _shard_folder(tmp_path / "shards", dets, gt)
    assert len(list(folder.glob("rank001-*.npz"))) > 1  # several shards per rank
    shards = Shards.in_folder(folder)
    assert shards.image_ids().tolist() == sorted(im["id"] for im in gt["images"])
    for iou_type in ("bbox", "segm"):
        res = _as(iou_type, dets)
        oracle = reference_lvis_evaluate(gt, res, iou_type)
        json_path = _write_json(tmp_path / f"{iou_type}.json", _segm_json_ready(res))
        sources = {"dicts": res, "json": json_path, "folder": folder, "shards": shards,
                   "columns": Detections.from_dicts(res, (iou_type,))}
        for source in sources.values():
            assert_same_metrics(lvis_evaluate(gt, source, iou_type), oracle)
        some = [im["id"] for im in gt["images"]][1::2]
        assert_same_metrics(lvis_evaluate(gt, folder, iou_type, img_ids=some),
                            reference_lvis_evaluate(gt, res, iou_type, img_ids=some))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="no ltcls results shards"):
        lvis_evaluate(gt, tmp_path / "empty_dir", "bbox")


def test_shard_writer_flushes_and_discards(tmp_path):
    folder = tmp_path / "s"
    (folder).mkdir()
    (folder / "rank000-00007.npz").write_bytes(b"stale")  # an interrupted evaluation's
    w = ShardWriter(folder, rows=3)
    assert not (folder / "rank000-00007.npz").exists()
    one = Detections(np.array([1, 1]), np.array([1, 2]), np.array([0.5, 0.4]), np.zeros((2, 4)), None)
    w.add(one, [1])
    assert not w.paths  # 2 buffered < 3
    w.add(one, [2])
    assert len(w.paths) == 1  # flushed at 4 >= 3: at most one shard's detections in memory
    w.add(Detections.empty(with_masks=False), [3])
    paths = w.close()
    assert len(paths) == 2 and read_shard(paths[1])[1].tolist() == [3]
    w.discard()
    assert not list(folder.glob("*.npz")) and folder.is_dir()
    owned = ShardWriter(tmp_path / "t", owns_folder=True)
    owned.add(one, [1])
    owned.close()
    owned.discard()
    assert not (tmp_path / "t").exists()


class _Split:
    """What :class:`LVISEvaluator` reads of an LVIS dataset."""

    def __init__(self, gt: dict) -> None:
        cats = sorted(gt["categories"], key=lambda c: c["id"])
        self.gt, self.cat_ids, self.num_classes = gt, [c["id"] for c in cats], len(cats)
        self.frequency = [c["frequency"] for c in cats]
        self.images = gt["images"]

    def __len__(self) -> int:
        return len(self.images)


def _model_outputs(gt: dict, dets: list[dict], per_image: int = 40) -> list[tuple[dict, dict, torch.Tensor]]:
    """(output, target, image) per gt image as Mask R-CNN gives them: xyxy boxes, 1-based labels, scores and
    28 x 28 mask probabilities (random); the first ``per_image`` generated detections of each image."""
    g = torch.Generator().manual_seed(0)
    label = {c: i + 1 for i, c in enumerate(sorted(c["id"] for c in gt["categories"]))}
    out = []
    for im in gt["images"]:
        mine = [d for d in dets if d["image_id"] == im["id"]][:per_image]
        boxes = torch.tensor([d["bbox"] for d in mine], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        output = {"boxes": boxes, "scores": torch.tensor([d["score"] for d in mine], dtype=torch.float32),
                  "labels": torch.tensor([label[d["category_id"]] for d in mine], dtype=torch.int64),
                  "mask_probs": torch.rand(len(mine), 1, 28, 28, generator=g)}
        out.append((output, {"image_id": im["id"]}, torch.zeros(3, im["height"], im["width"])))
    return out


def test_lvis_evaluator_writes_shards_and_equals_the_oracle(tmp_path, generated):
    """The evaluator keeps an image's usable detections (top 300, federated filter) in shards while processing,
    evaluates bbox and segm from them, removes them, and gives the oracle's metrics on all encoded detections."""
    gt, dets = generated
    gt = {**gt, "images": gt["images"][:8]}
    split = _Split(gt)
    outputs = _model_outputs(gt, dets)
    ev = LVISEvaluator(split, max_dets=300, shard_dir=tmp_path / "shards")
    ev.reset()
    for start in range(0, len(outputs), 3):
        batch = outputs[start:start + 3]
        ev.process(([b[2] for b in batch], [b[1] for b in batch]), [b[0] for b in batch])
    assert ev.num_detections == sum(len(o["scores"]) for o, _, _ in outputs)
    report = ev.evaluate().sections[0].to_json()
    assert not list((tmp_path / "shards").glob("*.npz"))  # removed after the evaluation
    encoded = Detections.concat([encode_detections(o, t["image_id"], tuple(i.shape[-2:]), split.cat_ids)
                                 for o, t, i in outputs])
    for iou_type, prefix in (("segm", ""), ("bbox", "bbox_")):
        oracle = reference_lvis_evaluate(gt, _dicts(encoded, iou_type), iou_type)
        assert_same_metrics({k: report[prefix + k] for k in oracle}, oracle)
    assert report["num_images"] == 8 and report["num_detections"] == len(encoded)
    assert report["AP"] is not None and report["AP"] != report["bbox_AP"]


def test_lvis_evaluator_default_folder_is_temporary(generated):
    gt, dets = generated
    gt = {**gt, "images": gt["images"][:2]}
    ev = LVISEvaluator(_Split(gt))
    outputs = _model_outputs(gt, dets, per_image=5)
    ev.process(([o[2] for o in outputs], [o[1] for o in outputs]), [o[0] for o in outputs])
    folder = ev.writer().folder
    assert folder.is_dir() and folder.name.startswith("ltcls_lvis_")
    ev.evaluate()
    assert not folder.exists()


def _dicts(dets: Detections, iou_type: str) -> list[dict]:
    rles = dets.masks.rles() if iou_type == "segm" else None
    out = []
    for k in range(len(dets)):
        r = {"image_id": int(dets.image_id[k]), "category_id": int(dets.category_id[k]), "score": float(dets.score[k])}
        if iou_type == "bbox":
            r["bbox"] = dets.bbox[k].tolist()
        else:
            r["segmentation"] = rles[k]
        out.append(r)
    return out
