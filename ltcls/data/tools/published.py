"""Published split statistics of the long-tailed benchmarks (REFERENCE.md, "Datasets"), the two
many / medium / few conventions, and the comparison ``ltcls-data stats`` and the builders report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ltcls.metrics import GROUPS, shot_groups

#: Many / medium / few from training counts. Kang et al. (the default, as in ltcls.metrics): many > 100,
#: few < 20. OLTR (Liu et al.): many >= 100, few <= 20.
CONVENTIONS: dict[str, str] = {"kang": "many > 100, few < 20 (Kang et al.)",
                               "oltr": "many >= 100, few <= 20 (Liu et al., OLTR)"}


def group_of_classes(class_counts: Sequence[int], convention: str = "kang", many: int = 100,
                     few: int = 20) -> np.ndarray:
    """Group name (``'many'``, ``'medium'``, ``'few'``) of every class from its training count.

    ``kang`` is :func:`ltcls.metrics.shot_groups` itself; ``oltr`` includes the thresholds in the outer
    groups, which for integer counts is the Kang rule with ``many - 1`` and ``few + 1``.
    """
    if convention == "kang":
        return shot_groups(class_counts, many, few)
    if convention == "oltr":
        return shot_groups(class_counts, many - 1, few + 1)
    raise ValueError(f"unknown many/medium/few convention '{convention}'; expected one of: {', '.join(CONVENTIONS)}")


def group_sizes(class_counts: Sequence[int], convention: str = "kang") -> dict[str, int]:
    """Number of classes in each of many / medium / few."""
    groups = group_of_classes(class_counts, convention)
    return {g: int((groups == g).sum()) for g in GROUPS}


@dataclass(frozen=True)
class SplitNumbers:
    """Images in a split and the largest / smallest class."""

    images: int
    max_per_class: int
    min_per_class: int


@dataclass(frozen=True)
class Published:
    """A benchmark's published numbers. ``groups``: many / medium / few class counts of the train split under
    Kang et al.'s convention (None where REFERENCE.md gives none); ``split_names`` maps ltcls's split names
    onto the names the benchmark uses (iNaturalist's val2018 is ltcls's test split)."""

    title: str
    num_classes: int
    splits: Mapping[str, SplitNumbers]
    groups: tuple[int, int, int] | None = None
    split_names: Mapping[str, str] = field(default_factory=dict)


PUBLISHED: dict[str, Published] = {
    "imagenet_lt": Published(
        "ImageNet-LT", 1000,
        {"train": SplitNumbers(115_846, 1280, 5), "val": SplitNumbers(20_000, 20, 20),
         "test": SplitNumbers(50_000, 50, 50)},
        groups=(385, 479, 136)),
    "places_lt": Published(
        "Places-LT", 365,
        {"train": SplitNumbers(62_500, 4980, 5), "val": SplitNumbers(7_300, 20, 20),
         "test": SplitNumbers(36_500, 100, 100)},
        groups=(131, 163, 71)),
    "inat2018": Published(
        "iNaturalist 2018", 8142,
        {"train": SplitNumbers(437_513, 1000, 2), "test": SplitNumbers(24_426, 3, 3)},
        split_names={"test": "val2018"}),
}


def compare_published(benchmark: str, split: str, class_counts: Sequence[int], num_classes: int,
                      convention: str = "kang") -> tuple[bool, list[str]] | None:
    """Compare one split's class counts with the published numbers: ``(all match, differences)``; None when
    nothing is published for that benchmark / split. Groups are compared for the train split under Kang's
    convention only (the one the published group sizes use)."""
    pub = PUBLISHED.get(benchmark)
    if pub is None or split not in pub.splits:
        return None
    counts = np.asarray(class_counts)
    want = pub.splits[split]
    got = {"classes": num_classes, "images": int(counts.sum()), "max per class": int(counts.max()),
           "min per class": int(counts.min())}
    expected = {"classes": pub.num_classes, "images": want.images, "max per class": want.max_per_class,
                "min per class": want.min_per_class}
    diffs = [f"{k} {got[k]:,} (published {expected[k]:,})" for k in got if got[k] != expected[k]]
    if split == "train" and pub.groups is not None and convention == "kang":
        sizes = group_sizes(counts, "kang")
        mine = tuple(sizes[g] for g in GROUPS)
        if mine != pub.groups:
            diffs.append(f"many/medium/few {'/'.join(map(str, mine))} (published {'/'.join(map(str, pub.groups))})")
    return not diffs, diffs
