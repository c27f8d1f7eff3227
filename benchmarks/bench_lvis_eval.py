"""LVIS evaluation at LVIS v1 val's shape, results file to metrics: ltcls's ``lvis_evaluate_all`` (columns read a
chunk at a time, faster-coco-eval's C++ per category) from the LVIS results json and from ltcls's shards, against
the ``lvis`` 0.5.3 API (and, with ``--reference``, the pycocotools oracle in ``tests/lvis_oracle.py``; with
``--stock``, faster-coco-eval's ``COCOeval_faster(lvis_style=True)`` used directly) in the same run.

The generated set has LVIS v1's 1,203 categories (337 rare, 461 common, 405 frequent), a few positive categories
per image with ~8 instances in all (octagon polygons, boxes of 8-300 px), federated ``neg_category_ids`` and
``not_exhaustive_category_ids``, and 300 detections per image: jittered copies of the ground truth (sometimes
with a confused category) plus background boxes over positive, negative and unrelated categories. They are
written as one LVIS results json per IoU type and as ltcls shards (``.npz``, what ``LVISEvaluator`` writes during
inference: per image, the detections LVIS evaluation can use).

Each evaluator runs in its own process and reports its load time (the gt json; for the dict-based evaluators the
results json too), its evaluation time (for ltcls: from the results file or shards to the metrics), its peak
resident memory (max RSS, whole process) and its metrics; ratios and the largest metric difference against the
``lvis`` API are printed. ``--lvis-api-sizes 1000 2000`` runs the ``lvis`` API (and ltcls) on smaller sets of the
same shape in the same invocation and extrapolates its time to ``--images`` linearly from the fastest per-image
rate measured (its time grows at least linearly), for sizes it cannot run in this machine's memory. The ``lvis``
API is installed with pip (``--no-deps``) into a scratch folder and run with a numpy-2 shim (``np.float``) and a
stub ``cv2`` (imported only by its visualiser); without pip access it is skipped with a message.

    python benchmarks/bench_lvis_eval.py [--images 1000] [--iou-type bbox|segm|both] [--reference] [--stock]
                                         [--no-lvis-api] [--lvis-api-sizes N ...]
    python benchmarks/bench_lvis_eval.py --images 19809 --iou-type both --lvis-api-sizes 1000 2000  # LVIS v1 val
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import re
import resource
import shutil
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


def tile_gt(gt: dict[str, Any], num_images: int) -> dict[str, Any]:
    """``gt``'s images (ids 1..n) repeated with ids shifted by n per copy, up to ``num_images``, with their
    annotations."""
    n = len(gt["images"])
    images, annotations = [], []
    for repeat in range(-(-num_images // n)):
        shift = repeat * n
        images += [{**im, "id": im["id"] + shift} for im in gt["images"] if im["id"] + shift <= num_images]
        annotations += [{**a, "id": len(annotations) + k + 1, "image_id": a["image_id"] + shift}
                        for k, a in enumerate(a for a in gt["annotations"] if a["image_id"] + shift <= num_images)]
    return {"images": images, "categories": gt["categories"], "annotations": annotations}


_IMAGE_ID = re.compile(r'"image_id": \d+')


def write_set(folder: Path, num_images: int, iou_types: list[str], distinct: int | None = None) -> dict[str, Any]:
    """Write gt.json, one results file per IoU type and ltcls shards (streamed image by image); returns the set's
    sizes. With ``distinct`` < ``num_images``, ``distinct`` images are generated and repeated (ids shifted: the
    same evaluation work per image, generated ``num_images / distinct`` times faster)."""
    from ltcls.detection.evaluation import LVISGroundTruth  # lazy: the workers' memory is measured from the start
    from ltcls.detection.results import Detections, ShardWriter

    base = make_gt(min(num_images, distinct or num_images))
    gt = tile_gt(base, num_images)
    (folder / "gt.json").write_text(json.dumps(gt))
    files = {t: (folder / f"{t}.json").open("w") for t in iou_types}
    index = LVISGroundTruth(base)
    shards = ShardWriter(folder / "shards", rows=200_000)
    per_image = []  # (image id, {iou type: json text}, kept columns) of each generated image
    for dets in iter_detections(base, segm="segm" in iou_types):
        text = {t: ",".join(json.dumps({k: v for k, v in d.items() if k != ("bbox" if t == "segm" else "segmentation")})
                            for d in dets) for t in iou_types}
        cols = Detections.from_dicts(dets, iou_types)
        per_image.append((dets[0]["image_id"], text,
                          cols.take(np.flatnonzero(index.kept(cols.image_id, cols.category_id, cols.score, 300)))))
    for f in files.values():
        f.write("[")
    for im in gt["images"]:
        base_id, text, kept = per_image[(im["id"] - 1) % len(per_image)]
        for t, f in files.items():
            f.write(("," if im["id"] > 1 else "") + _IMAGE_ID.sub(f'"image_id": {im["id"]}', text[t]))
        kept = copy.copy(kept)
        kept.image_id = np.full(len(kept), im["id"], dtype=np.int64)
        shards.add(kept, [im["id"]])
    for f in files.values():
        f.write("]")
        f.close()
    shards.close()
    return {"images": num_images, "distinct_images": len(per_image), "annotations": len(gt["annotations"]),
            "detections": 300 * num_images,
            "neg_per_image": float(np.mean([len(i["neg_category_ids"]) for i in gt["images"]])),
            "not_exhaustive_per_image": float(np.mean([len(i["not_exhaustive_category_ids"]) for i in gt["images"]]))}


def _maxrss_mb() -> float:
    """This process's peak resident memory: ``VmHWM`` (ru_maxrss keeps the parent's high-water mark across fork and
    exec on Linux, so a worker would report the generator's memory)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _dict_metrics(name: str, gt: dict[str, Any], results: dict[str, Any], iou_types: list[str]) -> dict[str, Any]:
    """The dict-based evaluators on loaded json: the oracle, faster-coco-eval alone, or the ``lvis`` API."""
    metrics = {}
    for t in iou_types:
        if name == "reference":
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from lvis_oracle import reference_lvis_evaluate
            metrics[t] = reference_lvis_evaluate(gt, results[t], t)
        elif name == "stock":  # faster-coco-eval as its README shows it (no per-image limit: the set has 300)
            from faster_coco_eval import COCO as FastCOCO
            from faster_coco_eval import COCOeval_faster

            from ltcls.detection.evaluation import summarize
            coco_gt = FastCOCO({**gt, "annotations": [{**a, "iscrowd": 0} for a in gt["annotations"]]})
            ev = COCOeval_faster(coco_gt, coco_gt.loadRes(results[t]), t, lvis_style=True, print_function=log.debug)
            ev.params.maxDets = [300]
            ev.run()
            frequency = [c["frequency"] for c in sorted(gt["categories"], key=lambda c: c["id"])]
            metrics[t] = summarize(ev.eval["precision"], ev.eval["recall"], ev.params, frequency, 300)
        else:
            from lvis import LVIS, LVISEval, LVISResults
            lvis_gt = LVIS(gt)
            ev = LVISEval(lvis_gt, LVISResults(lvis_gt, results[t], max_dets=300), t)
            ev.run()
            metrics[t] = {k: (None if v == -1 else 100.0 * float(v)) for k, v in ev.get_results().items()}
    return metrics


