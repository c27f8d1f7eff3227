"""LVIS v1 for Mask R-CNN: images, boxes, labels and masks as torchvision's detection models take them.

Registered as the ``lvis`` dataset. ``data.root`` is the COCO 2017 image folder; ``data.train_ann`` and
``data.val_ann`` are the LVIS json files. LVIS v1 images carry no ``file_name``: the file is
``<root>/<split>2017/<name>`` taken from the last two parts of ``coco_url`` (LVIS v1 val draws images
from COCO train2017 as well as val2017). Categories are mapped to contiguous labels ``1..C`` in order of
their ids (0 is torchvision's background); ``cat_ids[label - 1]`` maps back.

What the trainer and the samplers read: ``targets`` (one int per image: the 0-based label of its rarest
category, so the classification samplers are defined on images), ``image_categories`` (the 0-based
labels present in each image: repeat-factor sampling), ``class_counts`` (training images per category,
LVIS's ``image_count``), ``instance_counts`` (annotations per category: SimCal), ``frequency`` (``r`` /
``c`` / ``f`` per category) and ``gt`` (the json of an evaluation split, for the evaluator).
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision.transforms.functional import pil_to_tensor

from ltcls.data.base import DataSplits, ImageFileList, SplitBase, sample_seed
from ltcls.data.images import to_rgb
from ltcls.detection.results import ann_to_rle
from ltcls.registries import DATASETS

log = logging.getLogger("ltcls")

Target = dict[str, Any]


class DetectionFlip:
    """Training augmentation: horizontal flip of the image, its boxes and masks with probability ``prob``.

    Resizing and normalization belong to the model (torchvision's ``GeneralizedRCNNTransform``).
    The coin comes from ``generator`` (the dataset's per-sample generator) or torch's global one.
    """

    def __init__(self, prob: float = 0.5) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {prob}")
        self.prob = prob

    def __call__(self, image: torch.Tensor, target: Target,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, Target]:
        if self.prob == 0 or torch.rand((), generator=generator) >= self.prob:
            return image, target
        width = image.shape[-1]
        target = dict(target)
        boxes = target["boxes"].clone()
        boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
        target["boxes"] = boxes
        if "masks" in target:
            target["masks"] = target["masks"].flip(-1)
        return image.flip(-1), target

    def __repr__(self) -> str:
        return f"DetectionFlip(prob={self.prob})"


def relative_image_path(image: Mapping[str, object]) -> str:
    """``<split>2017/<file>`` (relative to the COCO folder) from an LVIS v1 image's ``coco_url`` (``file_name``
    for LVIS v0.5)."""
    url = image.get("coco_url")
    if url:
        return "/".join(Path(urlparse(str(url)).path).parts[-2:])
    if image.get("file_name"):
        return str(image["file_name"])
    raise ValueError(f"LVIS image {image.get('id')} has neither coco_url nor file_name")


def load_lvis_json(path: str | Path) -> dict[str, Any]:
    """Read an LVIS json and check the v1 fields ltcls relies on; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LVIS annotation file {path} does not exist")
    with open(path) as f:
        data = json.load(f)
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{path}: not an LVIS json (no '{key}')")
    for key in ("id", "frequency"):
        if data["categories"] and key not in data["categories"][0]:
            raise ValueError(f"{path}: LVIS categories need '{key}' (v1 format)")
    for key in ("id", "height", "width", "neg_category_ids", "not_exhaustive_category_ids"):
        if data["images"] and key not in data["images"][0]:
            raise ValueError(f"{path}: LVIS images need '{key}' (v1 format)")
    return data


class LVISDataset(SplitBase):
    """One LVIS split: ``__getitem__(i) -> (image float (3, H, W) in [0, 1], target)``.

    ``target`` has torchvision's keys ``boxes`` (N, 4) xyxy float, ``labels`` (N,) int64 in 1..C and, with
    ``with_masks``, ``masks`` (N, H, W) uint8; plus ``image_id``. Annotations with an empty box are
    dropped (torchvision rejects degenerate boxes); ``filter_empty`` drops images without annotations
    (for training, as mmdetection and detectron2 do). ``keep_json`` keeps the parsed json as ``gt``
    (needed by the evaluator; the 1 GB train json is not kept). After ``seed_augmentation(seed)`` the
    flip of image ``i`` in epoch ``e`` is drawn from a generator seeded by (seed, e, i) alone, whatever the
    number of loader workers or processes (as ``LTDataset``).
    """

    aug_seed: int | None = None
    epoch: int = 0

    def __init__(self, root: str | Path, ann_file: str | Path, transform: Callable | None = None,
                 filter_empty: bool = False, with_masks: bool = True, keep_json: bool = False) -> None:
        self.root = Path(root)
        self.ann_file = Path(ann_file)
        data = load_lvis_json(self.ann_file)
        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.categories = cats
        self.cat_ids = [int(c["id"]) for c in cats]
        self.classes = [str(c.get("name", c["id"])) for c in cats]
        self.frequency = [str(c["frequency"]) for c in cats]
        self.num_classes = len(cats)
        label_of = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}
        per_image: dict[int, list[tuple[list[float], int, Any]]] = {int(im["id"]): [] for im in data["images"]}
        dropped = 0
        for ann in data["annotations"]:
            x, y, w, h = ann["bbox"]
            if w <= 0 or h <= 0 or ann["category_id"] not in label_of:
                dropped += 1
                continue
            per_image[int(ann["image_id"])].append(([x, y, x + w, y + h], label_of[ann["category_id"]],
                                                    ann["segmentation"]))
        images = [im for im in data["images"] if not filter_empty or per_image[int(im["id"])]]
        self.image_ids = [int(im["id"]) for im in images]
        self.sizes = [(int(im["height"]), int(im["width"])) for im in images]
        self.paths = [relative_image_path(im) for im in images]  # relative to root, as every file-listed dataset
        anns_of = [per_image[i] for i in self.image_ids]
        self.image_categories = [np.unique(np.array([a[1] - 1 for a in anns], dtype=np.int64)) for anns in anns_of]
        counts = np.zeros(self.num_classes, dtype=np.int64)
        for labels in self.image_categories:
            counts[labels] += 1
        self._class_counts = counts
        self.instance_counts = np.bincount(np.array([a[1] - 1 for anns in anns_of for a in anns], dtype=np.int64),
                                           minlength=self.num_classes)
        # Per-image annotations pickled into one byte buffer (detectron2's trick): no Python object per polygon,
        # so forked loader workers do not copy the 1.3M LVIS train annotations page by page on access.
        blobs = [pickle.dumps(anns, protocol=pickle.HIGHEST_PROTOCOL) for anns in anns_of]
        self._offsets = np.cumsum([0] + [len(b) for b in blobs], dtype=np.int64)
        self._blob = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        num_anns = sum(len(a) for a in anns_of)
        del anns_of, per_image, blobs
        rank = np.argsort(np.argsort(counts, kind="stable"), kind="stable")  # rarest category first
        self.targets = np.array([labels[np.argmin(rank[labels])] if len(labels) else 0
                                 for labels in self.image_categories], dtype=np.int64)
        self.transform = transform
        self.with_masks = with_masks
        self.gt = data if keep_json else None
        log.info("LVIS %s: %d images (%d without annotations dropped), %d categories, %d annotations "
                 "(%d with an empty box dropped)", self.ann_file.name, len(images), len(data["images"]) - len(images),
                 self.num_classes, num_anns, dropped)

    @property
    def class_counts(self) -> np.ndarray:
        """Images of this split that contain each category (length ``num_classes``)."""
        return self._class_counts

    def __len__(self) -> int:
        return len(self.image_ids)

    def seed_augmentation(self, seed: int | None) -> None:
        self.aug_seed = seed

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def generator(self, index: int) -> torch.Generator | None:
        """The per-sample augmentation generator (``None``: torch's global one)."""
        if self.aug_seed is None:
            return None
        return torch.Generator().manual_seed(sample_seed(self.aug_seed, self.epoch, index))

    def image_files(self) -> ImageFileList:
        """Every image of the split, for the start-up check that they open (the json names each one's id)."""
        return ImageFileList(str(self.root), self.paths,
                             lambda i: f"{self.ann_file.name}: image id {self.image_ids[i]}")

    def load_image(self, index: int) -> torch.Tensor:
        path = self.root / self.paths[index]
        if not path.is_file():
            raise FileNotFoundError(f"LVIS image {self.image_ids[index]}: {path} does not exist "
                                    f"(data.root must be the COCO 2017 folder holding train2017/ and val2017/)")
        with Image.open(path) as img:
            return pil_to_tensor(to_rgb(img)).float().div_(255.0)

    def annotations(self, index: int) -> list[tuple[list[float], int, Any]]:
        """(xyxy box, label, LVIS segmentation) of each kept annotation of image ``index``."""
        return pickle.loads(self._blob[self._offsets[index]:self._offsets[index + 1]].tobytes())

    def target(self, index: int) -> Target:
        anns = self.annotations(index)
        height, width = self.sizes[index]
        target: Target = {
            "boxes": torch.tensor([a[0] for a in anns], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([a[1] for a in anns], dtype=torch.int64),
            "image_id": self.image_ids[index],
        }
        if self.with_masks:
            if anns:
                rles = [ann_to_rle(a[2], height, width) for a in anns]
                masks = torch.from_numpy(mask_utils.decode(rles)).permute(2, 0, 1).contiguous()
            else:
                masks = torch.zeros((0, height, width), dtype=torch.uint8)
            target["masks"] = masks
        return target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        image, target = self.load_image(index), self.target(index)
        if image.shape[-2:] != self.sizes[index]:
            raise ValueError(f"{self.root / self.paths[index]}: image is {tuple(image.shape[-2:])} but the json says "
                             f"{self.sizes[index]}")
        if self.transform is not None:
            image, target = self.transform(image, target, generator=self.generator(index))
        return image, target


def _resolve(path: str, root: Path) -> Path:
    """An annotation path as given, or relative to ``root`` when it does not exist as given."""
    p = Path(path)
    if not p.exists() and not p.is_absolute() and (root / p).exists():
        return root / p
    return p


@DATASETS.register("lvis")
def lvis(train_transform: Callable | None = None, eval_transform: Callable | None = None,
         root: str = "data/coco", train_ann: str = "data/lvis/lvis_v1_train.json",
         val_ann: str = "data/lvis/lvis_v1_val.json", filter_empty: bool = True) -> DataSplits:
    """LVIS v1: train split from ``train_ann``, val split from ``val_ann`` (also returned as ``test``).

    ``train_transform`` must be a detection transform (:class:`DetectionFlip`; the detection builder
    passes one with ``data.hflip``); a classification transform is ignored with a warning.
    """
    if not isinstance(train_transform, DetectionFlip):
        if train_transform is not None:
            log.warning("lvis: ignoring the image-classification transform; using DetectionFlip(0.5)")
        train_transform = DetectionFlip(0.5)
    root_path = Path(root)
    train = LVISDataset(root_path, _resolve(train_ann, root_path), transform=train_transform,
                        filter_empty=filter_empty)
    val = LVISDataset(root_path, _resolve(val_ann, root_path), with_masks=False, keep_json=True)
    if val.cat_ids != train.cat_ids:
        raise ValueError(f"{val.ann_file} and {train.ann_file} have different categories")
    return DataSplits(train=train, test=val, val=val)

