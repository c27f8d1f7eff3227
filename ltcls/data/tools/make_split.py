"""``ltcls-data make-split``: long-tailed split files from a folder of class folders (Pareto / exp / step
profiles, as ImageNet-LT / Places-LT / CIFAR-LT were made)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ltcls.data.tools.profiles import lt_counts
from ltcls.data.tools.published import CONVENTIONS, group_sizes
from ltcls.io import AtomicFiles

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp", ".gif")
MAKE_SPLIT_PROFILES = ("pareto", "exp", "step")


# ----------------------------------------------------------------------------------------- make-split


def pareto_counts(num_classes: int, alpha: float = 6.0, img_max: int = 1280, img_min: int = 5,
                  seed: int = 0) -> list[int]:
    """Per-class image counts drawn from a Pareto distribution (OLTR's ImageNet-LT / Places-LT procedure):
    ``num_classes`` draws of ``numpy.random.default_rng(seed).pareto(alpha)``, sorted in decreasing order and
    scaled linearly onto ``[img_min, img_max]``, rounded. With alpha = 6 and 1000 classes this gives about
    90k-160k images (seed-dependent; the official ImageNet-LT has 115,846)."""
    if num_classes < 2:
        raise ValueError(f"a long-tailed profile needs at least 2 classes, got {num_classes}")
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    if not 1 <= img_min <= img_max:
        raise ValueError(f"expected 1 <= img_min <= img_max, got img_min {img_min}, img_max {img_max}")
    x = np.sort(np.random.default_rng(seed).pareto(alpha, num_classes))[::-1]
    span = x[0] - x[-1]
    scaled = img_min + (x - x[-1]) / span * (img_max - img_min) if span > 0 else np.full(num_classes, img_max)
    return [int(v) for v in np.rint(scaled)]


def profile_counts(profile: str, num_classes: int, *, alpha: float = 6.0, img_max: int = 1280, img_min: int = 5,
                   imbalance_factor: float | None = None, seed: int = 0) -> list[int]:
    """Per-class counts in decreasing order: ``pareto`` (:func:`pareto_counts`) or LDAM-DRW's ``exp`` / ``step``
    profile (:func:`ltcls.data.tools.profiles.lt_counts`) with ``imbalance_factor`` (default img_max / img_min)."""
    if profile == "pareto":
        return pareto_counts(num_classes, alpha, img_max, img_min, seed)
    if profile in ("exp", "step"):
        return lt_counts(num_classes, imbalance_factor or img_max / img_min, profile, img_max)
    raise ValueError(f"unknown profile '{profile}'; expected one of: {', '.join(MAKE_SPLIT_PROFILES)}")


def assign_counts(counts: Sequence[int], available: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Give each class one of ``counts``: largest count first, each to a random class among those with enough
    images left (succeeds whenever any assignment fits). Returns the count of every class."""
    available = np.asarray(available)
    order = np.argsort(-available, kind="stable")
    out = np.zeros(len(available), dtype=np.int64)
    pool: list[int] = []
    j = 0
    for rank, count in enumerate(sorted(counts, reverse=True)):
        while j < len(order) and available[order[j]] >= count:
            pool.append(int(order[j]))
            j += 1
        if not pool:
            raise ValueError(f"the profile's class #{rank + 1} needs {count} images but only {rank} classes have "
                             f"that many left (after the val images); lower img_max or val_per_class")
        k = int(rng.integers(len(pool)))
        pool[k], pool[-1] = pool[-1], pool[k]
        out[pool.pop()] = count
    return out


def list_class_folders(folder: str) -> dict[str, list[str]]:
    """``{class folder: sorted image file names}`` of a class-folder dataset (class folders sorted)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"class-folder dataset not found: '{folder}'")
    classes = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_dir():
            classes[entry.name] = sorted(f for f in os.listdir(entry.path) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not classes:
        raise ValueError(f"'{folder}' holds no class folders (expected <class>/<image> files)")
    return classes


@dataclass
class MadeSplit:
    """Files written by :func:`make_split` and the per-class counts of each split."""

    files: dict[str, str]
    counts: dict[str, list[int]]
    classes: list[str]


def make_split(root: str, out_dir: str, name: str, train_dir: str = "train", test_dir: str | None = None,
               val_per_class: int = 20, profile: str = "pareto", alpha: float = 6.0, img_max: int = 1280,
               img_min: int = 5, imbalance_factor: float | None = None, seed: int = 0,
               overwrite: bool = False) -> MadeSplit:
    """Regenerate a long-tailed split from the class folders in ``root/train_dir`` (labels = sorted folder
    names), writing ``NAME_{train,val,test}.txt`` (``relative/path label``, paths relative to ``root``) and
    ``NAME_counts.json`` into ``out_dir``.

    Per class, ``val_per_class`` images are set aside for a balanced val split; the train counts follow
    ``profile`` and go to classes at random among those with enough images; each class's images are a
    random subset. A test split lists every image of ``root/test_dir``'s class folders (e.g. ImageNet's
    val/ sorted into class folders). Everything random derives from ``seed``: the same seed and folders
    give byte-identical files.
    """
    classes = list_class_folders(os.path.join(root, train_dir))
    names = list(classes)
    split_rng, assign_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    pools, val_lines = [], []
    for label, cls in enumerate(names):
        files = classes[cls]
        if len(files) <= val_per_class:
            raise ValueError(f"class folder '{os.path.join(root, train_dir, cls)}' has {len(files)} images; needs more "
                             f"than val_per_class ({val_per_class})")
        perm = [files[k] for k in split_rng.permutation(len(files))]
        val_lines += [(label, f"{train_dir}/{cls}/{f}") for f in perm[:val_per_class]]
        pools.append(perm[val_per_class:])
    counts = profile_counts(profile, len(names), alpha=alpha, img_max=img_max, img_min=img_min,
                            imbalance_factor=imbalance_factor, seed=seed)
    per_class = assign_counts(counts, [len(p) for p in pools], assign_rng)
    train_lines = [(label, f"{train_dir}/{names[label]}/{f}") for label, pool in enumerate(pools)
                   for f in pool[:per_class[label]]]
    lines = {"train": train_lines, "val": val_lines}
    if test_dir:
        test_classes = list_class_folders(os.path.join(root, test_dir))
        unknown = sorted(set(test_classes) - set(names))
        if unknown:
            raise ValueError(f"test folder '{os.path.join(root, test_dir)}' has class folders that are not in "
                             f"'{train_dir}': {', '.join(unknown[:5])}")
        label_of = {cls: label for label, cls in enumerate(names)}
        lines["test"] = [(label_of[cls], f"{test_dir}/{cls}/{f}") for cls in test_classes for f in test_classes[cls]]
    if not val_lines:
        del lines["val"]
    files = {split: os.path.join(out_dir, f"{name}_{split}.txt") for split in lines}
    files["counts"] = os.path.join(out_dir, f"{name}_counts.json")
    existing = [p for p in files.values() if os.path.exists(p)]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; pass overwrite (--force) to replace the split files")
    os.makedirs(out_dir, exist_ok=True)
    split_counts, texts = {}, {}
    for split, entries in lines.items():
        entries.sort()
        texts[split] = "".join(f"{path} {label}\n" for label, path in entries)
        split_counts[split] = np.bincount([label for label, _ in entries], minlength=len(names)).tolist()
    summary = {
        "name": name, "root": root, "train_dir": train_dir, "test_dir": test_dir, "seed": seed,
        "profile": profile, "alpha": alpha if profile == "pareto" else None, "img_max": img_max,
        "img_min": img_min if profile == "pareto" else None,
        "imbalance_factor": None if profile == "pareto" else (imbalance_factor or img_max / img_min),
        "val_per_class": val_per_class, "classes": names, "counts": split_counts,
        "totals": {s: int(sum(c)) for s, c in split_counts.items()},
        "groups": {conv: group_sizes(split_counts["train"], conv) for conv in CONVENTIONS},
    }
    texts["counts"] = json.dumps(summary, indent=1) + "\n"
    with AtomicFiles() as out:  # the split files and their counts appear together, or (on failure) none of them
        for split, text in texts.items():
            out.write_text(files[split], text)
    logger.info("make-split %s: %d classes, %s", name, len(names),
                ", ".join(f"{s} {n}" for s, n in summary["totals"].items()))
    return MadeSplit(files, split_counts, names)
