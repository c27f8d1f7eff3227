"""One trainer for every mode: it runs a list of :class:`Stage` objects on one model.

End-to-end training is one stage. A decoupled second stage is another ``Stage`` whose owner froze what must
not train (``requires_grad`` as the model sets it is honoured) and names the modules kept in eval mode
(BatchNorm statistics of a frozen backbone do not move); stages are data, not copies of the loop. What
happens around the loop (evaluation, checkpoints, TensorBoard) is done by hooks
(:mod:`ltcls.engine.hooks`); what differs between classification and detection by the task
(:mod:`ltcls.engine.tasks`), which is told what it needs and never reads the Trainer. Loaders come from one
factory (:mod:`ltcls.engine.loaders`), inference from one runner (:mod:`ltcls.engine.inference`), the
checkpoint is a :class:`ltcls.engine.checkpoint.Checkpoint` in the run's :class:`ltcls.rundir.RunDir`.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ltcls.config import Config
from ltcls.data.base import DataSplits, Split
from ltcls.data.build import build_sampler
from ltcls.data.tta import TTA
from ltcls.engine.checkpoint import Checkpoint, TrainingState, rng_state, set_rng_state
from ltcls.engine.distributed import info as dist_info
from ltcls.engine.evaluation import EvalContext
from ltcls.engine.hooks import CheckpointHook, EpochLogHook, EvalHook, HookBase, TensorBoardHook
from ltcls.engine.inference import InferenceRunner, resolve_device
from ltcls.engine.loaders import LoaderFactory
from ltcls.engine.loops import NonFiniteLossError, StepOptions, train_one_epoch
from ltcls.engine.optim import build_optimizer
from ltcls.engine.preflight import check_batch_split
from ltcls.engine.signals import Interrupted, active, stop_requested
from ltcls.engine.stage import LoopState, Stage
from ltcls.engine.tasks import StepOutput, Task
from ltcls.reporting import Reporter
from ltcls.results import EpochStats, EvalReport, HistoryEntry, Values
from ltcls.rundir import RunDir

log = logging.getLogger("ltcls")

__all__ = ["Trainer", "TrainingDiverged", "default_hooks", "lr_factor", "resolve_device"]


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


class TrainingDiverged(RuntimeError):
    """The loss became NaN / infinite; the message names the step, the value and the last good checkpoint."""


def default_hooks(cfg: Config, reporter: Reporter | None) -> list[HookBase]:
    """Epoch log, TensorBoard (main process), evaluation every ``eval.interval`` epochs and at the end, and
    a checkpoint every epoch."""
    hooks: list[HookBase] = [EpochLogHook()]
    if reporter is not None:
        hooks.append(TensorBoardHook(reporter))
    return [*hooks, EvalHook(cfg.eval.interval), CheckpointHook()]


class Trainer:
    """Owns the model, data, device, hooks and checkpoints of one run directory."""

    def __init__(self, model: nn.Module, data: DataSplits, cfg: Config, run_dir: RunDir, task: Task,
                 reporter: Reporter | None = None, hooks: Sequence[HookBase] | None = None) -> None:
        self.task = task
        self.dist = dist_info()
        self.data = data
        self.cfg = cfg
        self.run_dir = run_dir
        if self.dist.is_main:
            run_dir.path.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(cfg.train.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if cfg.train.sync_bn and self.dist.enabled and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # CUDA only in PyTorch
        self.model = model.to(self.device)
        self.reporter = reporter
        self.hooks = list(hooks) if hooks is not None else default_hooks(cfg, reporter)
        self.loaders = LoaderFactory(cfg.train.num_workers, self.device, task.collate_fn)
        self.runner = InferenceRunner(task, self.device, self.loaders, cfg.eval.batch_size,
                                      cfg.train.amp and self.device.type == "cuda")
        self.history: list[HistoryEntry] = []
        self.final_report: EvalReport | None = None
        #: ``(epoch, step, batch)`` of the checkpoint this run last wrote or resumed from (None: none yet).
        self.last_checkpoint: tuple[int, int, int] | None = None
        self._resume_batch, self._resume_rng = 0, None

    def eval_split(self, stage: Stage | None = None) -> tuple[str, Split]:
        """The configured evaluation split (``eval.split``), as the stage sees it (images or features)."""
        split = self.cfg.eval.split
        if stage is not None and split in stage.eval_sets:
            return split, stage.eval_sets[split]
        return split, self.data.get(split)

    def module(self, stage: Stage) -> nn.Module:
        return stage.module if stage.module is not None else self.model

    # ------------------------------------------------------------------------------ training
    def _setup(self, index: int, stage: Stage) -> LoopState:
        t, d = stage.train, self.dist
        check_batch_split(t, d.world_size)
        train_set = stage.train_set if stage.train_set is not None else self.data.train
        train_set.seed_augmentation(t.seed)
        sampler = build_sampler(stage.sampler.to_dict(), train_set.targets, seed=t.seed, epochs=t.epochs,
                                num_replicas=d.world_size, rank=d.rank, dataset=train_set)
        micro_batch = t.batch_size // (d.world_size * t.accum_steps)
        loader = self.loaders(train_set, micro_batch, sampler, train=True)
        module = self.module(stage).to(self.device)
        if t.channels_last and self.device.type == "cuda":
            module.to(memory_format=torch.channels_last)
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{stage.name}: nothing to train (every parameter is frozen)")
        optimizer = build_optimizer(t, module)
        steps = max(len(loader) // t.accum_steps, 1)
        warmup = t.warmup_steps(steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
            s, steps_per_epoch=steps, epochs=t.epochs, schedule=t.schedule, warmup_steps=warmup,
            warmup_ratio=t.warmup_ratio, milestones=t.milestones, gamma=t.gamma))
        amp = t.amp and self.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda") if amp and t.amp_dtype == "float16" else None
        stage.loss.to(self.device)
        wrapped, no_sync = module, None
        if d.enabled:
            wrapped = DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda"
                                              else None)
            no_sync = wrapped.no_sync
        if t.compile:
            wrapped = torch.compile(wrapped)
        opts = StepOptions(scaler, t.clip_grad_norm, t.accum_steps, no_sync)
        return LoopState(index, train_set, micro_batch, loader, sampler, optimizer, scheduler, opts, amp, wrapped,
                         steps_per_epoch=steps, warmup_steps=warmup)

    def _set_mode(self, stage: Stage) -> None:
        self.model.train()
        self.module(stage).train()
        for m in stage.eval_modules:
            m.eval()

    def fit(self, stages: list[Stage], resume: Checkpoint | None = None) -> EvalReport:
        """Run every stage in order (continuing from ``resume``, the run's checkpoint); returns the final
        report."""
        start_stage, start_epoch, step, ckpt = 0, 0, 0, resume
        if ckpt is not None:
            ckpt.load_into(self.model, self.run_dir.checkpoint_path)
            self.history = [HistoryEntry.from_json(h) for h in ckpt.history]
            self.last_checkpoint = ckpt.position
            if ckpt.training is not None:
                t = ckpt.training
                start_stage, start_epoch, step = t.stage, t.epoch, t.step
            log.info("resuming %s at stage %d, epoch %d%s", self.run_dir, start_stage, start_epoch,
                     f", batch {ckpt.position[2]} (an interrupt checkpoint)" if ckpt.position[2] else "")
        for index, stage in enumerate(stages):
            if index < start_stage:
                continue
            if stage.train is None:  # evaluation-only stage
                self.final_report = self.evaluate(stage, step, epoch=0, final=True)
                continue
            state = self._setup(index, stage)
            state.step = step
            if ckpt is not None and ckpt.training is not None and index == start_stage:
                self._restore(stage, state, ckpt)
                state.epoch = start_epoch
            self._run_stage(stage, state)
            step = state.step
        return self.final_report

    def _restore(self, stage: Stage, state: LoopState, ckpt: Checkpoint) -> None:
        t = ckpt.training
        state.optimizer.load_state_dict(t.optimizer)
        state.scheduler.load_state_dict(t.scheduler)
        state.sampler.load_state_dict(t.sampler)
        if ckpt.loss is not None:
            stage.loss.load_state_dict(ckpt.loss)
        if state.opts.scaler is not None and t.scaler:
            state.opts.scaler.load_state_dict(t.scaler)
        set_rng_state(t.rng)
        # An interrupt checkpoint (train.checkpoint_on_signal) lies inside epoch ``epoch``, after ``batch``
        # micro-batches: that epoch resumes with the rest of its sampler order, the RNG state set again once
        # the new loader iterator exists (creating one draws a seed from torch's generator).
        self._resume_batch = t.batch
        self._resume_rng = t.rng if t.batch else None

    def _run_stage(self, stage: Stage, state: LoopState) -> None:
        for hook in self.hooks:
            hook.before_stage(self, stage, state)
        while state.epoch < stage.train.epochs:
            skip = self._resume_batch
            stats = self._run_epoch(stage, state)
            state.step = stats.step
            if stats.interrupted:
                self._interrupted(stage, state, skip + stats.batches)
            state.epoch += 1
            for hook in self.hooks:
                hook.after_epoch(self, stage, state, stats)
        for hook in self.hooks:
            hook.after_stage(self, stage, state)

    def _run_epoch(self, stage: Stage, state: LoopState) -> EpochStats:
        """One epoch of ``stage`` (the rest of an interrupted one after a mid-epoch resume)."""
        t, epochs = stage.train, stage.train.epochs
        state.sampler.set_epoch(state.epoch)
        state.train_set.set_epoch(state.epoch)
        stage.loss.set_epoch(state.epoch, epochs)
        self._set_mode(stage)
        skip, self._resume_batch = self._resume_batch, 0
        loader, on_start = state.loader, None
        if skip:
            loader = self.loaders(state.train_set, state.micro_batch, state.sampler, train=True, skip=skip)
            rng, self._resume_rng = self._resume_rng, None
            on_start = functools.partial(set_rng_state, rng) if rng is not None else None
        try:
            return train_one_epoch(
                state.wrapped, loader, self._step_fn(stage, state), state.optimizer, state.scheduler, state.opts,
                log=self._log_fn(stage), log_interval=t.log_interval, desc=f"{stage.name} {state.epoch + 1}/{epochs}",
                step=state.step, should_stop=self._should_stop, on_start=on_start)
        except NonFiniteLossError as e:
            raise TrainingDiverged(f"{e} ({stage.name}, epoch {state.epoch + 1}); {self._last_good()}; lower "
                                   "train.lr, set train.clip_grad_norm or check the data, then start a new run "
                                   "(--work-dir NEW_DIR) or --resume from that checkpoint") from None

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

    def _last_good(self) -> str:
        if self.last_checkpoint is None:
            return "no checkpoint was written yet"
        epoch, step, batch = self.last_checkpoint
        within = f", batch {batch} of epoch {epoch + 1}" if batch else ""
        return f"the last good checkpoint is {self.run_dir.checkpoint_path} (epoch {epoch}, step {step}{within})"

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
        raise Interrupted(name, code, f"interrupted by {name} at step {state.step}; {where}",
                          has_checkpoint=self.last_checkpoint is not None)

    def _step_fn(self, stage: Stage, state: LoopState) -> Callable[[nn.Module, object], StepOutput]:
        def step(module: nn.Module, batch: object) -> StepOutput:
            return self.task.train_step(module, batch, stage.loss, self.device, state.amp)

        return step

    def _log_fn(self, stage: Stage) -> Callable[[int, float, float, dict[str, float]], None]:
        def log_fn(step: int, loss: float, lr: float, parts: dict[str, float]) -> None:
            for hook in self.hooks:
                hook.after_step(self, stage, step, loss, lr, parts)

        return log_fn

    def checkpoint(self, stage: Stage, training: TrainingState | None = None, tau: float | None = None) -> Checkpoint:
        """The run's checkpoint now: the model, the config, the classes and history, the loop state."""
        return Checkpoint(model=self.model.state_dict(), config=self.cfg.to_dict(),
                          num_classes=int(self.data.num_classes), class_names=[str(n) for n in self.data.class_names],
                          history=[h.to_json() for h in self.history], training=training,
                          loss=stage.loss.state_dict(), method=self.cfg.stage2.method, tau=tau)

    def save_checkpoint(self, stage: Stage, state: LoopState, batch: int = 0) -> None:
        """The model and the loop state, atomically (one writer; every rank reads it on ``--resume``).
        ``batch`` > 0: an interrupt checkpoint ``batch`` micro-batches into epoch ``state.epoch``."""
        self.last_checkpoint = (state.epoch, state.step, batch)
        if not self.dist.is_main:
            return
        scaler = state.opts.scaler
        training = TrainingState(stage=state.index, epoch=state.epoch, step=state.step,
                                 optimizer=state.optimizer.state_dict(), scheduler=state.scheduler.state_dict(),
                                 sampler=state.sampler.state_dict(), rng=rng_state(),
                                 scaler=scaler.state_dict() if scaler is not None else None, batch=batch,
                                 world_size=self.dist.world_size)
        self.checkpoint(stage, training).save(self.run_dir.checkpoint_path)

    # ---------------------------------------------------------------------------- evaluation
    def eval_context(self, stage: Stage, step: int, epoch: int, split: str) -> EvalContext:
        e = self.cfg.eval
        return EvalContext(class_counts=self.data.class_counts, many_threshold=e.many_threshold,
                           few_threshold=e.few_threshold, logit_adjust_tau=e.logit_adjust_tau,
                           scores=stage.loss.scores, model=self.model, reporter=self.reporter, step=step, epoch=epoch,
                           stage=stage.name, split=split, scratch_dir=self.run_dir.eval_scratch)

    def evaluate(self, stage: Stage, step: int, epoch: int, final: bool = False) -> EvalReport:
        """Evaluate with the task's evaluator; the report joins the history; the final one goes to metrics.json."""
        split, dataset = self.eval_split(stage)
        ctx = self.eval_context(stage, step, epoch, split)
        module, views = TTA.from_config(self.cfg).apply(self.module(stage), dataset)  # eval.tta (none: unchanged)
        evaluation = self.runner.evaluate(module, views, self.task.evaluator(dataset, ctx), f"eval {split}")
        report = EvalReport.of(evaluation, split=split, epoch=epoch, stage=stage.name,
                               num_classes=int(self.data.num_classes), class_names=self.data.class_names)
        bad = {name: self.data.get(name).bad_image_count for name in ("train", "val", "test") if self.data.has(name)}
        if any(bad.values()):  # images skipped with data.on_bad_image: skip (counted across loader workers)
            report = report.with_sections(Values({"bad_images": {k: v for k, v in bad.items() if v}}))
        self.task.report(report, ctx)
        self.history.append(report.history_entry(self.task.summary_keys))
        report = report.with_history(self.history)
        if self.reporter is not None:
            self.reporter.flush()
        if final and self.dist.is_main:
            self.run_dir.write_metrics(report.to_json())
        return report
