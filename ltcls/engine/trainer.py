"""One trainer for every mode: it runs a list of :class:`Stage` objects on one model.

End-to-end training is one stage. A decoupled second stage is another ``Stage`` whose owner froze what must
not train (``requires_grad`` as the model sets it is honoured) and names the modules kept in eval mode
(BatchNorm statistics of a frozen backbone do not move); stages are data, not copies of the loop. What
happens around the loop (evaluation, checkpoints, TensorBoard) is done by hooks
(:mod:`ltcls.engine.hooks`); what differs between classification and detection by the task
(:mod:`ltcls.engine.tasks`), which is told what it needs and never reads the Trainer.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

from ltcls.config import Config, EvalConfig, TrainConfig
from ltcls.data.base import DataSplits
from ltcls.data.build import build_sampler
from ltcls.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ltcls.engine.distributed import gather_shards, rank_shard
from ltcls.engine.distributed import info as dist_info
from ltcls.engine.evaluation import EvalContext, inference_on_dataset
from ltcls.engine.hooks import CheckpointHook, EpochLogHook, EvalHook, HookBase, TensorBoardHook
from ltcls.engine.loops import NonFiniteLossError, predict, train_one_epoch
from ltcls.engine.rundir import atomic_write_text
from ltcls.engine.signals import Interrupted, active, stop_requested
from ltcls.engine.stage import LoopState, Stage
from ltcls.engine.tasks import Task
from ltcls.reporting import Reporter

log = logging.getLogger("ltcls")

CHECKPOINT = "checkpoint.pt"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device is '{name}' but CUDA is not available; use 'auto' or 'cpu'")
    return device


def lr_factor(step: int, *, steps_per_epoch: int, epochs: int, schedule: str, warmup_steps: int,
              warmup_ratio: float, milestones: list[int], gamma: float) -> float:
    """Multiplier of the base lr at optimizer ``step``: linear warm-up from ``warmup_ratio`` over
    ``warmup_steps``, then cosine / step / constant."""
    if step < warmup_steps:
        return warmup_ratio + (1.0 - warmup_ratio) * (step + 1) / warmup_steps
    if schedule == "cosine":
        total = max(epochs * steps_per_epoch - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup_steps, total) / total))
    if schedule == "step":
        epoch = step // steps_per_epoch
        return gamma ** sum(epoch >= m for m in milestones)
    return 1.0


def scaled_lr(t: TrainConfig) -> float:
    """``train.lr``, scaled linearly from ``train.base_batch_size`` to the global ``train.batch_size`` if set."""
    return t.lr * t.batch_size / t.base_batch_size if t.base_batch_size else t.lr


class TrainingDiverged(RuntimeError):
    """The loss became NaN / infinite; the message names the step, the value and the last good checkpoint."""


class _SkipSampler:
    """``sampler`` without its first ``skip`` indices: the rest of an epoch interrupted after ``skip`` samples."""

    def __init__(self, sampler: Any, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.skip, None)


def default_hooks(cfg: Config, reporter: Reporter | None) -> list[HookBase]:
    """Epoch log, TensorBoard (main process), evaluation every ``eval.interval`` epochs and at the end, and
    a checkpoint every epoch."""
    hooks: list[HookBase] = [EpochLogHook()]
    if reporter is not None:
        hooks.append(TensorBoardHook(reporter))
    return [*hooks, EvalHook(cfg.eval.interval), CheckpointHook()]


class Trainer:
    """Owns the model, data, device, hooks and checkpoints of one run directory."""

    def __init__(self, model: nn.Module, data: DataSplits, cfg: Config, work_dir: str | Path, task: Task,
                 reporter: Reporter | None = None, hooks: Sequence[HookBase] | None = None) -> None:
        self.task = task
        self.dist = dist_info()
        self.model = model
        self.data = data
        self.cfg = cfg
        self.work_dir = Path(work_dir)
        if self.dist.is_main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(cfg.train.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if cfg.train.sync_bn and self.dist.enabled and self.device.type == "cuda":
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)  # CUDA only in PyTorch
        self.model.to(self.device)
        self.reporter = reporter
        self.hooks = list(hooks) if hooks is not None else default_hooks(cfg, reporter)
        self.class_counts = data.class_counts
        self.history: list[dict[str, Any]] = []
        self.final_report: dict[str, Any] = {}
        #: ``(epoch, step, batch)`` of the checkpoint this run last wrote or resumed from (None: none yet).
        self.last_checkpoint: tuple[int, int, int] | None = None
        self._resume_batch, self._resume_rng = 0, None

    # ----------------------------------------------------------------------------------- data
    def loader(self, dataset: Dataset, batch_size: int, sampler: Any = None, train: bool = False) -> DataLoader:
        """A DataLoader with the task's collate function; in-memory datasets (cached features) use no workers,
        and a ``batched`` one is indexed with each whole batch of indices (one gather, no collation)."""
        base = getattr(dataset, "dataset", dataset)  # under a rank shard (Subset)
        workers = 0 if getattr(base, "in_memory", False) else self.cfg.train.num_workers
        count = len(sampler) if sampler is not None else len(dataset)
        drop_last = train and count >= batch_size
        pin = self.device.type == "cuda"
        if getattr(base, "batched", False):
            order = sampler if sampler is not None else SequentialSampler(dataset)
            batches = BatchSampler(order, batch_size, drop_last)
            return DataLoader(dataset, batch_size=None, sampler=batches, num_workers=workers, pin_memory=pin)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
                          collate_fn=self.task.collate_fn, pin_memory=pin, drop_last=drop_last,
                          persistent_workers=False)

    def eval_split(self, stage: Stage | None = None) -> tuple[str, Dataset]:
        """The configured evaluation split (``eval.split``), as the stage sees it (images or features)."""
        split = self.cfg.eval.split
        if stage is not None and split in stage.eval_sets:
            return split, stage.eval_sets[split]
        dataset = getattr(self.data, split)
        if dataset is None:
            raise ValueError(f"eval.split is '{split}' but the dataset '{self.cfg.data.name}' has no {split} split")
        return split, dataset

    def module(self, stage: Stage) -> nn.Module:
        return stage.module if stage.module is not None else self.model

    # ------------------------------------------------------------------------------ training
    def _setup(self, index: int, stage: Stage) -> LoopState:
        t, d = stage.train, self.dist
        if t.batch_size % (d.world_size * t.accum_steps):
            raise ValueError(f"train.batch_size ({t.batch_size}) must be divisible by the number of processes "
                             f"({d.world_size}) x train.accum_steps ({t.accum_steps})")
        train_set = stage.train_set if stage.train_set is not None else self.data.train
        if hasattr(train_set, "seed_augmentation"):
            train_set.seed_augmentation(t.seed)
        sampler = build_sampler(stage.sampler.to_dict(), getattr(train_set, "targets", None), seed=t.seed,
                                epochs=t.epochs, num_replicas=d.world_size, rank=d.rank, dataset=train_set)
        micro_batch = t.batch_size // (d.world_size * t.accum_steps)
        loader = self.loader(train_set, micro_batch, sampler, train=True)
        module = self.module(stage).to(self.device)
        if t.channels_last and self.device.type == "cuda":
            module.to(memory_format=torch.channels_last)
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{stage.name}: nothing to train (every parameter is frozen)")
        optimizer = torch.optim.SGD(params, lr=scaled_lr(t), momentum=t.momentum, weight_decay=t.weight_decay,
                                    nesterov=t.nesterov and t.momentum > 0)
        steps = max(len(loader) // t.accum_steps, 1)
        warmup = t.warmup_steps(steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
            s, steps_per_epoch=steps, epochs=t.epochs, schedule=t.schedule, warmup_steps=warmup,
            warmup_ratio=t.warmup_ratio, milestones=t.milestones, gamma=t.gamma))
        amp = t.amp and self.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda") if amp and t.amp_dtype == "float16" else None
        stage.loss.to(self.device)
        wrapped = module
        if d.enabled:
            wrapped = DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda"
                                              else None)
        if t.compile:
            wrapped = torch.compile(wrapped)
        return LoopState(index, loader, sampler, optimizer, scheduler, scaler, amp, wrapped, steps_per_epoch=steps,
                         warmup_steps=warmup)

    def _set_mode(self, stage: Stage) -> None:
        self.model.train()
        self.module(stage).train()
        for m in stage.eval_modules:
            m.eval()

    def fit(self, stages: list[Stage], resume: bool = False) -> dict[str, Any]:
        """Run every stage in order (continuing from ``checkpoint.pt`` with ``resume``); returns final metrics."""
        start_stage, start_epoch, step, ckpt = 0, 0, 0, None
        if resume:
            ckpt = load_checkpoint(self.work_dir / CHECKPOINT)
            start_stage, start_epoch, step = ckpt["stage"], ckpt["epoch"], ckpt["step"]
            self.model.load_state_dict(ckpt["model"])
            self.history = list(ckpt.get("history", []))
            self.last_checkpoint = (start_epoch, step, int(ckpt.get("batch", 0)))
            log.info("resuming %s at stage %d, epoch %d%s", self.work_dir, start_stage, start_epoch,
                     f", batch {ckpt['batch']} (an interrupt checkpoint)" if ckpt.get("batch") else "")
        for index, stage in enumerate(stages):
            if index < start_stage:
                continue
            if stage.train is None:  # evaluation-only stage
                self.final_report = self.evaluate(stage, step, epoch=0, final=True)
                continue
            state = self._setup(index, stage)
            state.step = step
            if ckpt is not None and index == start_stage:
                self._restore(stage, state, ckpt)
                state.epoch = start_epoch
            self._run_stage(stage, state)
            step = state.step
        return self.final_report

    def _restore(self, stage: Stage, state: LoopState, ckpt: dict[str, Any]) -> None:
        state.optimizer.load_state_dict(ckpt["optimizer"])
        state.scheduler.load_state_dict(ckpt["scheduler"])
        state.sampler.load_state_dict(ckpt["sampler"])
        stage.loss.load_state_dict(ckpt["loss"])
        if state.scaler is not None and ckpt.get("scaler"):
            state.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        # An interrupt checkpoint (train.checkpoint_on_signal) lies inside epoch ``epoch``, after ``batch``
        # micro-batches: that epoch resumes with the rest of its sampler order, the RNG state set again once
        # the new loader iterator exists (creating one draws a seed from torch's generator).
        self._resume_batch = int(ckpt.get("batch", 0))
        self._resume_rng = ckpt["rng"] if self._resume_batch else None

    def _run_stage(self, stage: Stage, state: LoopState) -> None:
        t, epochs = stage.train, stage.train.epochs
        for hook in self.hooks:
            hook.before_stage(self, stage, state)
        while state.epoch < epochs:
            state.sampler.set_epoch(state.epoch)
            if hasattr(state.loader.dataset, "set_epoch"):
                state.loader.dataset.set_epoch(state.epoch)
            stage.loss.set_epoch(state.epoch, epochs)
            self._set_mode(stage)
            skip, self._resume_batch = self._resume_batch, 0
            loader, on_start = state.loader, None
            if skip:
                loader = self._rest_of_epoch(state.loader, skip)
                rng, self._resume_rng = self._resume_rng, None
                on_start = functools.partial(set_rng_state, rng) if rng is not None else None
            try:
                stats = train_one_epoch(
                    state.wrapped, loader, self._step_fn(stage, state), state.optimizer, state.scheduler,
                    scaler=state.scaler, clip_grad_norm=t.clip_grad_norm, accum_steps=t.accum_steps,
                    log=self._log_fn(stage), log_interval=t.log_interval,
                    desc=f"{stage.name} {state.epoch + 1}/{epochs}", step=state.step, should_stop=self._should_stop,
                    on_start=on_start)
            except NonFiniteLossError as e:
                raise TrainingDiverged(f"{e} ({stage.name}, epoch {state.epoch + 1}); {self._last_good()}; lower "
                                       "train.lr, set train.clip_grad_norm or check the data, then start a new run "
                                       "(--work-dir NEW_DIR) or --resume from that checkpoint") from None
            state.step = stats["step"]
            if stats["interrupted"]:
                self._interrupted(stage, state, skip + stats["batches"])
            state.epoch += 1
            for hook in self.hooks:
                hook.after_epoch(self, stage, state, stats)
        for hook in self.hooks:
            hook.after_stage(self, stage, state)

    def _should_stop(self, step: int) -> bool:
        """Whether to stop after optimizer step ``step`` on SIGINT / SIGTERM. With several processes they must
        stop at the same step: the flag is all-reduced every ``train.log_interval`` steps (where the loop
        synchronizes with the device anyway), so a signal to any process stops them all there."""
        if not self.dist.enabled:
            return stop_requested()
        if step % self.cfg.train.log_interval:
            return False
        flag = torch.tensor([float(stop_requested())], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def _rest_of_epoch(self, loader: DataLoader, skip: int) -> DataLoader:
        """``loader`` without its first ``skip`` micro-batches (same sampler order, batch size and drop_last)."""
        return DataLoader(loader.dataset, batch_size=loader.batch_size,
                          sampler=_SkipSampler(loader.sampler, skip * loader.batch_size), shuffle=False,
                          num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                          drop_last=loader.drop_last, persistent_workers=False)

    def _last_good(self) -> str:
        if self.last_checkpoint is None:
            return "no checkpoint was written yet"
        epoch, step, batch = self.last_checkpoint
        within = f", batch {batch} of epoch {epoch + 1}" if batch else ""
        return f"the last good checkpoint is {self.work_dir / CHECKPOINT} (epoch {epoch}, step {step}{within})"

    def _interrupted(self, stage: Stage, state: LoopState, batches: int) -> None:
        """Stop on SIGINT / SIGTERM after a finished step: with ``train.checkpoint_on_signal`` write an interrupt
        checkpoint there first (epoch ``state.epoch``, ``batches`` micro-batches in), then raise
        :class:`Interrupted` naming the last checkpoint (the command adds the ``--resume`` line)."""
        interrupt = active()
        name = (interrupt.signal_name if interrupt is not None else None) or "a signal to another process"
        code = (interrupt.exit_code if interrupt is not None else None) or 143
        if stage.train.checkpoint_on_signal:
            self.save_checkpoint(stage, state, batch=batches)
        where = self._last_good().replace("the last good checkpoint is", "last checkpoint:")
        raise Interrupted(name, code, f"interrupted by {name} at step {state.step}; {where}")

    def _step_fn(self, stage: Stage, state: LoopState):
        def step(module: nn.Module, batch: Any):
            return self.task.train_step(module, batch, stage.loss, self.device, state.amp)

        return step

    def _log_fn(self, stage: Stage):
        def log_fn(step: int, loss: float, lr: float, parts: dict[str, float]) -> None:
            for hook in self.hooks:
                hook.after_step(self, stage, step, loss, lr, parts)

        return log_fn

    def save_checkpoint(self, stage: Stage, state: LoopState, batch: int = 0) -> None:
        """The model and the loop state, atomically (one writer; every rank reads it on ``--resume``).
        ``batch`` > 0: an interrupt checkpoint ``batch`` micro-batches into epoch ``state.epoch``."""
        self.last_checkpoint = (state.epoch, state.step, batch)
        if not self.dist.is_main:
            return
        payload = {"stage": state.index, "epoch": state.epoch, "batch": batch, "step": state.step,
                   "model": self.model.state_dict(),
                   "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
                   "sampler": state.sampler.state_dict(), "loss": stage.loss.state_dict(),
                   "scaler": state.scaler.state_dict() if state.scaler is not None else None, "rng": rng_state(),
                   "config": _plain(self.cfg.to_dict()), "history": self.history,
                   "num_classes": int(self.data.num_classes), "class_names": [str(n) for n in self.data.class_names]}
        save_checkpoint(payload, self.work_dir / CHECKPOINT)

    # ---------------------------------------------------------------------------- evaluation
    def eval_context(self, stage: Stage, step: int, epoch: int, split: str) -> EvalContext:
        e: EvalConfig = self.cfg.eval
        return EvalContext(class_counts=self.class_counts, many_threshold=e.many_threshold,
                           few_threshold=e.few_threshold, logit_adjust_tau=e.logit_adjust_tau,
                           scores=stage.loss.scores, model=self.model, reporter=self.reporter, step=step, epoch=epoch,
                           stage=stage.name, split=split)

    def run_inference(self, module: nn.Module, dataset: Dataset, evaluator: Any, desc: str) -> dict[str, Any]:
        """``evaluator``'s metrics of ``module`` on ``dataset`` (each process runs its shard ``dataset[rank::N]``)."""
        amp = self.cfg.train.amp and self.device.type == "cuda"
        loader = self.loader(rank_shard(dataset), self.cfg.eval.batch_size)

        def step(m: nn.Module, batch: Any) -> Any:
            return self.task.inference_step(m, batch, self.device, amp)

        with self.task.inference_context(module):
            return inference_on_dataset(module, loader, evaluator, step, desc=desc)

    def predict_dataset(self, module: nn.Module, dataset: Dataset, desc: str = "eval"
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs and labels of every sample of ``dataset`` in dataset order, on every rank (each process
        computes its shard ``dataset[rank::N]``)."""
        amp = self.cfg.train.amp and self.device.type == "cuda"
        out, labels = predict(module, self.loader(rank_shard(dataset), self.cfg.eval.batch_size), self.device,
                              amp=amp, amp_dtype=self.cfg.train.amp_dtype, desc=desc)
        return gather_shards(out, len(dataset)), gather_shards(labels, len(dataset))

    def evaluate(self, stage: Stage, step: int, epoch: int, final: bool = False) -> dict[str, Any]:
        """Evaluate with the task's evaluator; the history goes to the report, the final one to metrics.json."""
        split, dataset = self.eval_split(stage)
        ctx = self.eval_context(stage, step, epoch, split)
        report = self.run_inference(self.module(stage), dataset, self.task.evaluator(dataset, ctx), f"eval {split}")
        report.update(split=split, epoch=epoch, stage=stage.name,
                      class_names=[str(n) for n in self.data.class_names])
        self.task.report(report, ctx)
        bad = {name: s.bad_image_count for name in ("train", "val", "test")
               if (s := getattr(self.data, name, None)) is not None and hasattr(s, "bad_image_count")}
        if bad:  # images skipped with data.on_bad_image: skip (counted across loader workers)
            report["bad_images"] = bad
        self.history.append({"stage": stage.name, "epoch": epoch, **{k: report.get(k) for k in self.task.summary_keys}})
        report["history"] = self.history
        if self.reporter is not None:
            self.reporter.flush()
        if final and self.dist.is_main:
            atomic_write_text(self.work_dir / "metrics.json", json.dumps(report, indent=2) + "\n")
        return report


def _plain(obj: Any) -> Any:
    """Config as plain dicts/lists (checkpoint-safe for ``weights_only`` loading)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
