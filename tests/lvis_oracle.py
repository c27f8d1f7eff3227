"""The test oracle for LVIS evaluation: the earlier evaluator, a pycocotools ``COCOeval`` subclass with LVIS's
federated rules, written independently of faster-coco-eval (the package's path). Slow on large sets; the tests and
``benchmarks/bench_lvis_eval.py --reference`` compare every metric with it."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ltcls.detection.evaluation import summarize

log = logging.getLogger("ltcls")


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

