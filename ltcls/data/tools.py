"""The logic behind ``ltcls-data``: split statistics (and whether they match the published ones), a parallel
check that every listed image exists and decodes, and regeneration of a long-tailed split from a full
class-folder dataset. No argparse here (that is ``ltcls.data_cli``); functions return text or data.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from ltcls import config as C
from ltcls.data import DATASETS, LTDataset, build_data
from ltcls.data.benchmarks import read_inat_json
from ltcls.data.profiles import lt_counts
from ltcls.data.published import CONVENTIONS, PUBLISHED, compare_published, group_of_classes, group_sizes
from ltcls.data.split_file import FileListDataset, read_split_file
from ltcls.metrics import GROUPS

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: Official split / annotation file names -> (benchmark, role of each split name in ltcls).
_OFFICIAL_FILES: list[tuple[re.Pattern, str, dict[str, str]]] = [
    (re.compile(r"ImageNet_LT_(train|val|test)\.txt$"), "imagenet_lt", {}),
    (re.compile(r"Places_LT_(train|val|test)\.txt$"), "places_lt", {}),
    (re.compile(r"iNaturalist18_(train|val)\.txt$"), "inat2018", {"val": "test"}),
    (re.compile(r"(train|val)2018\.json$"), "inat2018", {"val": "test"}),
]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp", ".gif")
MAKE_SPLIT_PROFILES = ("pareto", "exp", "step")


# ----------------------------------------------------------------------------------------- loading


def load_config(path: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A resolved ltcls config (defaults <- yaml <- overrides), as ``ltcls-train`` reads it."""
    return C.resolve(C.load_yaml(path), overrides, source=path)


def build_config_splits(cfg: Mapping[str, Any], check_files: bool = True) -> dict[str, LTDataset | None]:
    """The train / val / test datasets of a config's ``data`` section. ``check_files=False`` (for datasets
    that take it) skips the existence check of every image at start-up."""
    data = dict(cfg["data"])
    if "check_files" in DATASETS.hyperparams(data["name"]):
        data["check_files"] = check_files
    splits = build_data(data)
    return {s: getattr(splits, s) for s in SPLITS}


def official_file(path: str) -> tuple[str | None, str]:
    """``(benchmark, split)`` of an official split / annotation file name; ``(None, split guess)`` otherwise."""
    name = os.path.basename(path)
    for pattern, benchmark, roles in _OFFICIAL_FILES:
        m = pattern.search(name)
        if m:
            return benchmark, roles.get(m.group(1), m.group(1))
    guess = next((s for s in SPLITS if s in name.lower()), "train")
    return None, guess


# ----------------------------------------------------------------------------------------- stats


def count_histogram(class_counts: Sequence[int], convention: str = "kang", width: int = 40) -> list[str]:
    """Text histogram of classes per training-count bucket (log-spaced buckets whose edges include the
    many / few boundaries of ``convention``, so each bucket lies in one group)."""
    counts = np.asarray(class_counts)
    few_edge, many_edge = (20, 101) if convention == "kang" else (21, 100)
    top = max(int(counts.max()), 1) + 1
    base = [1, 2, 5, 10]
    mult = 10
    while base[-1] < top:
        base += [x * mult for x in (2, 5, 10)]
        mult *= 10
    edges = sorted({e for e in base if e not in (20, 100)} | {few_edge, many_edge})
    edges = [0] + [e for e in edges if e < top] + [top]
    sizes = [int(((counts >= lo) & (counts < hi)).sum()) for lo, hi in zip(edges[:-1], edges[1:])]
    nonzero = [i for i, n in enumerate(sizes) if n]
    if not nonzero:
        return []
    peak = max(sizes)
    lines = []
    for i in range(nonzero[0], nonzero[-1] + 1):
        lo, hi = edges[i], edges[i + 1] - 1
        label = f"{lo}" if lo == hi else f"{lo}-{hi}"
        group = str(group_of_classes([lo], convention)[0]) if lo > 0 else "empty"
        bar = "#" * (max(1, round(width * sizes[i] / peak)) if sizes[i] else 0)
        lines.append(f"  {label:>11} {group:<6} |{bar:<{width}} {sizes[i]:,}")
    return lines


def describe_splits(counts: Mapping[str, np.ndarray], num_classes: int, benchmark: str | None = None,
                    convention: str = "kang", title: str = "") -> str:
    """The ``ltcls-data stats`` report for per-split class counts: a table (classes present, images, max /
    min per class, imbalance factor), many / medium / few of the train split, a histogram, and the
    comparison with the published numbers of ``benchmark``."""
    lines = [title] if title else []
    lines.append(f"{'split':<6} {'classes':>11} {'images':>10} {'max':>6} {'min':>6} {'imbalance':>10}")
    for name, c in counts.items():
        present = c[c > 0]
        ratio = f"{present.max() / present.min():.1f}" if present.size else "-"
        lines.append(f"{name:<6} {f'{present.size}/{num_classes}':>11} {int(c.sum()):>10,} {int(c.max()):>6} "
                     f"{int(c.min()):>6} {ratio:>10}")
    if "train" in counts:
        train = counts["train"]
        sizes = group_sizes(train, convention)
        lines.append(f"many / medium / few classes (train counts; {CONVENTIONS[convention]}): "
                     + " / ".join(str(sizes[g]) for g in GROUPS))
        lines.append("train classes per image-count bucket:")
        lines += count_histogram(train, convention)
    if benchmark is not None and benchmark in PUBLISHED:
        lines += _published_lines(counts, num_classes, benchmark, convention)
    return "\n".join(lines)


