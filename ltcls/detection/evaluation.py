"""LVIS evaluation: faster-coco-eval's LVIS mode with LVIS's federated rules, plus bounded-memory prediction.

The scoring runs on ``faster-coco-eval`` (``COCOeval_faster(..., lvis_style=True)``: pycocotools' matching and
accumulation in C++, LVIS's federated rules built in, numpy 2, maintained). Neither the ``lvis`` package
(0.5.3, the last release: fails on numpy 2 with ``np.float``, pulls in opencv, calls ``logging.basicConfig``
on import) nor a Python COCOeval is fast enough for LVIS v1 val (19,809 images x 300 detections). LVIS's
evaluator is COCO's matching with three additions:

1. federated filtering: a detection of category c in image I is evaluated only if c is annotated in I
   (positive) or in I's ``neg_category_ids`` (verified absent); other detections are dropped, since nothing
   is known about c in I;
2. not-exhaustive categories: an unmatched detection of a category in I's ``not_exhaustive_category_ids``
   is ignored (not a false positive); matched ones still count;
3. at most ``max_dets`` (300) detections per image over all categories (highest scores), and AP over all
   categories plus APr / APc / APf over the categories of each ``frequency`` group.

faster-coco-eval does 1 and 2 (and, by ``maxDets``, a per-category limit); ltcls adds 3's per-image limit
and the federated filter in front of it, vectorised over all results (:func:`federated_subset`), so the
evaluator only builds and indexes the detections that count (54% on the benchmark's LVIS-shaped set); it
evaluates categories in blocks, each on the images where they occur (:func:`_evaluate_sparse`), where
COCOeval_faster walks every (image, category) pair; and bbox and segm are evaluated by one call
(:func:`lvis_evaluate_all`). Everything else (IoU thresholds .5:.95, 101 recall points, area ranges, greedy
matching, interpolated precision) is COCOeval's, which matches the LVIS API's code. Segm results take their
area from the mask and bbox results from the box (pycocotools' ``loadRes`` rule, as detectron2; mmdetection's
segm json carries boxes, so lvis-api uses box areas there, which only affects APs / APm / APl).

:class:`LVISEval`, the earlier pycocotools ``COCOeval`` subclass with the same rules (evaluated sparsely),
is kept as an independent implementation the tests compare against (to 1e-6 on every metric).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import io
import logging
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from faster_coco_eval import COCO as FastCOCO
from faster_coco_eval import COCOeval_faster
from faster_coco_eval.core import mask as fast_mask
from faster_coco_eval.core.cocoeval import Params as FastParams
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from torch.utils.data import DataLoader
from torchvision.models.detection.roi_heads import paste_masks_in_image
from tqdm.auto import tqdm

from ltcls.detection.model import compact_masks
from ltcls.engine.loops import autocast

log = logging.getLogger("ltcls")

#: LVIS summary metrics (percent), in report order.
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
FREQUENCIES = ("r", "c", "f")


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: building millions of acyclic annotation dicts otherwise triggers
    repeated full collections (a third of the evaluation time at 300k detections)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """pycocotools prints progress to stdout; send it to the debug log instead."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield
    if buf.getvalue().strip():
        log.debug("pycocotools: %s", buf.getvalue().strip().replace("\n", " | "))


class _SparseEvalImgs:
    """``COCOeval.evalImgs`` as accumulate reads it (index -> per-image result or None), stored sparsely."""

    def __init__(self, items: dict[int, dict[str, Any]], length: int) -> None:
        self.items, self.length = items, length

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        return self.items.get(index)

    def __len__(self) -> int:
        return self.length

    def __bool__(self) -> bool:
        return self.length > 0


