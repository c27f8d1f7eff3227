"""Data layer: datasets, transforms and samplers. This file is the only registration site: it imports
every dataset and sampler module."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from ltcls.data import benchmarks, cifar, digits, samplers, split_file  # noqa: F401  (register datasets, samplers)
from ltcls.data.base import DATASETS, SAMPLERS, ArrayDataset, DataSplits, LTDataset
from ltcls.data.samplers import LTSampler
from ltcls.data.transforms import build_transforms
from ltcls.detection import data as _detection_data  # noqa: F401  (registers 'lvis')

__all__ = [
    "DATASETS",
    "SAMPLERS",
    "TRANSFORM_KEYS",
    "ArrayDataset",
    "DataSplits",
    "LTDataset",
    "build_data",
    "build_sampler",
    "build_transforms",
]

#: The keys of the ``data:`` section that configure the transforms (the parameters of build_transforms).
TRANSFORM_KEYS: tuple[str, ...] = tuple(inspect.signature(build_transforms).parameters)


def build_data(cfg: Mapping[str, Any]) -> DataSplits:
    """Build the dataset named ``cfg["name"]``: transform keys go to :func:`build_transforms`, the other
    keys are the dataset's hyper-parameters (an unknown one is an error naming it)."""
    cfg = dict(cfg)
    if "name" not in cfg:
        raise KeyError(f"data section needs a 'name'; registered datasets: {', '.join(DATASETS.names())}")
    name = cfg.pop("name")
    tf_params = {k: cfg.pop(k) for k in TRANSFORM_KEYS if k in cfg}
    train_tf, eval_tf = build_transforms(**tf_params)
    return DATASETS.build(name, cfg, train_transform=train_tf, eval_transform=eval_tf)


def build_sampler(cfg: Mapping[str, Any], targets: Sequence[int] | None, seed: int, epochs: int, num_replicas: int = 1,
                  rank: int = 0, dataset: Any = None) -> LTSampler:
    """Build the sampler named ``cfg["name"]`` with its yaml hyper-parameters and the trainer's runtime facts.

    ``dataset`` is passed to samplers that take it (e.g. repeat-factor sampling reads per-image classes)."""
    cfg = dict(cfg)
    if "name" not in cfg:
        raise KeyError(f"sampler section needs a 'name'; registered samplers: {', '.join(SAMPLERS.names())}")
    return SAMPLERS.build(cfg.pop("name"), cfg, targets=targets, seed=seed, epochs=epochs,
                          num_replicas=num_replicas, rank=rank, dataset=dataset)
