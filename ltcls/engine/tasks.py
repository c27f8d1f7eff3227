"""What differs between tasks that share the Trainer: how a run is built, how a batch becomes a loss, how a
split is evaluated and reported, and how samples are batched. A task is registered in ``TASKS``; a dataset's
declaration names its task (classification unless it says otherwise), so the engine never asks which kind
of run it is."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from ltcls.config import Config
from ltcls.data.base import DataSplits
from ltcls.data.build import build_data
from ltcls.engine.evaluation import ClassificationEvaluator, DatasetEvaluator, EvalContext
from ltcls.engine.loops import autocast
from ltcls.losses.base import LTLoss, build_loss
from ltcls.metrics import GROUPS
from ltcls.models.backbone import LTModel, create_backbone, feature_dim
from ltcls.models.classifiers import build_classifier
from ltcls.models.peft import adapt_backbone
from ltcls.models.text_head import init_head
from ltcls.registries import TASKS, task_of
from ltcls.results import EvalReport

log = logging.getLogger("ltcls")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class StepOutput:
    """A training step's loss (what is back-propagated), its number of samples, and its named parts
    (logged as ``train/<part>``; empty where the loss has a single term)."""

    loss: torch.Tensor
    num_samples: int
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


class Run(NamedTuple):
    """What a task builds from a config: the data splits, the model and the stage-1 loss."""

    data: DataSplits
    model: nn.Module
    loss: LTLoss


class Task:
    """Base of the tasks the Trainer runs. Subclasses set ``summary_keys`` and implement the methods."""

    #: ``DataLoader`` collate function (``None``: PyTorch's default).
    collate_fn: Callable[[list[Any]], Any] | None = None
    #: Report keys kept in the run's evaluation history and printed at the end.
    summary_keys: tuple[str, ...] = ()
    #: Columns of a stage-2 ``comparison.md`` and the metric they show.
    comparison_keys: tuple[str, ...] = ()
    metric_title = ""

    def __init__(self, cfg: Config) -> None:
        self.amp_dtype = cfg.train.amp_dtype

    def build_data(self, cfg: Config) -> DataSplits:
        raise NotImplementedError

    def build_model(self, cfg: Config, data: DataSplits) -> nn.Module:
        raise NotImplementedError

    def build_loss(self, cfg: Config, data: DataSplits) -> LTLoss:
        """The loss of a config (its ``scores`` are the model's inference scores), with the data's facts."""
        raise NotImplementedError

    def build(self, cfg: Config, init_weights: bool = True) -> Run:
        """Seed, then build the data splits, the model and the stage-1 loss of a run. ``init_weights=False``: the
        model's weights will be loaded from a checkpoint, so the initializations that need outside weights
        (``classifier.init: text``) are skipped."""
        raise NotImplementedError

    def describe_data(self, cfg: Config, data: DataSplits) -> str:
        """One log line about the data of a run."""
        counts = data.class_counts
        return (f"data {cfg.data.name}: {data.num_classes} classes, {len(data.train)} train images "
                f"(max {counts.max()}, min {counts.min()} per class), {len(data.get(cfg.eval.split))} "
                f"{cfg.eval.split} images")

    def train_step(self, module: nn.Module, batch: Any, loss_fn: LTLoss, device: torch.device, amp: bool
                   ) -> StepOutput:
        raise NotImplementedError

    def inference_step(self, module: nn.Module, batch: Any, device: torch.device, amp: bool) -> Any:
        raise NotImplementedError

    def inference_context(self, module: nn.Module) -> AbstractContextManager:
        """Wraps a whole inference pass (e.g. compact mask pasting for detection)."""
        return nullcontext()

    def evaluator(self, dataset: Any, ctx: EvalContext) -> DatasetEvaluator:
        raise NotImplementedError

    def report(self, report: EvalReport, ctx: EvalContext) -> None:
        """Log a finished evaluation and write it to TensorBoard (``ctx.reporter``, main process only)."""
        raise NotImplementedError


def build_run(cfg: Config) -> Run:
    """The data, model and stage-1 loss of a config, built by its task."""
    return build_task(cfg).build(cfg)


def build_task(cfg: Config) -> Task:
    """The task of a config's dataset (see :func:`ltcls.registries.task_of`), built from the config."""
    return TASKS.get(task_of(cfg.data.name))(cfg)


@TASKS.register("classification")
class ClassificationTask(Task):
    """Images and integer labels; ``loss(module(images), labels)``; top-1 overall / many / medium / few."""

    summary_keys = ("overall", *GROUPS)
    comparison_keys = ("overall", *GROUPS)
    metric_title = "top-1 (%)"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.channels_last = cfg.train.channels_last

    def build_data(self, cfg: Config) -> DataSplits:
        return build_data(cfg.data.to_dict())

    def build_model(self, cfg: Config, data: DataSplits) -> LTModel:
        return build_model(cfg, data.num_classes)

    def build_loss(self, cfg: Config, data: DataSplits) -> LTLoss:
        return build_stage_loss(cfg, data)

    def build(self, cfg: Config, init_weights: bool = True) -> Run:
        seed_everything(cfg.train.seed)
        data = self.build_data(cfg)
        model = self.build_model(cfg, data)
        if init_weights:  # classifier.init (text: CLIP text embeddings of the class names)
            init_head(model.classifier, cfg.classifier.params, data.class_names, cfg.classifier.name,
                      text_encoder_device(cfg.train.device))
        loss = self.build_loss(cfg, data)
        loss.init_classifier(model.classifier)
        return Run(data, model, loss)

    def train_step(self, module: nn.Module, batch: Any, loss_fn: LTLoss, device: torch.device, amp: bool
                   ) -> StepOutput:
        images, labels = batch
        images = images.to(device, non_blocking=True)
        if self.channels_last and device.type == "cuda" and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        with autocast(device, amp, self.amp_dtype):
            return StepOutput(loss_fn(module(images), labels), labels.shape[0])

    def inference_step(self, module: nn.Module, batch: Any, device: torch.device, amp: bool) -> torch.Tensor:
        with autocast(device, amp, self.amp_dtype):
            return module(batch[0].to(device, non_blocking=True))

    def evaluator(self, dataset: Any, ctx: EvalContext) -> DatasetEvaluator:
        return ClassificationEvaluator(len(dataset), ctx)

    def report(self, report: EvalReport, ctx: EvalContext) -> None:
        log.info("%s epoch %d  %s top-1 %s", ctx.stage, ctx.epoch, ctx.split,
                 "  ".join(f"{k} {_fmt(report.metric(k))}" for k in ("overall", *GROUPS)))
        if ctx.reporter is not None:
            head = ctx.model.classifier if isinstance(ctx.model, LTModel) else None
            ctx.reporter.evaluation(report, ctx.step, classifier=head, many_threshold=ctx.many_threshold,
                                    few_threshold=ctx.few_threshold)


def build_model(cfg: Config, num_classes: int) -> LTModel:
    """Backbone (``timm.create_model(..., num_classes=0)``, pretrained or from ``model.pretrained_file``), frozen
    (``model.freeze``) and adapted (``model.peft``), + the configured classifier head."""
    m = cfg.model
    backbone = create_backbone(m.name, pretrained=m.pretrained, drop_rate=m.drop_rate,
                               drop_path_rate=m.drop_path_rate, pretrained_file=m.pretrained_file,
                               clip_projection=m.clip_projection, **m.kwargs)
    backbone = adapt_backbone(backbone, m.peft, freeze=m.freeze)
    classifier = build_classifier(cfg.classifier.name, feature_dim(backbone), num_classes, **cfg.classifier.params)
    return LTModel(backbone, classifier, frozen_backbone=m.freeze and m.peft.method == "none")


def text_encoder_device(device: str) -> str:
    """Where ``classifier.init: text`` encodes its prompts: the run's CUDA device where it trains on one, else CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device if device.startswith("cuda") else "cpu"


def build_stage_loss(cfg: Config, data: DataSplits) -> LTLoss:
    """The configured loss with the data's runtime facts (number of classes, class counts)."""
    return build_loss(cfg.loss.name, num_classes=data.num_classes, class_counts=data.class_counts.tolist(),
                      **cfg.loss.params)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"