class LVISEval(COCOeval):
    """COCOeval with LVIS's federated rules (see the module docstring); ``iou_type`` 'bbox' or 'segm'."""

    def __init__(self, gt: COCO, dt: COCO, iou_type: str = "segm", max_dets: int = 300) -> None:
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
        super().__init__(gt, dt, iou_type)
        self.params.maxDets = [int(max_dets)]
        self.max_dets = int(max_dets)

    def _prepare(self) -> None:
        super()._prepare()
        imgs = self.cocoGt.imgs
        self.neg = {i: set(imgs[i].get("neg_category_ids", [])) for i in self.params.imgIds}
        self.not_exhaustive = {i: set(imgs[i].get("not_exhaustive_category_ids", [])) for i in self.params.imgIds}
        positive: dict[int, set[int]] = defaultdict(set)
        for (img, cat), gts in self._gts.items():
            if gts:
                positive[img].add(cat)
        kept = {k: v for k, v in self._dts.items() if k[1] in positive[k[0]] or k[1] in self.neg[k[0]]}
        self._dts = defaultdict(list, kept)

    def evaluateImg(self, imgId, catId, aRng, maxDet):  # noqa: N802, N803 - COCOeval's names
        result = super().evaluateImg(imgId, catId, aRng, maxDet)
        if result is not None and catId in self.not_exhaustive[imgId]:
            result["dtIgnore"] = np.logical_or(result["dtIgnore"], result["dtMatches"] == 0)
        return result

    def evaluate(self) -> None:
        """COCOeval.evaluate on the (image, category) pairs that hold ground truth or detections only."""
        p = self.params
        p.imgIds = list(np.unique(p.imgIds))
        p.catIds = list(np.unique(p.catIds))
        p.maxDets = sorted(p.maxDets)
        self._prepare()
        keys = sorted((set(self._gts) | set(self._dts)), key=lambda k: (k[1], k[0]))
        self.ious = {k: self.computeIoU(*k) for k in keys}
        img_index = {int(i): n for n, i in enumerate(p.imgIds)}
        cat_index = {int(c): n for n, c in enumerate(p.catIds)}
        num_imgs, num_areas = len(p.imgIds), len(p.areaRng)
        items: dict[int, dict[str, Any]] = {}
        for img, cat in keys:
            for a, area in enumerate(p.areaRng):
                result = self.evaluateImg(img, cat, area, p.maxDets[-1])
                if result is not None:
                    items[(cat_index[int(cat)] * num_areas + a) * num_imgs + img_index[int(img)]] = result
        self.evalImgs = _SparseEvalImgs(items, len(p.catIds) * num_areas * num_imgs)
        self._paramsEval = copy.deepcopy(p)

    def summary(self) -> dict[str, float | None]:
        """The LVIS summary (:func:`summarize`) of the accumulated precision / recall."""
        freq = [self.cocoGt.cats[c].get("frequency") for c in self.params.catIds]
        return summarize(self.eval["precision"], self.eval["recall"], self.params, freq, self.max_dets)


def summarize(precision: np.ndarray, recall: np.ndarray, params: Any, frequency: Sequence[str | None],
              max_dets: int) -> dict[str, float | None]:
    """AP, AP50, AP75, APs/m/l, APr/c/f (percent; ``None`` where no category of the group has ground truth) and
    AR@max_dets from COCOeval's accumulated ``precision`` (T, R, K, A, M) and ``recall`` (T, K, A, M), read at the
    last ``maxDets``; ``frequency`` is the r / c / f label of each of ``params.catIds``."""
    p = params
    precision = precision[..., -1]  # (T, R, K, A) at max_dets
    recall = recall[..., -1]  # (T, K, A)
    area = {lbl: i for i, lbl in enumerate(p.areaRngLbl)}
    t50, t75 = int(np.argmin(np.abs(p.iouThrs - 0.5))), int(np.argmin(np.abs(p.iouThrs - 0.75)))

    def mean(x: np.ndarray) -> float | None:
        x = x[x > -1]
        return float(np.mean(x) * 100.0) if x.size else None

    out = {"AP": mean(precision[..., area["all"]]), "AP50": mean(precision[t50, ..., area["all"]]),
           "AP75": mean(precision[t75, ..., area["all"]])}
    for key, lbl in (("APs", "small"), ("APm", "medium"), ("APl", "large")):
        out[key] = mean(precision[..., area[lbl]])
    for f in FREQUENCIES:
        cats = [k for k, fr in enumerate(frequency) if fr == f]
        out[f"AP{f}"] = mean(precision[:, :, cats, area["all"]]) if cats else None
    out[f"AR@{max_dets}"] = mean(recall[..., area["all"]])
    return out


