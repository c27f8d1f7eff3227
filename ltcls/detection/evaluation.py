"""LVIS evaluation in bounded memory: results read as columns (filtered while reading), faster-coco-eval's C++
matching and accumulation, one category at a time.

LVIS's evaluator is COCO's matching with three additions:

1. federated filtering: a detection of category c in image I is evaluated only if c is annotated in I
   (positive) or in I's ``neg_category_ids`` (verified absent); other detections are dropped, since nothing
   is known about c in I;
2. not-exhaustive categories: an unmatched detection of a category in I's ``not_exhaustive_category_ids``
   is ignored (not a false positive); matched ones still count;
3. at most ``max_dets`` (300) detections per image over all categories (highest scores), and AP over all
   categories plus APr / APc / APf over the categories of each ``frequency`` group.

Everything else (IoU thresholds .5:.95, 101 recall points, area ranges, greedy matching, interpolated precision)
is COCOeval's, which the LVIS API's code follows. The parts:

* :func:`select_results` reads the results a chunk at a time (:mod:`ltcls.detection.results`: LVIS json,
  ltcls's shards, columns or dicts), applies the federated filter while reading, then the per-image limit
  (which needs an image's scores of every category: only image and score columns of all results are held),
  and drops results of zero area (pycocotools' ``loadRes`` areas: the mask's for segm, the box's for bbox; the
  LVIS API skips empty results). Boxes and masks (compressed RLE, never decoded) are kept only for detections
  of a positive (image, category) pair, the only ones that get an IoU (37% of those kept on LVIS-shaped data).
* :class:`_CategoryEvaluation` computes each pair's IoUs with pycocotools (``mask.iou`` on boxes or RLEs, as
  COCOeval) and runs faster-coco-eval's C++ ``COCOevalEvaluateAccumulate`` (``faster_eval_api_cpp``, the
  matching and accumulation ``COCOeval_faster`` runs, with the LVIS ``lvis_mark`` for rule 2) on one category's
  images at a time, from annotation dicts of the fields the C++ reads (id, score, area, iscrowd, ignore,
  lvis_mark) built for that category only. A category's precision and recall depend only on its own (image,
  category) pairs, in image order, so this equals one evaluation of everything (see the tests), while
  COCOeval_faster walks every (image, category) pair of the split in Python (23.8M on LVIS v1 val).

``faster-coco-eval`` is pinned (setup.cfg): its ``Dataset.load_tuple`` and ``COCOevalEvaluateAccumulate`` are the
entry points ``COCOeval_faster.evaluate`` uses. No torch is imported. The earlier evaluators (a pycocotools
``COCOeval`` subclass, then ``COCOeval_faster`` on result dicts) live on in ``tests/lvis_oracle.py`` as the
independent implementation every metric is compared with (to 1e-6).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import faster_coco_eval.faster_eval_api_cpp as fce_cpp
import numpy as np
from faster_coco_eval.core.cocoeval import Params
from pycocotools import mask as mask_utils

from ltcls.detection.results import (
    RLE,
    Detections,
    Masks,
    ResultsSource,
    ann_to_rle,
    check_iou_type,
    iter_detections,
    mask_areas,
)

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


def _member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """``np.isin`` for a sorted, unique ``sorted_set``."""
    if not len(sorted_set):
        return np.zeros(len(values), dtype=bool)
    at = np.searchsorted(sorted_set, values).clip(max=len(sorted_set) - 1)
    return sorted_set[at] == values


def top_per_image(image_id: np.ndarray, score: np.ndarray, max_dets: int) -> np.ndarray:
    """Whether each result is among the ``max_dets`` highest-scored of its image (ties: the earlier one)."""
    n = len(image_id)
    _, inverse, counts = np.unique(image_id, return_inverse=True, return_counts=True)
    if n == 0 or counts.max() <= max_dets:
        return np.ones(n, dtype=bool)
    order = np.lexsort((-score, inverse))  # by image, then score descending; stable, as sorted() is
    group_start = np.r_[0, np.cumsum(counts)[:-1]]
    rank = np.arange(n) - np.repeat(group_start, counts)
    keep = np.zeros(n, dtype=bool)
    keep[order[rank < max_dets]] = True
    return keep


class LVISGroundTruth:
    """The parts of an LVIS json the evaluation reads, as arrays: images, categories (sorted by id, with their
    frequency), annotations of non-zero area (as the LVIS API: ``iscrowd`` 0 unless given) and the sorted
    (image, category) keys of positive, negative and not-exhaustive pairs."""

    def __init__(self, gt: Mapping[str, Any]) -> None:
        images = gt["images"]
        self.image_ids = np.unique(np.array([im["id"] for im in images], dtype=np.int64))
        self.image_size = {int(im["id"]): (int(im["height"]), int(im["width"])) for im in images}
        cats = sorted(gt["categories"], key=lambda c: c["id"])
        self.cat_ids = np.array([c["id"] for c in cats], dtype=np.int64)
        self.frequency = [c.get("frequency") for c in cats]
        self.width = int(self.cat_ids.max(initial=0)) + 1
        self.anns = [a for a in gt["annotations"] if a["area"] > 0]
        n = len(self.anns)
        self.ann_image = np.fromiter((a["image_id"] for a in self.anns), np.int64, n)
        self.ann_category = np.fromiter((a["category_id"] for a in self.anns), np.int64, n)
        self.ann_area = np.fromiter((a["area"] for a in self.anns), np.float64, n)
        self.ann_crowd = np.fromiter((a.get("iscrowd", 0) for a in self.anns), np.int64, n)
        self.ann_bbox = np.array([a["bbox"] for a in self.anns], dtype=np.float64).reshape(n, 4)
        self.positive = np.unique(self.key(self.ann_image, self.ann_category))
        self.allowed = np.union1d(self.positive, self._image_keys(images, "neg_category_ids"))
        self.not_exhaustive = self._image_keys(images, "not_exhaustive_category_ids")

    def _image_keys(self, images: Sequence[Mapping[str, Any]], field: str) -> np.ndarray:
        pairs = np.array([(im["id"], c) for im in images for c in im.get(field, ())], dtype=np.int64).reshape(-1, 2)
        return np.unique(self.key(pairs[:, 0], pairs[:, 1]))

    def key(self, image_id: np.ndarray, category_id: np.ndarray) -> np.ndarray:
        """One int64 per (image, category); -1 for a category id outside the ground truth's range."""
        valid = (category_id >= 0) & (category_id < self.width)
        return np.where(valid, image_id * self.width + category_id, -1)

    def allowed_mask(self, image_id: np.ndarray, category_id: np.ndarray) -> np.ndarray:
        """The federated filter: the category is positive or negative in the image."""
        return _member(self.key(image_id, category_id), self.allowed)

    def check_images(self, image_id: np.ndarray, source: str = "results") -> None:
        unknown = np.setdiff1d(image_id, self.image_ids)
        if unknown.size:
            raise ValueError(f"{source}: {unknown.size} result image ids are not in the ground truth, e.g. "
                             f"{unknown[:3].tolist()}")

    def kept(self, image_id: np.ndarray, category_id: np.ndarray, score: np.ndarray, max_dets: int) -> np.ndarray:
        """Which results LVIS evaluation can use: the top ``max_dets`` per image, then the federated filter (whole
        images only: a rank may apply it to its own images before writing them)."""
        return top_per_image(image_id, score, max_dets) & self.allowed_mask(image_id, category_id)

    def ann_masks(self, index: Iterable[int]) -> list[RLE]:
        """Compressed RLEs of the annotations at ``index`` (polygons converted as the LVIS API does)."""
        out = []
        for k in index:
            a = self.anns[k]
            h, w = self.image_size[int(a["image_id"])]
            out.append(ann_to_rle(a["segmentation"], h, w))
        return out


