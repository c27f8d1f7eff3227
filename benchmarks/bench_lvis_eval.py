"""LVIS evaluation at LVIS v1 val's shape: ltcls's ``lvis_evaluate`` (faster-coco-eval's LVIS mode) against the
``lvis`` 0.5.3 API (and, with ``--reference``, ltcls's previous pycocotools evaluator; with ``--stock``,
faster-coco-eval's ``COCOeval_faster(lvis_style=True)`` used directly) in the same run.

The generated set has LVIS v1's 1,203 categories (337 rare, 461 common, 405 frequent), a few positive categories
per image with ~8 instances in all (octagon polygons, boxes of 8-300 px), federated ``neg_category_ids`` and
``not_exhaustive_category_ids``, and 300 detections per image: jittered copies of the ground truth (sometimes
with a confused category) plus background boxes over positive, negative and unrelated categories.

Each evaluator runs in its own process, which loads the same json files (timed apart from the evaluation) and
reports its wall time, its peak resident memory (max RSS, whole process) and its metrics; the ratio and the
largest metric difference against the ``lvis`` API are printed. The ``lvis`` API is installed with pip
(``--no-deps``) into a scratch folder and run with a numpy-2 shim (``np.float``) and a stub ``cv2`` (imported
only by its visualiser); without pip access it is skipped with a message.

    python benchmarks/bench_lvis_eval.py [--images 1000] [--iou-type bbox|segm|both] [--reference] [--stock]
                                         [--no-lvis-api]
    python benchmarks/bench_lvis_eval.py --images 19809 --no-lvis-api      # ltcls alone at LVIS v1 val's size
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

log = logging.getLogger("bench_lvis_eval")

NUM_CATEGORIES = 1203
GROUPS = (("r", 337), ("c", 461), ("f", 405))  # LVIS v1's category counts per frequency group
SIZES = ((640, 480), (480, 640), (640, 427), (500, 375))
LVIS_VERSION = "0.5.3"


def _octagon(box: np.ndarray) -> list[float]:
    """An octagon inscribed in ``box`` (x, y, w, h): a polygon whose mask differs from its box."""
    x, y, w, h = box
    a, b = 0.3 * w, 0.3 * h
    pts = [x + a, y, x + w - a, y, x + w, y + b, x + w, y + h - b,
           x + w - a, y + h, x + a, y + h, x, y + h - b, x, y + b]
    return [round(float(v), 2) for v in pts]


def _boxes(rng: np.random.Generator, n: int, width: int, height: int) -> np.ndarray:
    """``n`` boxes (x, y, w, h) inside the image, sides log-uniform in 8-300 px."""
    wh = np.exp(rng.uniform(np.log(8), np.log(300), (n, 2)))
    wh = np.minimum(wh, [width - 1, height - 1])
    xy = rng.uniform(0, 1, (n, 2)) * ([width, height] - wh)
    return np.concatenate([xy, wh], axis=1).round(2)


def make_gt(num_images: int, seed: int = 0) -> dict[str, Any]:
    """An LVIS-val-shaped ground truth json (polygon segmentations, federated image fields)."""
    rng = np.random.default_rng(seed)
    freq = np.concatenate([[f] * n for f, n in GROUPS])[rng.permutation(NUM_CATEGORIES)]
    weight = np.where(freq == "f", 1.0, np.where(freq == "c", 0.12, 0.015))
    weight /= weight.sum()
    categories = [{"id": k + 1, "name": f"cat{k + 1}", "frequency": str(freq[k])} for k in range(NUM_CATEGORIES)]
    images, annotations = [], []
    for i in range(1, num_images + 1):
        width, height = SIZES[int(rng.integers(len(SIZES)))]
        pos = rng.choice(NUM_CATEGORIES, size=1 + rng.poisson(2.0), replace=False, p=weight) + 1
        rest = np.setdiff1d(np.arange(1, NUM_CATEGORIES + 1), pos)
        neg = rng.choice(rest, size=3 + rng.poisson(6.0), replace=False, p=weight[rest - 1] / weight[rest - 1].sum())
        images.append({"id": i, "width": width, "height": height, "coco_url": f"http://x/val2017/{i:012d}.jpg",
                       "neg_category_ids": sorted(int(c) for c in neg),
                       "not_exhaustive_category_ids": sorted(int(c) for c in pos if rng.uniform() < 0.1)})
        for c in pos:
            for box in _boxes(rng, 1 + rng.poisson(1.8), width, height):
                poly = _octagon(box)
                area = float(mask_utils.area(mask_utils.frPyObjects([poly], height, width))[0])
                annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(c),
                                    "bbox": box.tolist(), "area": area, "segmentation": [poly]})
    return {"images": images, "categories": categories, "annotations": annotations}


def iter_detections(gt: dict[str, Any], per_image: int = 300, seed: int = 1, segm: bool = True
                    ) -> Iterator[list[dict[str, Any]]]:
    """Per image, ``per_image`` detections with a ``bbox`` and (``segm``) a ``segmentation`` (RLE, counts as str)."""
    rng = np.random.default_rng(seed)
    by_image: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in gt["images"]}
    for a in gt["annotations"]:
        by_image[a["image_id"]].append(a)
    for im in gt["images"]:
        anns, width, height = by_image[im["id"]], im["width"], im["height"]
        boxes, cats, scores = [], [], []
        for a in anns:  # 4 jittered copies of each instance, one in five with a confused category
            box = np.asarray(a["bbox"])
            jitter = box + rng.normal(0, 0.12, (4, 4)) * np.r_[box[2:], box[2:]]
            jitter[:, 2:] = np.maximum(jitter[:, 2:], 2.0)
            boxes.append(jitter)
            confused = rng.uniform(size=4) < 0.2
            cats.append(np.where(confused, rng.integers(1, NUM_CATEGORIES + 1, 4), a["category_id"]))
            scores.append(rng.uniform(0.2, 1.0, 4))
        n_bg = max(per_image - 4 * len(anns), 0)
        pool = np.r_[[a["category_id"] for a in anns], im["neg_category_ids"]].astype(int)
        bg_cats = np.where(rng.uniform(size=n_bg) < 0.5, rng.choice(pool, n_bg) if len(pool) else 1,
                           rng.integers(1, NUM_CATEGORIES + 1, n_bg))
        boxes.append(_boxes(rng, n_bg, width, height))
        cats.append(bg_cats)
        scores.append(rng.uniform(0.0, 0.7, n_bg))
        box_arr = np.concatenate(boxes)[:per_image].round(2)
        cat_arr, score_arr = np.concatenate(cats)[:per_image], np.concatenate(scores)[:per_image].round(4)
        dets = [{"image_id": im["id"], "category_id": int(c), "score": float(s), "bbox": b}
                for b, c, s in zip(box_arr.tolist(), cat_arr, score_arr)]
        if segm:
            for d, r in zip(dets, mask_utils.frPyObjects([_octagon(b) for b in box_arr], height, width)):
                d["segmentation"] = {"size": r["size"], "counts": r["counts"].decode()}
        yield dets


def write_set(folder: Path, num_images: int, iou_types: list[str]) -> dict[str, Any]:
    """Write gt.json and one results file per IoU type (streamed image by image); returns the set's sizes."""
    gt = make_gt(num_images)
    (folder / "gt.json").write_text(json.dumps(gt))
    files = {t: (folder / f"{t}.json").open("w") for t in iou_types}
    n = 0
    for f in files.values():
        f.write("[")
    for dets in iter_detections(gt, segm="segm" in iou_types):
        for t, f in files.items():
            drop = "bbox" if t == "segm" else "segmentation"
            f.write(("," if n else "") + ",".join(json.dumps({k: v for k, v in d.items() if k != drop}) for d in dets))
        n += len(dets)
    for f in files.values():
        f.write("]")
        f.close()
    return {"images": num_images, "annotations": len(gt["annotations"]), "detections": n,
            "neg_per_image": float(np.mean([len(i["neg_category_ids"]) for i in gt["images"]])),
            "not_exhaustive_per_image": float(np.mean([len(i["not_exhaustive_category_ids"]) for i in gt["images"]]))}


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def worker(name: str, folder: Path, iou_types: list[str]) -> dict[str, Any]:
    """One evaluator in this process: load the json files, evaluate each IoU type, report times, peak RSS, metrics."""
    import types  # imports first: ltcls's evaluation module imports torch, which is not the evaluator's cost

    np.float = float  # type: ignore[attr-defined]  # removed in numpy 1.24; lvis 0.5.3 still uses it
    sys.modules.setdefault("cv2", types.ModuleType("cv2"))  # imported by lvis.vis only
    if name == "lvis":
        from lvis import LVIS, LVISEval, LVISResults
        logging.getLogger("lvis").setLevel(logging.ERROR)
        load_json = LVIS._load_json
        LVIS._load_json = lambda self, p: p if isinstance(p, dict) else load_json(self, p)  # already loaded
    else:
        from faster_coco_eval import COCO as FastCOCO
        from faster_coco_eval import COCOeval_faster

        from ltcls.detection.evaluation import lvis_evaluate_all, reference_lvis_evaluate, summarize
    rss_imported = _maxrss_mb()
    start = time.perf_counter()
    gt = json.loads((folder / "gt.json").read_text())
    results = {t: json.loads((folder / f"{t}.json").read_text()) for t in iou_types}
    loaded, rss_loaded = time.perf_counter(), _maxrss_mb()
    if name == "ltcls":
        metrics = lvis_evaluate_all(gt, results)
    elif name == "reference":
        metrics = {t: reference_lvis_evaluate(gt, results[t], t) for t in iou_types}
    elif name == "stock":  # faster-coco-eval as its README shows it (no per-image limit: the set has 300 per image)
        metrics = {}
        for t in iou_types:
            coco_gt = FastCOCO({**gt, "annotations": [{**a, "iscrowd": 0} for a in gt["annotations"]]})
            ev = COCOeval_faster(coco_gt, coco_gt.loadRes(results[t]), t, lvis_style=True, print_function=log.debug)
            ev.params.maxDets = [300]
            ev.run()
            frequency = [c["frequency"] for c in sorted(gt["categories"], key=lambda c: c["id"])]
            metrics[t] = summarize(ev.eval["precision"], ev.eval["recall"], ev.params, frequency, 300)
    else:
        lvis_gt = LVIS(gt)
        metrics = {}
        for t in iou_types:
            ev = LVISEval(lvis_gt, LVISResults(lvis_gt, results[t], max_dets=300), t)
            ev.run()
            metrics[t] = {k: (None if v == -1 else 100.0 * float(v)) for k, v in ev.get_results().items()}
    done = time.perf_counter()
    return {"name": name, "load_s": loaded - start, "eval_s": done - loaded, "rss_imported_mb": rss_imported,
            "rss_loaded_mb": rss_loaded,
            "peak_rss_mb": _maxrss_mb(), "metrics": metrics}


