"""What the Trainer runs (:class:`Stage`) and the state of a running stage (:class:`LoopState`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ltcls.config import Component, TrainConfig
from ltcls.data.base import Split
from ltcls.engine.loops import StepOptions
from ltcls.losses.base import LTLoss


@dataclass
class Stage:
    """One phase of training: its loss, sampler, optimization schedule and what runs in eval mode.

    ``train`` is a resolved ``train:`` section, or ``None`` for a stage that only evaluates (tau-norm,
    NCM); ``sampler`` a resolved ``sampler:`` section. ``eval_modules`` stay in eval mode while the stage
    trains (a frozen backbone: BatchNorm statistics do not move; its parameters were frozen by whoever built
    the stage). ``module`` / ``train_set`` / ``eval_sets`` replace the whole model and the image splits for
    a stage that trains the head on cached features.
    """

    name: str
    loss: LTLoss
    train: TrainConfig | None
    sampler: Component
    eval_modules: Sequence[nn.Module] = ()
    module: nn.Module | None = None
    train_set: Split | None = None
    eval_sets: dict[str, Split] = field(default_factory=dict)


@dataclass
class LoopState:
    """The state of a running stage: what a checkpoint holds besides the model, and what the loop runs with
    (the training split, the per-process micro-batch, its loader and sampler, how a step is taken)."""

    index: int
    train_set: Split
    micro_batch: int
    loader: DataLoader
    sampler: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    opts: StepOptions
    amp: bool
    wrapped: nn.Module
    epoch: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    warmup_steps: int = 0