@dataclass
class Selection:
    """The results one IoU type evaluates, as columns (input order), with their areas. Geometry (``bbox`` rows or
    ``masks``) is kept only for results of a positive (image, category) pair: ``geometry[k]`` is row ``k``'s
    index into it, -1 for the others (negative pairs get no IoU)."""

    image_id: np.ndarray
    category_id: np.ndarray
    score: np.ndarray
    area: np.ndarray
    geometry: np.ndarray
    bbox: np.ndarray | None
    masks: Masks | None
    num_results: int = 0

    def __len__(self) -> int:
        return len(self.image_id)


def _kept_part(chunk: Detections, keep: np.ndarray, gt: LVISGroundTruth, iou_type: str) -> Selection:
    """Rows ``keep`` of a chunk of detections with their areas; geometry for positive pairs only."""
    image_id, category_id = chunk.image_id[keep], chunk.category_id[keep]
    if iou_type == "segm":
        area = mask_areas(chunk.masks.rles(keep.tolist()))
    else:
        area = chunk.bbox[keep, 2] * chunk.bbox[keep, 3]
    positive = _member(gt.key(image_id, category_id), gt.positive)
    rows = np.flatnonzero(positive)
    geometry = np.full(len(keep), -1, dtype=np.int64)
    geometry[rows] = np.arange(len(rows))
    return Selection(image_id, category_id, chunk.score[keep], area, geometry,
                     chunk.bbox[keep[rows]] if iou_type == "bbox" else None,
                     chunk.masks.take(keep[rows]) if iou_type == "segm" else None)