def worker(name: str, folder: Path, iou_types: list[str]) -> dict[str, Any]:
    """One evaluator in this process: load what it loads, evaluate each IoU type, report times, peak RSS, metrics.
    ltcls (``ltcls``: the json files, ``shards``: the shard folder) loads only the gt json and reads the results
    itself, as part of its evaluation."""
    import types

    np.float = float  # type: ignore[attr-defined]  # removed in numpy 1.24; lvis 0.5.3 still uses it
    sys.modules.setdefault("cv2", types.ModuleType("cv2"))  # imported by lvis.vis only
    if name == "lvis":
        from lvis import LVIS
        logging.getLogger("lvis").setLevel(logging.ERROR)
        load_json = LVIS._load_json
        LVIS._load_json = lambda self, p: p if isinstance(p, dict) else load_json(self, p)  # already loaded
    rss_imported = _maxrss_mb()
    start = time.perf_counter()
    gt = json.loads((folder / "gt.json").read_text())
    if name not in ("ltcls", "shards"):
        results = {t: json.loads((folder / f"{t}.json").read_text()) for t in iou_types}
    loaded, rss_loaded = time.perf_counter(), _maxrss_mb()
    if name in ("ltcls", "shards"):
        from ltcls.detection.evaluation import lvis_evaluate_all  # lazy: imports are part of the process's memory

        sources = {t: folder / ("shards" if name == "shards" else f"{t}.json") for t in iou_types}
        metrics = lvis_evaluate_all(gt, sources)
    else:
        metrics = _dict_metrics(name, gt, results, iou_types)
    done = time.perf_counter()
    return {"name": name, "load_s": loaded - start, "eval_s": done - loaded, "rss_imported_mb": rss_imported,
            "rss_loaded_mb": rss_loaded, "peak_rss_mb": _maxrss_mb(), "metrics": metrics}


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


KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


