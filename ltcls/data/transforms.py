"""Train / eval image transforms. The signature of :func:`build_transforms` is the config schema for the
transform keys of the ``data:`` section (``ltcls.data.TRANSFORM_KEYS``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

#: timm's IMAGENET_DEFAULT_MEAN / _STD, written out: this module is imported to check a config's data section,
#: which must not pay for importing timm and torchvision (they are imported when transforms are built).
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
AUGMENTS = ("rrc", "crop_pad", "none")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


def build_transforms(
    img_size: int = 224,
    augment: str = "rrc",
    crop_pct: float = 0.875,
    hflip: float = 0.5,
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
    interpolation: str = "bilinear",
) -> tuple[Callable, Callable]:
    """The (train, eval) transforms: RGB PIL image -> float tensor (3, img_size, img_size).

    ``augment``: ``"rrc"`` timm's ImageNet training transform (random-resized crop + flip, no color
    jitter), ``"crop_pad"`` the CIFAR recipe (resize, random crop with ``img_size // 8`` padding, flip),
    ``"none"`` the eval transform. Eval: timm's resize to ``img_size / crop_pct`` and center crop.
    ``mean`` / ``std`` may be lists (yaml gives lists).
    """
    if augment not in AUGMENTS:
        raise ValueError(f"unknown augment '{augment}'; expected one of: {', '.join(AUGMENTS)}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation '{interpolation}'; expected one of: {', '.join(INTERPOLATIONS)}")
    if img_size < 1:
        raise ValueError(f"img_size must be >= 1, got {img_size}")
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    if not 0.0 <= hflip <= 1.0:
        raise ValueError(f"hflip must be a probability in [0, 1], got {hflip}")
    mean, std = _channels("mean", mean), _channels("std", std)
    from timm.data import create_transform  # lazy: see IMAGENET_DEFAULT_MEAN
    from timm.data.transforms import str_to_interp_mode
    from torchvision import transforms as T

    eval_tf = create_transform(img_size, is_training=False, crop_pct=crop_pct, interpolation=interpolation,
                               mean=mean, std=std)
    if augment == "rrc":
        train_tf = create_transform(img_size, is_training=True, hflip=hflip, color_jitter=None,
                                    interpolation=interpolation, mean=mean, std=std)
    elif augment == "crop_pad":
        steps: list[Callable] = [
            T.Resize(img_size, interpolation=str_to_interp_mode(interpolation)),
            T.RandomCrop(img_size, padding=img_size // 8),
        ]
        if hflip > 0:
            steps.append(T.RandomHorizontalFlip(hflip))
        train_tf = T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])
    else:
        train_tf = eval_tf
    return train_tf, eval_tf


def _channels(key: str, values: Sequence[float]) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if len(out) != 3:
        raise ValueError(f"{key} needs one value per RGB channel (3), got {len(out)}")
    return out
