"""Config section -> datasets and samplers (the registries' builders with the runtime facts)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ltcls.data.base import DataSplits
from ltcls.data.samplers import LTSampler
from ltcls.data.transforms import build_transforms
from ltcls.registries import DATASETS, SAMPLERS
from ltcls.registry import params_of, signature_schema

#: The keys of the ``data:`` section that configure the transforms (the parameters of build_transforms).
TRANSFORM_KEYS: tuple[str, ...] = tuple(signature_schema(build_transforms))


def build_data(cfg: Mapping[str, Any]) -> DataSplits:
    """Build the dataset named ``cfg["name"]``: transform keys go to :func:`build_transforms`, the other
    keys are the dataset's hyper-parameters (an unknown one is an error naming it)."""
    if "name" not in cfg:
        raise KeyError(f"data section needs a 'name'; registered datasets: {', '.join(DATASETS.names())}")
    params = params_of(cfg)
    tf_params = {k: params.pop(k) for k in TRANSFORM_KEYS if k in params}
    train_tf, eval_tf = build_transforms(**tf_params)
    return DATASETS.build(cfg["name"], params, train_transform=train_tf, eval_transform=eval_tf)


def build_sampler(cfg: Mapping[str, Any], targets: Sequence[int] | None, seed: int, epochs: int, num_replicas: int = 1,
                  rank: int = 0, dataset: Any = None) -> LTSampler:
    """Build the sampler named ``cfg["name"]`` with its yaml hyper-parameters and the trainer's runtime facts.

    ``dataset`` is passed to samplers that take it (e.g. repeat-factor sampling reads per-image classes)."""
    if "name" not in cfg:
        raise KeyError(f"sampler section needs a 'name'; registered samplers: {', '.join(SAMPLERS.names())}")
    return SAMPLERS.build(cfg["name"], params_of(cfg), targets=targets, seed=seed, epochs=epochs,
                          num_replicas=num_replicas, rank=rank, dataset=dataset)