def _concat(parts: list[Selection], keeps: list[np.ndarray], iou_type: str) -> Selection:
    """Rows ``keeps[i]`` of each part, geometry indices shifted past the earlier parts' geometry."""
    shifted, total = [], 0
    for part in parts:
        shifted.append(np.where(part.geometry >= 0, part.geometry + total, -1))
        total += int((part.geometry >= 0).sum())
    cols = {name: np.concatenate([getattr(p, name)[k] for p, k in zip(parts, keeps)]) if parts else np.zeros(0)
            for name in ("image_id", "category_id", "score", "area")}
    geometry = np.concatenate([g[k] for g, k in zip(shifted, keeps)]) if parts else np.zeros(0, np.int64)
    bbox = np.concatenate([p.bbox for p in parts]) if iou_type == "bbox" and parts else np.zeros((0, 4))
    masks = Masks.concat([p.masks for p in parts]) if iou_type == "segm" else None
    return Selection(cols["image_id"].astype(np.int64), cols["category_id"].astype(np.int64), cols["score"],
                     cols["area"], geometry.astype(np.int64), bbox if iou_type == "bbox" else None, masks)


def select_results(source: ResultsSource, gt: LVISGroundTruth, iou_type: str, max_dets: int = 300,
                      img_ids: Sequence[int] | None = None) -> Selection:
    """The results of ``source`` LVIS evaluation uses, in input order: the top ``max_dets`` per image (over all
    categories, stable on ties), then those of a category positive or negative in their image (the federated
    filter), of non-zero area, on ``img_ids`` (default: every gt image).

    Read a chunk at a time: the federated filter applies while reading; image and score columns of every result
    are kept for the per-image limit, which is applied at the end."""
    check_iou_type(iou_type)
    evaluated = gt.image_ids if img_ids is None else np.unique(np.asarray(list(img_ids), dtype=np.int64))
    images, scores, parts, rows = [], [], [], []
    n = 0
    for chunk in iter_detections(source, iou_type):
        gt.check_images(chunk.image_id)
        images.append(chunk.image_id)
        scores.append(chunk.score)
        keep = np.flatnonzero(gt.allowed_mask(chunk.image_id, chunk.category_id) & _member(chunk.image_id, evaluated))
        parts.append(_kept_part(chunk, keep, gt, iou_type))
        rows.append(keep + n)
        n += len(chunk)
        del chunk
    top = top_per_image(np.concatenate(images) if images else np.zeros(0, np.int64),
                        np.concatenate(scores) if scores else np.zeros(0), max_dets)
    del images, scores
    selection = _concat(parts, [top[r] & (p.area > 0) for p, r in zip(parts, rows)], iou_type)
    selection.num_results = n
    return selection