def _published_lines(counts: Mapping[str, np.ndarray], num_classes: int, benchmark: str,
                     convention: str) -> list[str]:
    pub = PUBLISHED[benchmark]
    lines, all_match, compared = [f"published {pub.title} numbers (REFERENCE.md):"], True, 0
    for name, c in counts.items():
        result = compare_published(benchmark, name, c, num_classes, convention)
        if result is None:
            continue
        compared += 1
        label = pub.split_names.get(name, name)
        ok, diffs = result
        all_match &= ok
        want = pub.splits[name]
        lines.append(f"  {label}: " + (f"matches ({want.images:,} images, max {want.max_per_class}, min "
                                       f"{want.min_per_class})" if ok else "DIFFERS: " + "; ".join(diffs)))
    if "train" in counts and pub.groups is not None and convention != "kang":
        lines.append("  (published many/medium/few use Kang et al.'s convention; not compared under "
                     f"'{convention}')")
    if compared:
        verdict = "matches" if all_match else "DIFFERS from"
        lines.append(f"=> {verdict} the published {pub.title} " + ("split" if compared == 1 else "splits")
                     + ("" if all_match else " (not the official split files, or a modified copy?)"))
    return lines


def stats(target: str, overrides: Sequence[str] = (), convention: str = "kang") -> str:
    """Statistics of a config's dataset (``*.yaml``) or of one split / annotation file (``*.txt``,
    ``*.json``); no image is opened (files need not be present)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention '{convention}'; expected one of: {', '.join(CONVENTIONS)}")
    if target.endswith((".yaml", ".yml")):
        cfg = load_config(target, overrides)
        splits = build_config_splits(cfg, check_files=False)
        name = cfg["data"]["name"]
        num_classes = splits["train"].num_classes
        counts = {s: d.class_counts for s, d in splits.items() if d is not None}
        return describe_splits(counts, num_classes, name if name in PUBLISHED else None, convention,
                               f"{target}: dataset '{name}'")
    if overrides:
        raise ValueError("--set applies to a config file, not to a split file")
    benchmark, split = official_file(target)
    if target.endswith(".json"):
        entries, label_of, _ = read_inat_json(target, ".", check_files=False)
        num_classes = len(label_of)
    else:
        entries = read_split_file(target, ".", check_files=False)
        num_classes = int(entries.labels.max()) + 1
    counts = {split: np.bincount(entries.labels, minlength=num_classes)}
    title = f"{target}: {split} split" + (f" of {PUBLISHED[benchmark].title}" if benchmark else "")
    return describe_splits(counts, num_classes, benchmark, convention, title)


# ----------------------------------------------------------------------------------------- verify


@dataclass
class Problem:
    """One bad entry: ``kind`` is ``missing``, ``unreadable`` or ``label`` (errors), or ``duplicate`` (an image
    listed more than once) or ``empty`` (a class without a training image; ``index`` is the class): warnings."""

    kind: str
    split: str
    index: int
    where: str | None
    path: str
    detail: str


_KIND_TITLES = {"missing": "MISSING: {n} image(s) not found under data.root",
                "unreadable": "UNREADABLE: {n} image(s) cannot be opened or decoded",
                "label": "LABEL: {n} label(s) out of range",
                "duplicate": "DUPLICATE (warning): {n} image(s) listed more than once, each copy counted as a sample",
                "empty": "EMPTY CLASS (warning): {n} class(es) without a training image"}
#: Kinds that are reported but do not fail ``verify``.
WARNING_KINDS = ("duplicate", "empty")


@dataclass
class VerifyReport:
    """What :func:`verify` found; ``format`` groups the problems by kind (first ``show`` of each)."""

    listed: dict[str, int]
    problems: list[Problem] = field(default_factory=list)
    in_memory: list[str] = field(default_factory=list)
    workers: int = 1

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.kind not in WARNING_KINDS]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.kind in WARNING_KINDS]

    @property
    def ok(self) -> bool:
        """No error (warnings allowed)."""
        return not self.errors

    def format(self, show: int = 10) -> str:
        total = sum(self.listed.values())
        parts = ", ".join(f"{s} {n:,}" for s, n in self.listed.items())
        lines = [f"checked {total:,} listed images ({parts}) with {self.workers} threads"] if self.listed else []
        if self.in_memory:
            lines.append(f"in-memory splits (no image files to check): {', '.join(self.in_memory)}")
        for kind, title in _KIND_TITLES.items():
            found = [p for p in self.problems if p.kind == kind]
            if not found:
                continue
            lines.append(title.format(n=f"{len(found):,}"))
            for p in found[:show]:
                detail = f": {p.detail}" if p.detail else ""
                lines.append(f"  {p.where or f'{p.split} #{p.index}'}: {p.path}{detail}")
            if len(found) > show:
                lines.append(f"  ... and {len(found) - show:,} more ({len(found):,} in all)")
        bad = len({(p.split, p.index) for p in self.errors})
        warned = f" ({len(self.warnings):,} warning(s) above)" if self.warnings else ""
        lines.append(f"OK: every listed image exists and decodes, and every label is in range{warned}" if self.ok
                     else f"FAILED: {bad:,} of {total:,} listed entries have problems{warned}")
        return "\n".join(lines)


def check_image(path: str) -> tuple[str, str] | None:
    """None if ``path`` opens and decodes in full; else ``('missing' | 'unreadable', detail)``."""
    try:
        with Image.open(path) as img:
            img.load()
    except FileNotFoundError:
        return "missing", ""
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... for corrupt files
        return "unreadable", f"{type(err).__name__}: {err}"
    return None


def _check_chunk(paths: Sequence[str]) -> list[tuple[str, str] | None]:
    return [check_image(p) for p in paths]


def verify(splits: Mapping[str, LTDataset | None], workers: int | None = None, progress: bool = True,
           chunk: int = 64) -> VerifyReport:
    """Check every listed image of file-based splits (exists under root, decodes in full) with ``workers``
    threads (PIL decodes without holding the GIL), and that every label is in ``0..num_classes-1``."""
    workers = workers or os.cpu_count() or 1
    report = VerifyReport(listed={}, workers=workers)
    jobs: list[tuple[str, FileListDataset, int]] = []
    for name, ds in splits.items():
        if ds is None:
            continue
        bad = np.flatnonzero((ds.targets < 0) | (ds.targets >= ds.num_classes))
        for i in bad.tolist():
            where = ds.where(i) if isinstance(ds, FileListDataset) else None
            path = ds.paths[i] if isinstance(ds, FileListDataset) else ""
            report.problems.append(Problem("label", name, i, where, path,
                                           f"label {int(ds.targets[i])} not in 0..{ds.num_classes - 1}"))
        if name == "train":
            for c in np.flatnonzero(ds.class_counts == 0).tolist():
                source = ds.source if isinstance(ds, FileListDataset) else None
                label = f"class {c}" + (f" ({ds.classes[c]})" if ds.classes[c] != str(c) else "")
                report.problems.append(Problem("empty", name, c, source, label, ""))
        if not isinstance(ds, FileListDataset):
            report.in_memory.append(name)
            continue
        report.problems += duplicate_problems(name, ds)
        report.listed[name] = len(ds)
        jobs += [(name, ds, i) for i in range(len(ds))]
    chunks = [jobs[k:k + chunk] for k in range(0, len(jobs), chunk)]
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(jobs), desc="verify", unit="img", disable=not progress or not jobs) as bar:
        paths = ([os.path.join(ds.root, ds.paths[i]) for _, ds, i in c] for c in chunks)
        for c, results in zip(chunks, pool.map(_check_chunk, paths)):
            for (name, ds, i), result in zip(c, results):
                if result is not None:
                    report.problems.append(Problem(result[0], name, i, ds.where(i), ds.paths[i], result[1]))
            bar.update(len(c))
    order = {s: k for k, s in enumerate(splits)}
    report.problems.sort(key=lambda p: (order[p.split], p.index))
    return report


def duplicate_problems(name: str, ds: FileListDataset) -> list[Problem]:
    """One ``duplicate`` problem per image that split ``name`` lists more than once (same normalized path),
    at its first entry, with where every copy is (and the labels when the copies disagree)."""
    by_path: dict[str, list[int]] = {}
    for i, rel in enumerate(ds.paths):
        by_path.setdefault(os.path.normpath(rel), []).append(i)
    problems = []
    for copies in (c for c in by_path.values() if len(c) > 1):
        at = ", ".join((ds.where(i) or f"#{i}").replace(ds.source or "", "", 1).strip() for i in copies)
        labels = sorted({int(ds.targets[i]) for i in copies})
        clash = f", with different labels {', '.join(map(str, labels))}" if len(labels) > 1 else ""
        problems.append(Problem("duplicate", name, copies[0], ds.where(copies[0]), ds.paths[copies[0]],
                                f"listed {len(copies)} times (at {at}){clash}"))
    return problems


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
    profile (:func:`ltcls.data.profiles.lt_counts`) with ``imbalance_factor`` (default img_max / img_min)."""
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
    split_counts = {}
    for split, entries in lines.items():
        entries.sort()
        with open(files[split], "w", encoding="utf-8") as f:
            f.writelines(f"{path} {label}\n" for label, path in entries)
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
    with open(files["counts"], "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    logger.info("make-split %s: %d classes, %s", name, len(names),
                ", ".join(f"{s} {n}" for s, n in summary["totals"].items()))
    return MadeSplit(files, split_counts, names)
