"""``ltcls-data stats``: class-count histograms of a dataset's splits or of one split / annotation file,
compared with the published benchmark splits (no image is opened)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np

from ltcls.data.datasets.inat2018 import read_inat_json
from ltcls.data.datasets.split_file import read_split_file
from ltcls.data.tools.published import CONVENTIONS, PUBLISHED, compare_published, group_of_classes, group_sizes
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



def file_stats(target: str, convention: str = "kang") -> str:
    """Statistics of a config's dataset (``*.yaml``) or of one split / annotation file (``*.txt``,
    ``*.json``); no image is opened (files need not be present)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention '{convention}'; expected one of: {', '.join(CONVENTIONS)}")
    if target.endswith((".yaml", ".yml")):
        raise ValueError(f"{target}: a config file; ltcls-data stats reads configs through ltcls.cli.data")
    benchmark, split = official_file(target)
    if target.endswith(".json"):
        entries, label_of, _ = read_inat_json(target, ".", check_files=False)
        num_classes = len(label_of)
    else:
        entries = read_split_file(target, ".", check_files=False)
        num_classes = entries.class_count()
    counts = {split: np.bincount(entries.labels, minlength=num_classes)}
    title = f"{target}: {split} split" + (f" of {PUBLISHED[benchmark].title}" if benchmark else "")
    return describe_splits(counts, num_classes, benchmark, convention, title)


