"""One trainer for every mode: it runs a list of :class:`Stage` objects on one model.

End-to-end training is one stage. A decoupled second stage is another ``Stage`` that freezes
the backbone (parameters frozen *and* BatchNorm kept in eval mode), swaps the head, loss and
sampler; stages are data, not copies of the loop.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset

from ltcls.data import DataSplits, build_sampler
from ltcls.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ltcls.engine.distributed import gather_shards
from ltcls.engine.distributed import info as dist_info
from ltcls.engine.loops import predict, train_one_epoch
from ltcls.engine.tasks import ClassificationTask
from ltcls.losses import LTLoss
from ltcls.reporting import Reporter, write_json

log = logging.getLogger("ltcls")

CHECKPOINT = "checkpoint.pt"


@dataclass
class Stage:
    """One phase of training: its loss, sampler, optimization schedule and what is trainable.

    ``train`` is a resolved ``train:`` config section (epochs, batch_size, lr, schedule, ...), or
    ``None`` for a stage that only evaluates (tau-norm, NCM); ``sampler`` a resolved ``sampler:``
    section. With ``freeze_backbone`` only the classifier trains and the backbone runs in eval mode
    (BatchNorm statistics do not move). ``module`` / ``train_set`` / ``eval_sets`` replace the
    whole model and the image splits for a stage that trains the head on cached features.
    """

    name: str
    loss: LTLoss
    train: Mapping[str, Any] | None
    sampler: Mapping[str, Any]
    freeze_backbone: bool = False
    module: nn.Module | None = None
    train_set: Dataset | None = None
    eval_sets: dict[str, Dataset] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device is '{name}' but CUDA is not available; use 'auto' or 'cpu'")
    return device


def lr_factor(step: int, *, steps_per_epoch: int, epochs: int, schedule: str, warmup_epochs: int,
              milestones: list[int], gamma: float) -> float:
    """Multiplier of the base lr at optimizer ``step``: linear warmup, then cosine / step / constant."""
    warmup = warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        total = max(epochs * steps_per_epoch - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, total) / total))
    if schedule == "step":
        epoch = step // steps_per_epoch
        return gamma ** sum(epoch >= m for m in milestones)
    return 1.0


class Trainer:
    """Owns the model, data, device, reporter and checkpoints of one run directory."""

    def __init__(self, model: nn.Module, data: DataSplits, cfg: Mapping[str, Any], work_dir: str | Path,
                 reporter: Reporter | None = None, task: Any = None) -> None:
        self.task = task if task is not None else ClassificationTask()
        self.dist = dist_info()
        self.model = model
        self.data = data
        self.cfg = cfg
        self.work_dir = Path(work_dir)
        self.device = resolve_device(cfg["train"]["device"])
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if cfg["train"]["sync_bn"] and self.dist.enabled and self.device.type == "cuda":
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)  # CUDA only in PyTorch
        self.model.to(self.device)
        self.reporter = reporter
        self.class_counts = data.class_counts
        self.history: list[dict[str, Any]] = []

    # ----------------------------------------------------------------------------------- data
    def _loader(self, dataset: Dataset, batch_size: int, sampler=None, train: bool = False,
                in_memory: bool | None = None) -> DataLoader:
        if in_memory is None:
            in_memory = getattr(dataset, "in_memory", False)
        workers = 0 if in_memory else self.cfg["train"]["num_workers"]
        count = len(sampler) if sampler is not None else len(dataset)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
                          collate_fn=self.task.collate_fn, pin_memory=self.device.type == "cuda",
                          drop_last=train and count >= batch_size, persistent_workers=False)

    def predict_dataset(self, module: nn.Module, dataset: Dataset, desc: str = "eval",
                        progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs and labels of every sample of ``dataset``; with N processes each computes the shard
        ``dataset[rank::N]`` and the shards are gathered back into dataset order on every rank."""
        d, e, t = self.dist, self.cfg["eval"], self.cfg["train"]
        in_memory = getattr(dataset, "in_memory", False)
        shard = Subset(dataset, range(d.rank, len(dataset), d.world_size)) if d.enabled else dataset
        out, labels = predict(module, self._loader(shard, e["batch_size"], in_memory=in_memory), self.device,
                              amp=t["amp"], amp_dtype=t["amp_dtype"], desc=desc, progress=progress)
        return gather_shards(out, len(dataset)), gather_shards(labels, len(dataset))

    def eval_split(self, stage: Stage | None = None) -> tuple[str, Dataset]:
        """The configured evaluation split (``eval.split``), as the stage sees it (images or features)."""
        split = self.cfg["eval"]["split"]
        if stage is not None and split in stage.eval_sets:
            return split, stage.eval_sets[split]
        dataset = getattr(self.data, split)
        if dataset is None:
            name = self.cfg["data"]["name"]
            raise ValueError(f"eval.split is '{split}' but the dataset '{name}' has no {split} split")
        return split, dataset

    def module(self, stage: Stage) -> nn.Module:
        return stage.module if stage.module is not None else self.model

    # ------------------------------------------------------------------------------ training
    def _setup(self, stage: Stage):
        for p in self.model.parameters():
            p.requires_grad_(True)
        if stage.freeze_backbone:
            for p in self.model.backbone.parameters():
                p.requires_grad_(False)
        t = stage.train
        d = self.dist
        if t["batch_size"] % (d.world_size * t["accum_steps"]):
            raise ValueError(f"train.batch_size ({t['batch_size']}) must be divisible by the number of processes "
                             f"({d.world_size}) x train.accum_steps ({t['accum_steps']})")
        train_set = stage.train_set if stage.train_set is not None else self.data.train
        if hasattr(train_set, "seed_augmentation"):
            train_set.seed_augmentation(t["seed"])
        sampler = build_sampler(stage.sampler, getattr(train_set, "targets", None), seed=t["seed"],
                                epochs=t["epochs"], num_replicas=d.world_size, rank=d.rank, dataset=train_set)
        micro_batch = t["batch_size"] // (d.world_size * t["accum_steps"])
        loader = self._loader(train_set, micro_batch, sampler, train=True)
        module = self.module(stage).to(self.device)
        if t["channels_last"] and self.device.type == "cuda":
            module.to(memory_format=torch.channels_last)
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{stage.name}: nothing to train (every parameter is frozen)")
        optimizer = torch.optim.SGD(params, lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"],
                                    nesterov=t["nesterov"] and t["momentum"] > 0)
        steps = max(len(loader) // t["accum_steps"], 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
            s, steps_per_epoch=steps, epochs=t["epochs"], schedule=t["schedule"], warmup_epochs=t["warmup_epochs"],
            milestones=t["milestones"], gamma=t["gamma"]))
        amp = t["amp"] and self.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda") if amp and t["amp_dtype"] == "float16" else None
        stage.loss.to(self.device)
        wrapped = module
        if d.enabled:
            wrapped = DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda"
                                              else None)
        if t["compile"]:
            wrapped = torch.compile(wrapped)
        return sampler, loader, optimizer, scheduler, scaler, amp, wrapped

    def _set_mode(self, stage: Stage) -> None:
        self.model.train()
        self.module(stage).train()
        if stage.freeze_backbone:
            self.model.backbone.eval()

    def fit(self, stages: list[Stage], resume: bool = False) -> dict[str, Any]:
        """Run every stage in order (continuing from ``checkpoint.pt`` with ``resume``); returns final metrics."""
        start_stage, start_epoch, step, ckpt = 0, 0, 0, None
        if resume:
            ckpt = load_checkpoint(self.work_dir / CHECKPOINT)
            start_stage, start_epoch, step = ckpt["stage"], ckpt["epoch"], ckpt["step"]
            self.model.load_state_dict(ckpt["model"])
            self.history = list(ckpt.get("history", []))
            log.info("resuming %s at stage %d, epoch %d", self.work_dir, start_stage, start_epoch)
        report: dict[str, Any] = {}
        for index, stage in enumerate(stages):
            if index < start_stage:
                continue
            if stage.train is None:  # evaluation-only stage
                report = self.evaluate(stage, step, epoch=0, final=True)
                continue
            sampler, loader, optimizer, scheduler, scaler, amp, wrapped = self._setup(stage)
            epoch0 = 0
            if ckpt is not None and index == start_stage:
                optimizer.load_state_dict(ckpt["optimizer"])
                scheduler.load_state_dict(ckpt["scheduler"])
                sampler.load_state_dict(ckpt["sampler"])
                stage.loss.load_state_dict(ckpt["loss"])
                if scaler is not None and ckpt.get("scaler"):
                    scaler.load_state_dict(ckpt["scaler"])
                set_rng_state(ckpt["rng"])
                epoch0 = start_epoch
            step = self._run_stage(index, stage, epoch0, step, sampler, loader, optimizer, scheduler, scaler, amp,
                                   wrapped)
            report = self.evaluate(stage, step, epoch=stage.train["epochs"], final=True)
        return report

    def _run_stage(self, index, stage, epoch0, step, sampler, loader, optimizer, scheduler, scaler, amp,
                   wrapped) -> int:
        t, epochs = stage.train, stage.train["epochs"]
        interval = self.cfg["eval"]["interval"]
        for epoch in range(epoch0, epochs):
            sampler.set_epoch(epoch)
            if hasattr(loader.dataset, "set_epoch"):
                loader.dataset.set_epoch(epoch)
            stage.loss.set_epoch(epoch, epochs)
            self._set_mode(stage)
            stats = train_one_epoch(
                wrapped, loader, self.task.train_step(stage.loss, self.device, amp), optimizer, scheduler,
                scaler=scaler, clip_grad_norm=t["clip_grad_norm"], accum_steps=t["accum_steps"],
                log=self._log_step(), log_interval=t["log_interval"],
                desc=f"{stage.name} {epoch + 1}/{epochs}", step=step)
            step = stats["step"]
            log.info("%s epoch %d/%d  loss %.4f  lr %.4g  %.0f img/s  (%.1fs)", stage.name, epoch + 1, epochs,
                     stats["loss"], optimizer.param_groups[0]["lr"], stats["images_per_s"], stats["seconds"])
            if self.reporter is not None:
                self.reporter.scalar("train/epoch_loss", stats["loss"], step)
                self.reporter.scalar("train/images_per_s", stats["images_per_s"], step)
            if interval and (epoch + 1) % interval == 0 and epoch + 1 < epochs:
                self.evaluate(stage, step, epoch=epoch + 1)
            self._checkpoint(index, epoch + 1, step, stage, optimizer, scheduler, sampler, scaler)
        return step

    def _log_step(self):
        if self.reporter is None:
            return None

        def log_fn(step: int, loss: float, lr: float) -> None:
            self.reporter.scalar("train/loss", loss, step)
            self.reporter.scalar("train/lr", lr, step)

        return log_fn

    def _checkpoint(self, index, epoch, step, stage, optimizer, scheduler, sampler, scaler) -> None:
        if not self.dist.is_main:  # one writer; every rank reads it on --resume
            return
        state = {"stage": index, "epoch": epoch, "step": step, "model": self.model.state_dict(),
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "sampler": sampler.state_dict(), "loss": stage.loss.state_dict(),
                 "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng_state(),
                 "config": _plain(self.cfg), "history": self.history}
        save_checkpoint(state, self.work_dir / CHECKPOINT)

    # ---------------------------------------------------------------------------- evaluation
    def evaluate(self, stage: Stage, step: int, epoch: int, final: bool = False) -> dict[str, Any]:
        """Evaluate with the task's metrics; the history goes to the report, the final one to metrics.json."""
        report = self.task.evaluate(self, stage, step, epoch)
        bad = {name: split.bad_image_count for name in ("train", "val", "test")
               if (split := getattr(self.data, name, None)) is not None and hasattr(split, "bad_image_count")}
        if bad:  # images skipped with data.on_bad_image: skip (counted across loader workers)
            report["bad_images"] = bad
        self.history.append({"stage": stage.name, "epoch": epoch, **{k: report.get(k) for k in self.task.summary_keys}})
        report["history"] = self.history
        if self.reporter is not None:
            self.reporter.flush()
        if final and self.dist.is_main:
            write_json(self.work_dir / "metrics.json", report)
        return report

    def predictions(self, loss: LTLoss, logits: torch.Tensor) -> torch.Tensor:
        """Predicted classes of classification logits (see ``ClassificationTask.predictions``)."""
        return ClassificationTask.predictions(self, loss, logits)


def _plain(obj: Any) -> Any:
    """Config as plain dicts/lists (checkpoint-safe for ``weights_only`` loading)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
