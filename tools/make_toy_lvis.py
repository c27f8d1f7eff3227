"""Write a small LVIS-v1-format dataset of simple shapes, so that every detection path of ltcls can run on a CPU.

    python tools/make_toy_lvis.py data/toy_lvis            # 200 train + 48 val images of 128 x 128
    ltcls-train --config configs/toy_lvis_seesaw.yaml      # then train / evaluate on it

Layout (the same as COCO 2017 + LVIS v1, so a config switches to the real data by changing paths)::

    OUT/train2017/000000000001.jpg ...                 images; the path comes from each image's coco_url
    OUT/val2017/000000100001.jpg ...                   (a few val images live in train2017, as in LVIS v1 val)
    OUT/annotations/lvis_v1_train.json
    OUT/annotations/lvis_v1_val.json

Eight categories (a colour and a shape each) with a long-tailed number of training images, so that the
LVIS frequency groups exist: 2 frequent (> 100 images), 3 common (11-100), 3 rare (1-10). Objects sit in
the cells of a 3 x 3 or 2 x 2 grid, or alone (small, medium and large objects), so their polygon masks
never overlap and are exact. Every image lists ``neg_category_ids`` (verified absent) and some list a
present category in ``not_exhaustive_category_ids``: such an image holds one more instance of it that is
drawn but not annotated, as in LVIS. Importable: :func:`make_toy_lvis` returns the paths it wrote.

For a long-tailed set with enough categories for APr / APc / APf to mean something (36 categories, 10 rare / 14
common / 12 frequent), use ``ltcls-data make-shapes-lvis`` (:mod:`ltcls.detection.shapes_lvis`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from ltcls.detection.shapes_lvis import lvis_frequency

log = logging.getLogger("make_toy_lvis")

#: (name, RGB colour, shape) of each category; ids are 1..8 in this order.
CATEGORIES = [
    ("red_circle", (220, 40, 40), "circle"),
    ("green_square", (40, 180, 60), "square"),
    ("blue_triangle", (50, 70, 220), "triangle"),
    ("yellow_diamond", (230, 210, 40), "diamond"),
    ("magenta_hexagon", (200, 50, 200), "hexagon"),
    ("cyan_circle", (40, 200, 210), "circle"),
    ("orange_square", (240, 140, 30), "square"),
    ("white_triangle", (245, 245, 245), "triangle"),
]
#: Training images per category (with 200 train images): f f c c c r r r under LVIS's rule.
TRAIN_IMAGE_COUNTS = (150, 110, 60, 35, 15, 8, 5, 3)
GRID = 3


def _polygon(shape: str, cx: float, cy: float, r: float, rng: np.random.Generator) -> list[float]:
    """Vertices ``[x1, y1, x2, y2, ...]`` of a shape of circumradius ``r`` centred at (cx, cy)."""
    sides = {"circle": 24, "square": 4, "triangle": 3, "diamond": 4, "hexagon": 6}[shape]
    start = {"square": math.pi / 4, "diamond": 0.0, "triangle": -math.pi / 2}.get(shape, 0.0)
    start += float(rng.uniform(-0.15, 0.15))
    angles = start + 2 * math.pi * np.arange(sides) / sides
    pts = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)
    return [round(float(v), 2) for v in pts.reshape(-1)]


def _draw_image(size: int, objects: list[tuple[int, bool]], rng: np.random.Generator
                ) -> tuple[Image.Image, list[tuple[int, list[float]]]]:
    """Draw ``objects`` ((category index, annotated)) into grid cells; returns the image and annotated polygons."""
    base = rng.integers(70, 130, size=3)
    noise = rng.integers(-12, 13, size=(size, size, 3))
    img = Image.fromarray(np.clip(base[None, None] + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    anns = []
    large = len(objects) == 1 and rng.random() < 0.5
    side = 1 if large else (2 if len(objects) <= 4 else GRID)  # fewer objects: bigger cells (s / m / l sizes)
    cells = [tuple(c) for c in rng.permutation([(i, j) for i in range(side) for j in range(side)])]
    cell = size / side
    for (cat, annotated), (ci, cj) in zip(objects, cells):
        r = cell / 2 * float(rng.uniform(0.8, 0.98) if large else rng.uniform(0.6, 0.9))
        slack = cell / 2 - r
        cx = (ci + 0.5) * cell + float(rng.uniform(-slack, slack))
        cy = (cj + 0.5) * cell + float(rng.uniform(-slack, slack))
        poly = _polygon(CATEGORIES[cat][2], cx, cy, r, rng)
        draw.polygon(poly, fill=CATEGORIES[cat][1])
        if annotated:
            anns.append((cat, poly))
    return img, anns


def _split(out: Path, split: str, image_cats: list[list[int]], first_id: int, size: int, rng: np.random.Generator,
           train_folder_every: int = 0) -> tuple[list[dict], list[dict]]:
    """Images and annotations of one split; ``image_cats[i]`` lists the categories present in image i."""
    images, anns = [], []
    num_cats = len(CATEGORIES)
    for i, cats in enumerate(image_cats):
        image_id = first_id + i
        folder = "train2017" if split == "train" or (train_folder_every and i % train_folder_every == 0) else "val2017"
        objects: list[tuple[int, bool]] = []
        for c in cats:
            objects += [(c, True)] * int(rng.integers(1, 3))
        objects = objects[: GRID * GRID]
        not_exhaustive: list[int] = []
        if cats and len(objects) < GRID * GRID and rng.random() < 0.2:
            c = int(rng.choice(cats))  # one more instance of c, drawn but not annotated
            objects.append((c, False))
            not_exhaustive.append(c + 1)
        img, polys = _draw_image(size, objects, rng)
        name = f"{image_id:012d}.jpg"
        (out / folder).mkdir(parents=True, exist_ok=True)
        img.save(out / folder / name, quality=95)
        absent = [c + 1 for c in range(num_cats) if c not in cats]
        neg = sorted(int(c) for c in rng.choice(absent, size=len(absent) // 2 + len(absent) % 2, replace=False)) \
            if absent else []
        images.append({"id": image_id, "coco_url": f"http://images.cocodataset.org/{folder}/{name}",
                       "flickr_url": "", "license": 1, "date_captured": "2013-11-14 11:18:45",
                       "height": size, "width": size, "neg_category_ids": neg,
                       "not_exhaustive_category_ids": not_exhaustive})
        for cat, poly in polys:
            rle = mask_utils.frPyObjects([poly], size, size)
            xs, ys = poly[0::2], poly[1::2]
            bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            anns.append({"id": 0, "image_id": image_id, "category_id": cat + 1, "segmentation": [poly],
                         "bbox": [round(v, 2) for v in bbox], "area": float(mask_utils.area(rle)[0])})
    return images, anns


def _assign(num_images: int, counts: list[int], rng: np.random.Generator) -> list[list[int]]:
    """Categories of each image such that category c is in exactly ``counts[c]`` images."""
    cats: list[list[int]] = [[] for _ in range(num_images)]
    for c, n in enumerate(counts):
        for i in rng.choice(num_images, size=min(n, num_images), replace=False):
            cats[int(i)].append(c)
    return [sorted(c) for c in cats]


def make_toy_lvis(out: str | Path, num_train: int = 200, num_val: int = 48, image_size: int = 128,
                  seed: int = 0) -> dict[str, Path]:
    """Write the toy dataset under ``out``; returns ``{"root", "train_ann", "val_ann"}``."""
    out = Path(out)
    if image_size < 48:
        raise ValueError(f"image_size must be >= 48 (objects live in a 3 x 3 grid), got {image_size}")
    rng = np.random.default_rng(seed)
    scale = num_train / 200
    train_counts = [max(1, round(n * scale)) for n in TRAIN_IMAGE_COUNTS]
    # Validation: every category in a few images, more often than its training frequency for the tail.
    val_counts = [max(3, round(num_val * min(0.6, n / num_train + 0.1))) for n in train_counts]
    train_images, train_anns = _split(out, "train", _assign(num_train, train_counts, rng), 1, image_size, rng)
    val_images, val_anns = _split(out, "val", _assign(num_val, val_counts, rng), 100_001, image_size, rng,
                                  train_folder_every=6)
    for i, ann in enumerate(train_anns + val_anns):
        ann["id"] = i + 1
    categories = []
    for c, (name, _, shape) in enumerate(CATEGORIES):
        image_count = len({a["image_id"] for a in train_anns if a["category_id"] == c + 1})
        instance_count = sum(a["category_id"] == c + 1 for a in train_anns)
        categories.append({"id": c + 1, "name": name, "synset": f"{shape}.n.01", "synonyms": [name],
                           "def": f"a {name.replace('_', ' ')}", "frequency": lvis_frequency(image_count),
                           "image_count": image_count, "instance_count": instance_count})
    info = {"description": "ltcls toy LVIS (shapes)", "version": "1.0", "year": 2024}
    paths = {"root": out, "train_ann": out / "annotations" / "lvis_v1_train.json",
             "val_ann": out / "annotations" / "lvis_v1_val.json"}
    paths["train_ann"].parent.mkdir(parents=True, exist_ok=True)
    for key, images, anns in (("train_ann", train_images, train_anns), ("val_ann", val_images, val_anns)):
        data = {"info": info, "licenses": [{"id": 1, "name": "CC BY 4.0", "url": ""}], "images": images,
                "annotations": anns, "categories": categories}
        paths[key].write_text(json.dumps(data))
    log.info("toy LVIS: %d train / %d val images, %d / %d instances, frequencies %s -> %s", len(train_images),
             len(val_images), len(train_anns), len(val_anns), "".join(c["frequency"] for c in categories), out)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="output folder (the data.root of a config)")
    parser.add_argument("--train", type=int, default=200, help="number of training images (default 200)")
    parser.add_argument("--val", type=int, default=48, help="number of validation images (default 48)")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    make_toy_lvis(args.out, args.train, args.val, args.size, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
