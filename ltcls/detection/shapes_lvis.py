"""shapes-LVIS: a generated long-tailed instance segmentation set in LVIS v1 format (``ltcls-data make-shapes-lvis``).

36 categories, each a shape (circle, triangle, square, star, cross, hexagon) in a colour (red, green, blue,
yellow, magenta, cyan): a category is a conjunction of the two, so no single cue names it and a rare red star
must be told from the frequent red circles and blue stars around it. Objects are filled polygons (exact
instance masks) with random size, rotation and colour jitter on a noisy background, up to 9 per image.

The training split is long-tailed by **image count**, in LVIS's frequency groups and roughly LVIS v1's
proportions (337 / 461 / 405 of 1203): 10 rare categories (1-10 training images), 14 common (11-100) and 12
frequent (> 100). Which (shape, colour) pairs fall in which group is a Latin square under a seeded shuffle, so
every shape and every colour has 2 frequent categories and at most 2 rare ones. The val split shows every
category in at least ``VAL_MIN_IMAGES`` images (frequent ones in a tenth of their training count, if more), so
APr / APc / APf are each a mean over 10-14 categories of a few dozen instances.

LVIS's fields and layout (:func:`make_shapes_lvis`): ``OUT/train2017/*.jpg``, ``OUT/val2017/*.jpg`` (every
sixth val image in ``train2017/``, as LVIS v1 val draws from both COCO folders), ``coco_url`` naming them,
``OUT/annotations/lvis_v1_{train,val}.json`` with ``neg_category_ids`` (val: every category absent from the
image, so each category's AP counts its false positives on every val image; train: a random half of them),
``not_exhaustive_category_ids`` (about one image in ten holds an extra instance of a present category that is
drawn but not annotated, and lists that category), polygon ``segmentation``, ``bbox``, ``area``, and
categories with ``frequency``, ``image_count`` and ``instance_count`` counted on the training split.
Deterministic: the same seed writes the same json and the same image bytes.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from ltcls.io import atomic_write, atomic_write_text

log = logging.getLogger("ltcls")

SHAPES = ("circle", "triangle", "square", "star", "cross", "hexagon")
COLORS = {"red": (215, 45, 45), "green": (45, 170, 65), "blue": (50, 80, 215), "yellow": (225, 205, 45),
          "magenta": (195, 60, 195), "cyan": (50, 195, 205)}
#: Training images per category in each LVIS frequency group, most frequent first (12 f, 14 c, 10 r).
FREQUENT_COUNTS = tuple(int(v) for v in np.rint(np.geomspace(240, 110, 12)))
COMMON_COUNTS = tuple(int(v) for v in np.rint(np.geomspace(90, 12, 14)))
RARE_COUNTS = tuple(int(v) for v in np.rint(np.geomspace(10, 1, 10)))
#: Every category is in at least this many val images.
VAL_MIN_IMAGES = 12
#: At most this many categories and objects in one image (objects sit in the cells of a 3 x 3 grid).
MAX_CATEGORIES_PER_IMAGE = 6
MAX_OBJECTS = 9
#: Mean categories per image; sets the number of images from the total category-image pairs of a split.
MEAN_CATEGORIES_PER_IMAGE = 4.5
#: Share of images with an extra, unannotated instance of a present category (``not_exhaustive_category_ids``).
NOT_EXHAUSTIVE_RATE = 0.1
VAL_FIRST_ID = 1_000_001


def lvis_frequency(image_count: int) -> str:
    """LVIS's frequency group of a category from its number of training images: r 1-10, c 11-100, f > 100."""
    if image_count <= 10:
        return "r"
    return "c" if image_count <= 100 else "f"


@dataclass(frozen=True)
class Category:
    id: int
    shape: str
    color: str
    train_images: int

    @property
    def name(self) -> str:
        return f"{self.color}_{self.shape}"


@dataclass(frozen=True)
class ShapesLVISPaths:
    """What :func:`make_shapes_lvis` wrote: ``root`` (``data.root``), the two annotation files."""

    root: Path
    train_ann: Path
    val_ann: Path


