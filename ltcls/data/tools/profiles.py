"""Long-tailed class-count profiles shared by the array datasets (CIFAR-LT, digits-LT)."""

from __future__ import annotations

import numpy as np

PROFILES = ("exp", "step")


def lt_counts(num_classes: int, imbalance_factor: float, profile: str, img_max: float) -> list[int]:
    """Per-class image counts of a long-tailed split, class 0 the head (LDAM-DRW's recipe).

    ``exp``: ``n_i = int(img_max * (1/IF) ** (i / (C - 1)))``; ``step``: the first ``C // 2`` classes
    keep ``int(img_max)``, the rest ``int(img_max * (1/IF))``. LDAM-DRW takes ``imb_factor = 1/IF`` and
    multiplies by it; we do the same so the float rounding (hence every published count) matches.
    """
    if num_classes < 2:
        raise ValueError(f"a long-tailed profile needs at least 2 classes, got {num_classes}")
    if imbalance_factor < 1:
        raise ValueError(f"imbalance_factor must be >= 1 (head count / tail count), got {imbalance_factor}")
    if img_max <= 0:
        raise ValueError(f"img_max must be positive, got {img_max}")
    imb = 1.0 / imbalance_factor
    if profile == "exp":
        return [int(img_max * imb ** (i / (num_classes - 1.0))) for i in range(num_classes)]
    if profile == "step":
        head = num_classes // 2
        return [int(img_max)] * head + [int(img_max * imb)] * (num_classes - head)
    raise ValueError(f"unknown imbalance profile '{profile}'; expected one of: {', '.join(PROFILES)}")


def select_lt(targets: np.ndarray, counts: list[int], rng: np.random.RandomState) -> np.ndarray:
    """Indices of a long-tailed subset: for each class in order, shuffle its indices with ``rng`` and keep
    the first ``counts[c]`` (LDAM-DRW's ``gen_imbalanced_data``; the result is grouped by class)."""
    keep = []
    for c, n in enumerate(counts):
        idx = np.where(targets == c)[0]
        if len(idx) < n:
            raise ValueError(f"class {c} has {len(idx)} images, fewer than the {n} the profile asks for")
        rng.shuffle(idx)
        keep.append(idx[:n])
    return np.concatenate(keep)