def gt_coco(gt: Mapping[str, Any]) -> COCO:
    """A pycocotools ``COCO`` of an LVIS json (copied; ``iscrowd`` 0 added, which LVIS does not carry; annotations
    of zero area left out, as the LVIS API does)."""
    data = {"images": gt["images"], "categories": gt["categories"],
            "annotations": [{**a, "iscrowd": a.get("iscrowd", 0)} for a in gt["annotations"] if a["area"] > 0]}
    coco = COCO()
    coco.dataset = data
    with _quiet():
        coco.createIndex()
    return coco


def results_coco(gt: COCO, results: Sequence[Mapping[str, Any]], iou_type: str, max_dets: int) -> COCO:
    """Detections as a ``COCO`` (pycocotools ``loadRes``'s fields), the top ``max_dets`` per image kept.

    Unlike ``loadRes`` this accepts an empty result list and never takes a segm result's area from a box.
    Results of zero area (empty masks) are left out, as the LVIS API's ``get_ann_ids`` does.
    """
    per_image: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for r in results:
        per_image[int(r["image_id"])].append(r)
    unknown = set(per_image) - set(gt.imgs)
    if unknown:
        raise ValueError(f"{len(unknown)} result image ids are not in the ground truth, e.g. {sorted(unknown)[:3]}")
    anns = []
    for dets in per_image.values():
        anns += sorted(dets, key=lambda d: -d["score"])[:max_dets]
    out = []
    for i, r in enumerate(anns):
        ann = {"id": i + 1, "image_id": int(r["image_id"]), "category_id": int(r["category_id"]),
               "score": float(r["score"]), "iscrowd": 0}
        if iou_type == "segm":
            ann["segmentation"] = r["segmentation"]
            ann["area"] = float(mask_utils.area(r["segmentation"]))
            ann["bbox"] = mask_utils.toBbox(r["segmentation"]).tolist()
        else:
            ann["bbox"] = [float(v) for v in r["bbox"]]
            ann["area"] = ann["bbox"][2] * ann["bbox"][3]
        if ann["area"] > 0:  # the LVIS API skips empty results (after its per-image limit), as here
            out.append(ann)
    coco = COCO()
    coco.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": out}
    with _quiet():
        coco.createIndex()
    return coco


def reference_lvis_evaluate(gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], iou_type: str = "segm",
                            max_dets: int = 300, img_ids: Sequence[int] | None = None) -> dict[str, float | None]:
    """:func:`lvis_evaluate` on :class:`LVISEval` (pycocotools in Python): the independent implementation the tests
    compare the faster-coco-eval path against. Slow on large sets (see BENCHMARKS.md)."""
    coco_gt = gt_coco(gt)
    ev = LVISEval(coco_gt, results_coco(coco_gt, results, iou_type, max_dets), iou_type, max_dets)
    if img_ids is not None:
        ev.params.imgIds = sorted(int(i) for i in img_ids)
    with _quiet():
        ev.evaluate()
        ev.accumulate()
    return ev.summary()


def _result_areas(results: Sequence[Mapping[str, Any]], iou_type: str) -> np.ndarray:
    """Each result's area: the mask's pixel count (segm) or the box's w * h (bbox), as ``loadRes`` computes it."""
    if not results:
        return np.zeros(0)
    if iou_type == "segm":
        # faster-coco-eval's batch area: pycocotools 2.0.11's fails on more than 255 RLEs with numpy 2
        return fast_mask.area([r["segmentation"] for r in results]).astype(np.float64)
    wh = np.array([r["bbox"][2:4] for r in results], dtype=np.float64).reshape(-1, 2)
    return wh[:, 0] * wh[:, 1]