def shapes_categories(seed: int = 0) -> list[Category]:
    """The 36 categories (ids 1..36 in shape-major order) with their training image counts.

    Group of (shape s, colour k): the Latin square ``(s + k) mod 6`` with shuffled rows and columns; values 0-1
    are frequent, 2-3 common, and of values 4-5 two (drawn) are common and ten rare. Within a group the counts
    of :data:`FREQUENT_COUNTS` / ... go to its categories in a random order.
    """
    rng = np.random.default_rng([seed, 1])
    rows, cols = rng.permutation(len(SHAPES)), rng.permutation(len(COLORS))
    level = (rows[:, None] + cols[None, :]) % len(SHAPES)  # (shape, colour) -> 0..5
    order = np.lexsort((rng.random(level.size), level.reshape(-1)))  # cells by level, random within a level
    counts = np.empty(level.size, dtype=np.int64)
    counts[order] = FREQUENT_COUNTS + COMMON_COUNTS + RARE_COUNTS
    for start, size in ((0, len(FREQUENT_COUNTS)), (len(FREQUENT_COUNTS), len(COMMON_COUNTS)),
                        (len(FREQUENT_COUNTS) + len(COMMON_COUNTS), len(RARE_COUNTS))):
        cells = order[start:start + size]
        counts[cells] = rng.permutation(counts[cells])
    colors = list(COLORS)
    return [Category(i + 1, SHAPES[i // len(colors)], colors[i % len(colors)], int(counts[i]))
            for i in range(level.size)]


def assign_categories(counts: Sequence[int], num_images: int, rng: np.random.Generator,
                      max_per_image: int = MAX_CATEGORIES_PER_IMAGE) -> list[list[int]]:
    """Category indices of each image such that category c is in exactly ``counts[c]`` images and no image has
    more than ``max_per_image``: most frequent category first, each into images drawn with weights favouring
    the emptier ones."""
    load = np.zeros(num_images, dtype=np.int64)
    cats: list[list[int]] = [[] for _ in range(num_images)]
    for c in np.argsort(-np.asarray(counts), kind="stable"):
        free = np.flatnonzero(load < max_per_image)
        if len(free) < counts[c]:
            raise ValueError(f"{num_images} images cannot hold category {c} in {counts[c]} images "
                             f"at {max_per_image} categories per image")
        weight = (max_per_image - load[free]).astype(np.float64) ** 2
        for i in rng.choice(free, size=int(counts[c]), replace=False, p=weight / weight.sum()):
            cats[int(i)].append(int(c))
            load[i] += 1
    return [sorted(c) for c in cats if c]


def shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[float]:
    """Vertices ``[x1, y1, x2, y2, ...]`` of ``shape`` of circumradius ``r`` centred at (cx, cy), rotated."""
    if shape == "star":
        radii = np.tile([r, 0.45 * r], 5)
    elif shape == "cross":  # a plus sign: arms of half-width w whose corners lie on the circle of radius r
        w, a = 0.36 * r, math.sqrt(1 - 0.36**2) * r
        pts = np.array([(w, a), (w, w), (a, w), (a, -w), (w, -w), (w, -a), (-w, -a), (-w, -w), (-a, -w), (-a, w),
                        (-w, w), (-w, a)])
        radii, base = np.hypot(pts[:, 0], pts[:, 1]), np.arctan2(pts[:, 1], pts[:, 0])
    else:
        radii = np.full({"circle": 24, "triangle": 3, "square": 4, "hexagon": 6}[shape], r)
    if shape != "cross":
        base = 2 * math.pi * np.arange(len(radii)) / len(radii)
    theta = base + angle
    xy = np.stack([cx + radii * np.cos(theta), cy + radii * np.sin(theta)], axis=1)
    return [round(float(v), 2) for v in xy.reshape(-1)]


def _draw(size: int, objects: list[tuple[Category, bool]], rng: np.random.Generator
          ) -> tuple[Image.Image, list[tuple[Category, list[float]]]]:
    """An image of ``objects`` ((category, annotated)) in grid cells; the annotated ones' polygons."""
    base = rng.integers(60, 140, size=3)
    noise = rng.integers(-14, 15, size=(size, size, 3))
    img = Image.fromarray(np.clip(base[None, None] + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    large = len(objects) == 1 and rng.random() < 0.5
    side = 1 if large else (2 if len(objects) <= 4 else 3)  # fewer objects, bigger cells: small / medium / large
    cells = rng.permutation(side * side)[:len(objects)]
    cell = size / side
    polygons = []
    for (cat, annotated), k in zip(objects, cells):
        r = cell / 2 * float(rng.uniform(0.75, 0.95) if large else rng.uniform(0.55, 0.92))
        slack = cell / 2 - r
        cx = (k % side + 0.5) * cell + float(rng.uniform(-slack, slack))
        cy = (k // side + 0.5) * cell + float(rng.uniform(-slack, slack))
        poly = shape_polygon(cat.shape, cx, cy, r, float(rng.uniform(0, 2 * math.pi)))
        color = np.clip(np.array(COLORS[cat.color]) + rng.integers(-20, 21, size=3), 0, 255)
        draw.polygon(poly, fill=tuple(int(v) for v in color))
        if annotated:
            polygons.append((cat, poly))
    return img, polygons


def _objects(cats: list[Category], rng: np.random.Generator) -> tuple[list[tuple[Category, bool]], list[int]]:
    """The objects of one image: 1-3 instances of each category (at most :data:`MAX_OBJECTS`), and sometimes
    one more, unannotated instance of a present category (returned as the not-exhaustive list)."""
    extra = [int(rng.binomial(2, 0.25)) for _ in cats]
    while len(cats) + sum(extra) > MAX_OBJECTS:
        extra[int(np.argmax(extra))] -= 1
    objects = [(c, True) for c, n in zip(cats, extra) for _ in range(1 + n)]
    not_exhaustive = []
    if len(objects) < MAX_OBJECTS and rng.random() < NOT_EXHAUSTIVE_RATE:
        hidden = cats[int(rng.integers(len(cats)))]
        objects.append((hidden, False))
        not_exhaustive.append(hidden.id)
    return [objects[i] for i in rng.permutation(len(objects))], not_exhaustive


def _save_jpeg(img: Image.Image, path: Path) -> None:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    atomic_write(path, lambda tmp: tmp.write_bytes(buf.getvalue()))


def _split(out: Path, split: str, image_cats: list[list[int]], categories: list[Category], first_id: int,
           size: int, rng: np.random.Generator) -> tuple[list[dict], list[dict]]:
    """Draw and save the images of one split; its LVIS ``images`` and ``annotations`` (ids set later)."""
    images: list[dict] = []
    anns: list[dict] = []
    all_ids = np.array([c.id for c in categories])
    for folder in ("train2017", "val2017"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    for i, cat_idx in enumerate(image_cats):
        image_id = first_id + i
        folder = "train2017" if split == "train" or i % 6 == 0 else "val2017"
        objects, not_exhaustive = _objects([categories[c] for c in cat_idx], rng)
        img, polygons = _draw(size, objects, rng)
        name = f"{image_id:012d}.jpg"
        _save_jpeg(img, out / folder / name)
        absent = np.setdiff1d(all_ids, [categories[c].id for c in cat_idx])
        neg = absent if split == "val" else np.sort(rng.choice(absent, size=(len(absent) + 1) // 2, replace=False))
        images.append({"id": image_id, "coco_url": f"http://images.cocodataset.org/{folder}/{name}",
                       "flickr_url": "", "license": 1, "date_captured": "2024-01-01 00:00:00",
                       "height": size, "width": size, "neg_category_ids": [int(c) for c in neg],
                       "not_exhaustive_category_ids": not_exhaustive})
        for cat, poly in polygons:
            xs, ys = poly[0::2], poly[1::2]
            x0, y0 = max(min(xs), 0.0), max(min(ys), 0.0)
            bbox = [x0, y0, min(max(xs), size) - x0, min(max(ys), size) - y0]
            area = float(mask_utils.area(mask_utils.frPyObjects([poly], size, size))[0])
            anns.append({"id": 0, "image_id": image_id, "category_id": cat.id, "segmentation": [poly],
                         "bbox": [round(v, 2) for v in bbox], "area": area})
    return images, anns


def val_image_counts(categories: Sequence[Category]) -> list[int]:
    """Val images per category: a tenth of its training images, at least :data:`VAL_MIN_IMAGES`."""
    return [max(VAL_MIN_IMAGES, round(c.train_images / 10)) for c in categories]


def _num_images(counts: Sequence[int]) -> int:
    return max(math.ceil(sum(counts) / MEAN_CATEGORIES_PER_IMAGE), max(counts))


def _lvis_json(images: list[dict], anns: list[dict], categories: list[dict]) -> str:
    return json.dumps({"info": {"description": "ltcls shapes-LVIS (generated long-tailed LVIS-format shapes)",
                                "version": "1.0", "year": 2024},
                       "licenses": [{"id": 1, "name": "CC BY 4.0", "url": ""}], "images": images,
                       "annotations": anns, "categories": categories})


def make_shapes_lvis(out: str | Path, seed: int = 0, image_size: int = 128, overwrite: bool = False
                     ) -> ShapesLVISPaths:
    """Write shapes-LVIS (module docstring) under ``out``: images and the two LVIS json files.

    Refuses (FileExistsError) to write over an existing ``annotations/lvis_v1_train.json`` unless ``overwrite``.
    """
    out = Path(out)
    if image_size < 64:
        raise ValueError(f"image_size must be >= 64 (up to 9 objects in a 3 x 3 grid), got {image_size}")
    paths = ShapesLVISPaths(out, out / "annotations" / "lvis_v1_train.json", out / "annotations" / "lvis_v1_val.json")
    if paths.train_ann.exists() and not overwrite:
        raise FileExistsError(f"{paths.train_ann} exists; choose another folder or overwrite it (--force)")
    categories = shapes_categories(seed)
    rng = np.random.default_rng([seed, 2])
    train_counts = [c.train_images for c in categories]
    val_counts = val_image_counts(categories)
    train = _split(out, "train", assign_categories(train_counts, _num_images(train_counts), rng), categories, 1,
                   image_size, rng)
    val = _split(out, "val", assign_categories(val_counts, _num_images(val_counts), rng), categories, VAL_FIRST_ID,
                 image_size, rng)
    for i, ann in enumerate(train[1] + val[1]):
        ann["id"] = i + 1
    image_count = {c.id: 0 for c in categories}
    instance_count = dict(image_count)
    for cid, _ in {(a["category_id"], a["image_id"]) for a in train[1]}:
        image_count[cid] += 1
    for a in train[1]:
        instance_count[a["category_id"]] += 1
    cats = [{"id": c.id, "name": c.name, "synset": f"{c.name}.n.01", "synonyms": [c.name],
             "def": f"a {c.color} {c.shape}", "frequency": lvis_frequency(image_count[c.id]),
             "image_count": image_count[c.id], "instance_count": instance_count[c.id]} for c in categories]
    paths.train_ann.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(paths.val_ann, _lvis_json(*val, cats))
    atomic_write_text(paths.train_ann, _lvis_json(*train, cats))  # last: its presence marks a finished set
    groups = {f: sum(c["frequency"] == f for c in cats) for f in "rcf"}
    log.info("shapes-LVIS: %d train / %d val images, %d / %d instances, %d categories (%d r / %d c / %d f) -> %s",
             len(train[0]), len(val[0]), len(train[1]), len(val[1]), len(cats), groups["r"], groups["c"],
             groups["f"], out)
    return paths