def install_lvis(scratch: Path) -> Path | None:
    """pip-install the lvis API (no dependencies) into ``scratch``; None (with a message) when that fails."""
    target = scratch / "lvis_api"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                           f"lvis=={LVIS_VERSION}"], capture_output=True, text=True)
    if proc.returncode != 0:
        log.warning("lvis API skipped: pip install lvis==%s failed: %s", LVIS_VERSION, proc.stderr.strip()[-300:])
        return None
    return target


def run_worker(name: str, folder: Path, iou_types: list[str], extra_path: Path | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(extra_path or ""), repo, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, __file__, "--worker", name, "--folder", str(folder),
                           "--iou-type", ",".join(iou_types)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--iou-type", default="bbox", help="bbox, segm, both, or a comma-separated list")
    parser.add_argument("--reference", action="store_true", help="also time ltcls's pycocotools evaluator")
    parser.add_argument("--stock", action="store_true", help="also time faster-coco-eval's COCOeval_faster alone")
    parser.add_argument("--no-lvis-api", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    iou_types = ["bbox", "segm"] if args.iou_type == "both" else args.iou_type.split(",")
    if args.worker:
        print(json.dumps(worker(args.worker, args.folder, iou_types)))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        sizes = write_set(folder, args.images, iou_types)
        log.info("set: %s (generated in %.0fs); json: %s", sizes, time.perf_counter() - start,
                 {p.name: f"{p.stat().st_size / 2**20:.0f} MiB" for p in sorted(folder.glob("*.json"))})
        runs = [run_worker("ltcls", folder, iou_types)]
        if args.reference:
            runs.append(run_worker("reference", folder, iou_types))
        if args.stock:
            runs.append(run_worker("stock", folder, iou_types))
        if not args.no_lvis_api:
            lvis_path = install_lvis(folder)
            if lvis_path is not None:
                runs.append(run_worker("lvis", folder, iou_types, lvis_path))
    base = next((r for r in runs if r["name"] == "lvis"), None)
    log.info("%-10s %7s %7s %12s %12s %12s %12s  %s", "evaluator", "load s", "eval s", "RSS imports",
             "RSS loaded", "peak RSS", "peak-loaded", "AP / APr / APc / APf per IoU type")
    for r in runs:
        m = "  ".join(f"{t} " + " / ".join(f"{r['metrics'][t][k]:.2f}" for k in ("AP", "APr", "APc", "APf"))
                      for t in iou_types)
        log.info("%-10s %7.1f %7.1f %9.0f MB %9.0f MB %9.0f MB %9.0f MB  %s", r["name"], r["load_s"], r["eval_s"],
                 r["rss_imported_mb"], r["rss_loaded_mb"], r["peak_rss_mb"], r["peak_rss_mb"] - r["rss_loaded_mb"], m)
    if base is not None:
        keys = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
        for r in runs:
            if r is base:
                continue
            diff = max(abs(r["metrics"][t][k] - base["metrics"][t][k]) for t in iou_types for k in keys
                       if base["metrics"][t][k] is not None)
            log.info("%s vs lvis API: evaluation %.2fx faster (load + evaluation %.2fx); largest metric difference "
                     "%.2e (percent points, %s)", r["name"], base["eval_s"] / r["eval_s"],
                     (base["eval_s"] + base["load_s"]) / (r["eval_s"] + r["load_s"]), diff, ", ".join(keys))


if __name__ == "__main__":
    main()