def _report(runs: list[dict[str, Any]], iou_types: list[str]) -> None:
    log.info("%-10s %7s %7s %7s %7s %12s %12s %12s  %s", "evaluator", "images", "load s", "eval s", "total s",
             "RSS imports", "RSS loaded", "peak RSS", "AP / APr / APc / APf per IoU type")
    for r in runs:
        m = "  ".join(f"{t} " + " / ".join(f"{r['metrics'][t][k]:.2f}" for k in ("AP", "APr", "APc", "APf"))
                      for t in iou_types)
        log.info("%-10s %7d %7.1f %7.1f %7.1f %9.0f MB %9.0f MB %9.0f MB  %s", r["name"], r["images"], r["load_s"],
                 r["eval_s"], r["load_s"] + r["eval_s"], r["rss_imported_mb"], r["rss_loaded_mb"], r["peak_rss_mb"], m)


def _compare(runs: list[dict[str, Any]], iou_types: list[str]) -> None:
    """Per set size: each evaluator against the ``lvis`` API run on it (speed ratios, largest metric difference)."""
    for base in (r for r in runs if r["name"] == "lvis"):
        for r in runs:
            if r is base or r["images"] != base["images"]:
                continue
            diff = max(abs(r["metrics"][t][k] - base["metrics"][t][k]) for t in iou_types for k in KEYS
                       if base["metrics"][t][k] is not None)
            log.info("%d images, %s vs lvis API: %.2fx faster end to end (load + evaluation; evaluation alone "
                     "%.2fx); largest metric difference %.2e (percent points, %s)", r["images"], r["name"],
                     _total(base) / _total(r), base["eval_s"] / r["eval_s"], diff, ", ".join(KEYS))


def _total(run: dict[str, Any]) -> float:
    return run["load_s"] + run["eval_s"]


def _extrapolate(runs: list[dict[str, Any]], images: int) -> None:
    """The ``lvis`` API's end-to-end time at ``images``, linear in the images from its fastest per-image rate."""
    api = [r for r in runs if r["name"] == "lvis" and r["images"] != images]
    if not api:
        return
    rate = min(_total(r) / r["images"] for r in api)
    estimate = rate * images
    log.info("lvis API extrapolated to %d images: %.0f s end to end (%.1f s per 1,000 images, the fastest of %s)",
             images, estimate, 1000 * rate, ", ".join(f"{1000 * _total(r) / r['images']:.1f} s at {r['images']}"
                                                       for r in api))
    for r in runs:
        if r["images"] == images and r["name"] in ("ltcls", "shards"):
            log.info("%d images, %s: %.0f s end to end, %.1fx the extrapolated lvis API; peak RSS %.0f MB", images,
                     r["name"], _total(r), estimate / _total(r), r["peak_rss_mb"])


def _runs_on(folder: Path, size: int, iou_types: list[str], args: argparse.Namespace, lvis_path: Path | None,
             main_size: bool) -> list[dict[str, Any]]:
    start = time.perf_counter()
    sizes = write_set(folder, size, iou_types, args.distinct if main_size else None)
    log.info("set: %s (generated in %.0fs); json: %s", sizes, time.perf_counter() - start,
             {p.name: f"{p.stat().st_size / 2**20:.0f} MiB" for p in sorted(folder.glob("*.json"))})
    names = ["ltcls", "shards"] + (["reference"] if args.reference and main_size else []) + \
        (["stock"] if args.stock and main_size else [])
    if lvis_path is not None and (not main_size or not args.lvis_api_sizes):
        names.append("lvis")
    runs = []
    for n in names:
        runs.append({**run_worker(n, folder, iou_types, lvis_path if n == "lvis" else None), "images": size})
        log.info("done: %s", json.dumps(runs[-1]))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--iou-type", default="bbox", help="bbox, segm, both, or a comma-separated list")
    parser.add_argument("--reference", action="store_true", help="also time the pycocotools oracle")
    parser.add_argument("--stock", action="store_true", help="also time faster-coco-eval's COCOeval_faster alone")
    parser.add_argument("--no-lvis-api", action="store_true")
    parser.add_argument("--lvis-api-sizes", type=int, nargs="*", default=[],
                        help="run the lvis API on sets of these sizes instead, extrapolating to --images")
    parser.add_argument("--distinct", type=int, default=None,
                        help="generate this many images for --images and repeat them (ids shifted)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    iou_types = ["bbox", "segm"] if args.iou_type == "both" else args.iou_type.split(",")
    if args.worker:
        print(json.dumps(worker(args.worker, args.folder, iou_types)))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        lvis_path = None if args.no_lvis_api else install_lvis(Path(tmp))
        for size in args.lvis_api_sizes:
            (Path(tmp) / str(size)).mkdir()
            runs += _runs_on(Path(tmp) / str(size), size, iou_types, args, lvis_path, main_size=False)
            shutil.rmtree(Path(tmp) / str(size))
        (Path(tmp) / "main").mkdir()
        runs += _runs_on(Path(tmp) / "main", args.images, iou_types, args, lvis_path, main_size=True)
    _report(runs, iou_types)
    _compare(runs, iou_types)
    _extrapolate(runs, args.images)


if __name__ == "__main__":
    main()