def federated_subset(gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], iou_type: str,
                     max_dets: int = 300, img_ids: Sequence[int] | None = None) -> list[Mapping[str, Any]]:
    """The results LVIS evaluation uses, in input order: the top ``max_dets`` per image (over all categories,
    stable on ties), then those of a category positive or negative in their image (the federated filter) and of
    non-zero area, on ``img_ids`` (default: every gt image). Vectorised over all results; idempotent, so each rank
    may apply it to its own images before results are gathered (a rank's shard holds whole images)."""
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    gt_imgs = np.fromiter((im["id"] for im in gt["images"]), dtype=np.int64, count=len(gt["images"]))
    n = len(results)
    img = np.fromiter((r["image_id"] for r in results), dtype=np.int64, count=n)
    unknown = np.setdiff1d(img, gt_imgs)
    if unknown.size:
        raise ValueError(f"{unknown.size} result image ids are not in the ground truth, e.g. {unknown[:3].tolist()}")
    if n == 0:
        return []
    cat = np.fromiter((r["category_id"] for r in results), dtype=np.int64, count=n)
    score = np.fromiter((r["score"] for r in results), dtype=np.float64, count=n)
    order = np.lexsort((-score, img))  # by image, then score descending; stable, as sorted() is
    group_start = np.r_[0, np.flatnonzero(np.diff(img[order])) + 1]
    rank = np.arange(n) - np.repeat(group_start, np.diff(np.r_[group_start, n]))
    keep = np.zeros(n, dtype=bool)
    keep[order[rank < max_dets]] = True
    # federated filter: (image, category) keys of positive (non-zero-area annotation) and negative categories
    anns = [a for a in gt["annotations"] if a["area"] > 0]
    pos = np.array([(a["image_id"], a["category_id"]) for a in anns], dtype=np.int64).reshape(-1, 2)
    neg = np.array([(im["id"], c) for im in gt["images"] for c in im.get("neg_category_ids", ())],
                   dtype=np.int64).reshape(-1, 2)
    allowed = np.concatenate([pos, neg])
    width = int(max(cat.max(), allowed[:, 1].max(initial=0))) + 1
    keep &= np.isin(img * width + cat, allowed[:, 0] * width + allowed[:, 1])
    if img_ids is not None:
        keep &= np.isin(img, np.asarray(list(img_ids), dtype=np.int64))
    kept = np.flatnonzero(keep)
    areas = _result_areas([results[i] for i in kept], iou_type)
    return [results[i] for i in kept[areas > 0]]


def _fast_results(results: Sequence[Mapping[str, Any]], iou_type: str) -> list[dict[str, Any]]:
    """(Already selected) results as annotations with ``loadRes``'s fields: ids from 1, ``iscrowd`` 0, segm area and
    box from the mask, bbox area from the box."""
    if not results:
        return []
    if iou_type == "segm":
        rles = [r["segmentation"] for r in results]
        areas, boxes = fast_mask.area(rles).astype(float).tolist(), fast_mask.toBbox(rles).tolist()
    else:
        box_array = np.array([r["bbox"] for r in results], dtype=np.float64).reshape(-1, 4)
        areas, boxes = (box_array[:, 2] * box_array[:, 3]).tolist(), box_array.tolist()
    anns = [{"id": i + 1, "image_id": int(r["image_id"]), "category_id": int(r["category_id"]),
             "score": float(r["score"]), "iscrowd": 0, "area": a, "bbox": b}
            for i, (r, a, b) in enumerate(zip(results, areas, boxes))]
    if iou_type == "segm":
        for ann, r in zip(anns, results):
            ann["segmentation"] = r["segmentation"]
    return anns


#: Categories evaluated per faster-coco-eval call (see :func:`_evaluate_sparse`).
CATEGORY_BLOCK = 64


