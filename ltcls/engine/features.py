"""Backbone features computed once for a frozen backbone, optionally cached on disk.

With the backbone frozen (and in eval mode), a second stage only needs each image's feature
vector. Computing it once turns every later epoch into a pass over a small tensor. The cache key
covers the checkpoint's bytes, the data config, the split's labels and the number of views, so a
changed checkpoint or dataset recomputes instead of reusing stale features.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltcls.data.base import LTDataset, Split, SplitBase
from ltcls.engine.distributed import info
from ltcls.io import atomic_write

log = logging.getLogger("ltcls")


class FeatureSet(SplitBase):
    """Cached features ``(views, N, D)`` with their labels; each access picks one view at random.

    ``in_memory``: the trainer uses no worker processes. ``batched``: indexed with a whole batch of indices at
    once (the trainer's loader hands it each batch sampler's list), it returns the stacked batch with one
    gather: no per-sample tensors to build and collate, which is what a class-aware epoch of 1.28 M samples
    (ImageNet-LT) spends its time on otherwise.
    """

    in_memory = True
    batched = True

    def __init__(self, features: torch.Tensor, targets: np.ndarray | torch.Tensor, num_classes: int) -> None:
        if features.ndim == 2:
            features = features[None]
        if features.ndim != 3 or features.shape[1] != len(targets):
            raise ValueError(f"expected features (views, N, D) for {len(targets)} samples, got {tuple(features.shape)}")
        self.features = features
        self.targets = np.asarray(targets, dtype=np.int64)
        self.labels = torch.from_numpy(self.targets)
        self.num_classes = num_classes

    def __len__(self) -> int:
        return self.features.shape[1]

    def __getitem__(self, index: int | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One sample (an int) or a stacked batch (a sequence of indices)."""
        idx = torch.as_tensor(index)
        views = self.features.shape[0]
        if views == 1:
            view = 0
        else:
            view = torch.randint(views, idx.shape) if idx.ndim else int(torch.randint(views, ()))
        return self.features[view, idx], self.labels[idx]


def file_digest(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_key(checkpoint_digest: str, data_cfg: Mapping[str, Any], split: str, dataset: LTDataset, views: int,
              seed: int) -> str:
    """A digest of everything the features depend on."""
    h = hashlib.sha256()
    h.update(checkpoint_digest.encode())
    h.update(json.dumps(dict(data_cfg), sort_keys=True, default=str).encode())
    h.update(f"{split}|{views}|{seed}|{len(dataset)}".encode())
    h.update(np.ascontiguousarray(dataset.targets).tobytes())
    return h.hexdigest()


def extract_features(predict_fn: Callable[[Split, str], tuple[torch.Tensor, torch.Tensor]], dataset: LTDataset,
                     views: int = 1, seed: int = 0) -> torch.Tensor:
    """Features ``(views, N, D)`` of ``dataset`` (float32, CPU); ``predict_fn(dataset, desc)`` runs the
    frozen backbone in eval mode (sharded over processes by the inference runner).

    With ``views > 1`` every pass draws new random augmentations, seeded per sample by (seed, view, index)
    so the views are the same whatever the number of workers or processes.
    """
    out = []
    for v in range(views):
        if views > 1:
            dataset.seed_augmentation(seed)
            dataset.set_epoch(v)
        feats, _ = predict_fn(dataset, f"features {v + 1}/{views}")
        out.append(feats)
    return torch.stack(out)


def cached_features(path: Path | None, key: str | None, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Load features from ``path`` when its key matches, else compute (and store them if ``path``; ``key`` is
    only needed with a ``path``)."""
    if path is not None and path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if stored.get("key") == key:
                log.info("features: using cache %s", path)
                return stored["features"]
            log.info("features: cache %s is stale (checkpoint or data changed); recomputing", path)
        except Exception as e:  # unreadable cache: recompute rather than fail
            log.warning("features: cannot read cache %s (%s); recomputing", path, e)
    features = compute()
    if path is not None and info().is_main:  # every process computed the same features; one writes
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: torch.save({"key": key, "features": features}, tmp))
    return features