class _CategoryEvaluation:
    """faster-coco-eval's C++ evaluation of one category at a time on the images where it has ground truth or
    detections (see the module docstring); ``precision`` (T, R, K, A, 1) and ``recall`` (T, K, A, 1) as
    COCOeval's, over the ground truth's categories."""

    def __init__(self, gt: LVISGroundTruth, sel: Selection, iou_type: str, img_ids: np.ndarray,
                 max_dets: int) -> None:
        self.gt, self.sel, self.iou_type = gt, sel, iou_type
        self.params = Params(iouType=iou_type)
        self.params.maxDets = [int(max_dets)]
        t, r, a = len(self.params.iouThrs), len(self.params.recThrs), len(self.params.areaRng)
        self.precision = -np.ones((t, r, len(gt.cat_ids), a, 1))
        self.recall = -np.ones((t, len(gt.cat_ids), a, 1))
        order = np.lexsort((-sel.score, sel.image_id, sel.category_id))  # stable: ties keep input order
        self.dt = order
        self.dt_image, self.dt_category = sel.image_id[order], sel.category_id[order]
        self.dt_mark = _member(gt.key(self.dt_image, self.dt_category), gt.not_exhaustive)
        evaluated = np.flatnonzero(_member(gt.ann_image, img_ids))
        self.gt_rows = evaluated[np.lexsort((gt.ann_image[evaluated], gt.ann_category[evaluated]))]
        self.gt_image, self.gt_category = gt.ann_image[self.gt_rows], gt.ann_category[self.gt_rows]

    def run(self) -> None:
        ids = self.gt.cat_ids
        d_bounds = np.searchsorted(self.dt_category, ids), np.searchsorted(self.dt_category, ids, "right")
        g_bounds = np.searchsorted(self.gt_category, ids), np.searchsorted(self.gt_category, ids, "right")
        for k, cat in enumerate(ids.tolist()):
            g0, g1 = int(g_bounds[0][k]), int(g_bounds[1][k])
            if g1 > g0:  # without ground truth a category's precision stays -1 (COCOeval: no valid gt)
                self.category(k, cat, (int(d_bounds[0][k]), int(d_bounds[1][k])), (g0, g1))

    def ious(self, dts: np.ndarray, gts: np.ndarray) -> np.ndarray:
        """IoUs (rows: detections in score order) of sorted-detection positions ``dts`` and gt rows ``gts``."""
        geometry = self.sel.geometry[self.dt[dts]]
        crowd = self.gt.ann_crowd[gts].astype(np.uint8).tolist()
        if self.iou_type == "bbox":
            return mask_utils.iou(self.sel.bbox[geometry], self.gt.ann_bbox[gts], crowd)
        return mask_utils.iou(self.sel.masks.rles(geometry.tolist()), self.gt.ann_masks(gts.tolist()), crowd)

    def category(self, k: int, cat: int, d: tuple[int, int], g: tuple[int, int]) -> None:
        gt, sel = self.gt, self.sel
        dt_img, gt_img = self.dt_image[d[0]:d[1]], self.gt_image[g[0]:g[1]]
        images = np.union1d(dt_img, gt_img)
        ds, de = d[0] + np.searchsorted(dt_img, images), d[0] + np.searchsorted(dt_img, images, "right")
        gs, ge = g[0] + np.searchsorted(gt_img, images), g[0] + np.searchsorted(gt_img, images, "right")
        rows = self.dt[d[0]:d[1]]
        dt_dicts = [{"id": i, "score": s, "area": a, "lvis_mark": m} for i, s, a, m in zip(
            (rows + 1).tolist(), sel.score[rows].tolist(), sel.area[rows].tolist(), self.dt_mark[d[0]:d[1]].tolist())]
        grows = self.gt_rows[g[0]:g[1]]
        crowd = gt.ann_crowd[grows].tolist()
        gt_dicts = [{"id": i, "area": a, "iscrowd": c, "ignore": c}
                    for i, a, c in zip((grows + 1).tolist(), gt.ann_area[grows].tolist(), crowd)]
        ious, gt_pairs, dt_pairs = [], [], []
        for img, a, b, e, f in zip(images.tolist(), ds.tolist(), de.tolist(), gs.tolist(), ge.tolist()):
            ious.append([self.ious(np.arange(a, b), self.gt_rows[e:f]) if b > a and f > e else []])
            if f > e:
                gt_pairs.append((float(img), float(cat), gt_dicts[e - g[0]:f - g[0]]))
            if b > a:
                dt_pairs.append((float(img), float(cat), dt_dicts[a - d[0]:b - d[0]]))
        gt_set, dt_set = fce_cpp.Dataset(), fce_cpp.Dataset()
        gt_set.load_tuple((len(gt_pairs), gt_pairs))
        dt_set.load_tuple((len(dt_pairs), dt_pairs))
        self.params.imgIds, self.params.catIds = images.tolist(), [cat]
        result = fce_cpp.COCOevalEvaluateAccumulate(self.params, ious, gt_set, dt_set, self.params.imgIds,
                                                    [float(cat)], True)
        self.precision[:, :, k] = result["precision"][:, :, 0]
        self.recall[:, k] = result["recall"][:, 0]


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