def _evaluate_sparse(gt: Mapping[str, Any], gt_anns: list[dict[str, Any]], dt_anns: list[dict[str, Any]],
                     iou_type: str, img_ids: Sequence[int], max_dets: int, block: int = CATEGORY_BLOCK
                     ) -> tuple[np.ndarray, np.ndarray, FastParams]:
    """COCOeval_faster's accumulated ``precision`` (T, R, K, A, 1) and ``recall`` (T, K, A, 1) over all gt
    categories of the ground truth ``gt`` (its images and categories; annotations ``gt_anns``) and the results
    ``dt_anns``, evaluated ``block`` categories at a time, each block on the images where its categories have ground
    truth or detections.

    COCOeval_faster visits every (image, category) pair in Python and C++ (23.8M on LVIS v1 val, each leaving a
    dict entry); a category's precision and recall depend only on its own pairs with data, in image order
    (which the sorted image subsets keep), so the result is the same (see the tests). Categories are blocked in
    order of how many images they occur in, so frequent ones share the full image list and rare ones short ones.
    """
    cats = [c if c.get("frequency") in FREQUENCIES else {**c, "frequency": "f"} for c in gt["categories"]]
    cat_ids = sorted(c["id"] for c in cats)
    params = FastParams(iouType=iou_type)
    params.maxDets, params.imgIds, params.catIds = [int(max_dets)], list(img_ids), cat_ids
    shape = (len(params.iouThrs), len(params.recThrs), len(cat_ids), len(params.areaRng), 1)
    precision, recall = -np.ones(shape), -np.ones(shape[:1] + shape[2:])
    evaluated, known = set(img_ids), set(cat_ids)
    images: dict[int, set[int]] = defaultdict(set)  # category -> evaluated images with its gt or detections
    by_cat: dict[int, tuple[list, list]] = defaultdict(lambda: ([], []))  # category -> (gt, dt) annotations
    for j, anns in enumerate((gt_anns, dt_anns)):
        for a in anns:
            if a["image_id"] in evaluated and a["category_id"] in known:
                images[a["category_id"]].add(a["image_id"])
                by_cat[a["category_id"]][j].append(a)
    order = sorted(images, key=lambda c: (-len(images[c]), c))
    index = {c: k for k, c in enumerate(cat_ids)}
    for start in range(0, len(order), block):
        ids = sorted(order[start:start + block])
        coco_gt, coco_dt = (FastCOCO({"images": gt["images"], "categories": cats,
                                      "annotations": [a for c in ids for a in by_cat[c][j]]}) for j in (0, 1))
        ev = COCOeval_faster(coco_gt, coco_dt, iou_type, lvis_style=True, print_function=log.debug)
        ev.params.maxDets = [int(max_dets)]
        ev.params.imgIds = sorted(set().union(*(images[c] for c in ids)))
        ev.params.catIds = ids
        ev.evaluate()
        ev.accumulate()
        k = [index[c] for c in ids]
        precision[:, :, k] = ev.eval["precision"]
        recall[:, k] = ev.eval["recall"]
    return precision, recall, params


def lvis_evaluate_all(gt: Mapping[str, Any], results: Mapping[str, Sequence[Mapping[str, Any]]],
                      max_dets: int = 300, img_ids: Sequence[int] | None = None
                      ) -> dict[str, dict[str, float | None]]:
    """LVIS metrics (percent) per IoU type: ``results`` maps 'bbox' / 'segm' to result dicts (image_id,
    category_id, score and bbox [x, y, w, h] or segmentation RLE); the ground truth ``gt`` (LVIS json) is
    indexed once for all types. Evaluated on ``img_ids`` (default: every gt image)."""
    for iou_type in results:
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"results keys must be 'bbox' or 'segm', got {iou_type!r}")
    gt_anns = [{**a, "iscrowd": a.get("iscrowd", 0)} for a in gt["annotations"] if a["area"] > 0]  # as the LVIS API
    ids = sorted(int(im["id"]) for im in gt["images"]) if img_ids is None else sorted({int(i) for i in img_ids})
    frequency = [c.get("frequency") for c in sorted(gt["categories"], key=lambda c: c["id"])]  # catIds' order
    out = {}
    for iou_type, res in results.items():
        with _gc_paused():
            out[iou_type] = _evaluate_type(gt, gt_anns, res, iou_type, ids, max_dets, frequency)
    return out


