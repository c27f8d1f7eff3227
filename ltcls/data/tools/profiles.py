"""Long-tailed class-count profiles shared by the array datasets (CIFAR-LT, digits-LT, glyphs-LT)."""

from __future__ import annotations

import numpy as np

PROFILES = ("exp", "step")

#: ImageNet-LT's count curve (REFERENCE.md "Datasets"): OLTR drew it from a Pareto distribution with shape 6 and
#: scaled it onto [5, 1280]. :func:`imagenet_lt_profile` takes the Pareto's quantiles instead of random draws,
#: with the head's quantile offset fitted so that 1000 classes hold 115,755 images (published: 115,846).
IMAGENET_LT_ALPHA = 6.0
IMAGENET_LT_HEAD_OFFSET = 0.79
IMAGENET_LT_MAX = 1280
IMAGENET_LT_MIN = 5


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


def imagenet_lt_profile(num_classes: int, scale: float = 1.0) -> list[int]:
    """Per-class image counts (head first) with ImageNet-LT's shape, scaled down by ``scale``.

    Derivation: ImageNet-LT's counts are 1000 draws of a Pareto (Lomax, numpy's ``pareto``) with shape
    alpha = 6, sorted and mapped linearly onto [5, 1280] (OLTR). A seed-free version takes, for class rank r,
    the Lomax quantile ``x_r = u_r ** (-1 / alpha) - 1`` at upper-tail probability
    ``u_r = (r + h) / (C - 0.5 + h)`` (the expected order statistics' positions; ``h`` =
    :data:`IMAGENET_LT_HEAD_OFFSET` places the head), mapped linearly onto [5, 1280]. With h = 0.79 and
    C = 1000: 115,755 images (published 115,846), many / medium / few = 387 / 470 / 143 classes
    (published 385 / 479 / 136, Kang's > 100 / 20-100 / < 20), max 1280, min 5. Other ``num_classes`` sample
    the same curve at C points.

    Scaling: ``n = round(5 + (n_ImageNet-LT - 5) * scale)``, i.e. the curve shrunk towards its minimum of 5
    (max ``5 + 1275 * scale``). With the thresholds fixed at 100 / 20, shrinking moves classes from many to
    medium and from medium to few; at 1000 classes, scale 0.3 (glyphs_lt's default) gives 38,223 images,
    66 / 541 / 393 classes (max 388), scale 0.5 gives 60,381, 170 / 567 / 263 (max 642), scale 1 is
    ImageNet-LT's.
    """
    if num_classes < 2:
        raise ValueError(f"a long-tailed profile needs at least 2 classes, got {num_classes}")
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1] (1: ImageNet-LT's counts), got {scale}")
    h = IMAGENET_LT_HEAD_OFFSET
    u = (np.arange(num_classes) + h) / (num_classes - 0.5 + h)
    x = u ** (-1.0 / IMAGENET_LT_ALPHA) - 1.0
    unit = (x - x[-1]) / (x[0] - x[-1])
    full = IMAGENET_LT_MIN + unit * (IMAGENET_LT_MAX - IMAGENET_LT_MIN)
    return [int(v) for v in np.rint(IMAGENET_LT_MIN + (full - IMAGENET_LT_MIN) * scale)]