def evaluate_selection(gt: LVISGroundTruth, sel: Selection, iou_type: str, max_dets: int = 300,
                       img_ids: Sequence[int] | None = None) -> dict[str, float | None]:
    """The LVIS summary of the selected results (:func:`select_results` with the same arguments)."""
    ids = gt.image_ids if img_ids is None else np.unique(np.asarray(list(img_ids), dtype=np.int64))
    ev = _CategoryEvaluation(gt, sel, iou_type, ids, max_dets)
    with _gc_paused():
        ev.run()
    ev.params.catIds = gt.cat_ids.tolist()
    return summarize(ev.precision, ev.recall, ev.params, gt.frequency, max_dets)


def lvis_evaluate_all(gt: Mapping[str, Any] | LVISGroundTruth, results: Mapping[str, ResultsSource],
                      max_dets: int = 300, img_ids: Sequence[int] | None = None
                      ) -> dict[str, dict[str, float | None]]:
    """LVIS metrics (percent) per IoU type: ``results`` maps 'bbox' / 'segm' to a results source (an LVIS results
    json or a folder of ltcls shards by path, :class:`~ltcls.detection.results.Shards`, ``Detections``, or result
    dicts with image_id, category_id, score and bbox [x, y, w, h] or segmentation RLE); the ground truth (LVIS
    json, or its :class:`LVISGroundTruth`) is indexed once for all types, which are evaluated one after the other
    (one type's results in memory at a time). Evaluated on ``img_ids`` (default: every gt image)."""
    for iou_type in results:
        check_iou_type(iou_type)
    index = gt if isinstance(gt, LVISGroundTruth) else LVISGroundTruth(gt)
    out = {}
    for iou_type, source in results.items():
        start = time.perf_counter()
        sel = select_results(source, index, iou_type, max_dets, img_ids)
        selected = time.perf_counter()
        out[iou_type] = evaluate_selection(index, sel, iou_type, max_dets, img_ids)
        log.debug("LVIS %s evaluation: %d results read and %d selected in %.1fs, evaluated in %.1fs", iou_type,
                  sel.num_results, len(sel), selected - start, time.perf_counter() - selected)
        del sel
    return out


def lvis_evaluate(gt: Mapping[str, Any] | LVISGroundTruth, results: ResultsSource, iou_type: str = "segm",
                  max_dets: int = 300, img_ids: Sequence[int] | None = None) -> dict[str, float | None]:
    """LVIS metrics (percent) of one IoU type's ``results`` (see :func:`lvis_evaluate_all`)."""
    check_iou_type(iou_type)
    return lvis_evaluate_all(gt, {iou_type: results}, max_dets, img_ids)[iou_type]