def _evaluate_type(gt: Mapping[str, Any], gt_anns: list[dict[str, Any]], res: Sequence[Mapping[str, Any]],
                   iou_type: str, ids: Sequence[int], max_dets: int, frequency: Sequence[str | None]
                   ) -> dict[str, float | None]:
    """One IoU type's LVIS summary (see :func:`lvis_evaluate_all`)."""
    start = time.perf_counter()
    selected = federated_subset(gt, res, iou_type, max_dets, ids)
    precision, recall, params = _evaluate_sparse(gt, gt_anns, _fast_results(selected, iou_type), iou_type, ids,
                                                 max_dets)
    log.debug("LVIS %s evaluation of %d results (%d after the per-image limit and federated filter) on %d images: "
              "%.1fs", iou_type, len(res), len(selected), len(ids), time.perf_counter() - start)
    return summarize(precision, recall, params, frequency, max_dets)


def lvis_evaluate(gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], iou_type: str = "segm",
                  max_dets: int = 300, img_ids: Sequence[int] | None = None) -> dict[str, float | None]:
    """LVIS metrics (percent) of ``results`` (dicts with image_id, category_id, score and bbox [x, y, w, h]
    or segmentation RLE) against the LVIS json ``gt``, on ``img_ids`` (default: every gt image)."""
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    return lvis_evaluate_all(gt, {iou_type: results}, max_dets, img_ids)[iou_type]


def encode_detections(output: Mapping[str, torch.Tensor], image_id: int, image_size: tuple[int, int],
                      cat_ids: Sequence[int], mask_threshold: float = 0.5, chunk: int = 32
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One image's detections as LVIS bbox and segm results; masks pasted ``chunk`` at a time and RLE-encoded,
    so at most ``chunk`` full-image masks exist at once (torchvision pastes all 300 as float tensors)."""
    boxes = output["boxes"].detach().float().cpu()
    scores = output["scores"].detach().float().cpu().tolist()
    cats = [int(cat_ids[int(label) - 1]) for label in output["labels"].tolist()]
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    bbox = [{"image_id": image_id, "category_id": c, "bbox": b, "score": s} for c, b, s in zip(cats, xywh, scores)]
    segm: list[dict[str, Any]] = []
    probs = output.get("mask_probs")
    if probs is None and "masks" in output:  # torchvision's full-image masks
        probs = output["masks"]
    if probs is None:
        return bbox, segm
    probs = probs.detach().float().cpu()
    h, w = image_size
    rles = []
    for start in range(0, len(boxes), chunk):
        p = probs[start:start + chunk]
        if p.shape[-2:] != (h, w):
            p = paste_masks_in_image(p, boxes[start:start + chunk], (h, w), padding=1)
        binary = (p[:, 0] > mask_threshold).numpy().astype(np.uint8)
        rles += mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    for rle, c, s in zip(rles, cats, scores):
        segm.append({"image_id": image_id, "category_id": c, "segmentation": rle, "score": s})
    return bbox, segm


@torch.no_grad()
def predict_lvis(model: nn.Module, loader: DataLoader, device: torch.device, cat_ids: Sequence[int],
                 mask_threshold: float = 0.5, amp: bool = False, amp_dtype: str = "float16", desc: str = "eval",
                 progress: bool = True) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[int]]:
    """Run a detector (eval mode) over ``loader`` ((images, targets) batches); returns the LVIS bbox results,
    segm results (RLE) and the evaluated image ids. Memory per image is bounded by the detections kept."""
    was_training = model.training
    model.eval()
    bbox, segm, img_ids = [], [], []
    try:
        with compact_masks(model):
            for images, targets in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0,
                                        disable=not progress):
                with autocast(device, amp, amp_dtype):
                    outputs = model([im.to(device, non_blocking=True) for im in images])
                for out, target, image in zip(outputs, targets, images):
                    b, s = encode_detections(out, int(target["image_id"]), tuple(image.shape[-2:]), cat_ids,
                                             mask_threshold)
                    bbox += b
                    segm += s
                    img_ids.append(int(target["image_id"]))
    finally:
        model.train(was_training)
    return bbox, segm, img_ids
