"""Hooks (detectron2's ``HookBase`` idea): what happens around the training loop without the loop knowing.

The Trainer calls ``before_stage``, ``after_step`` (every ``train.log_interval`` optimizer steps),
``after_epoch`` and ``after_stage`` on each hook in order. Evaluation, checkpoints and TensorBoard writing
are hooks; a stage-2 method or a plug-in can add its own.
"""

from __future__ import annotations

import logging
from typing import Any

from ltcls.engine.optim import describe_optimizer, parameter_counts, scaled_lr
from ltcls.engine.stage import LoopState, Stage
from ltcls.reporting import Reporter
from ltcls.results import EpochStats

#: The running ``ltcls.engine.trainer.Trainer`` (not imported: the Trainer imports the hooks).
Trainer = Any

log = logging.getLogger("ltcls")


class HookBase:
    """No-op base; override what you need. ``trainer`` is the running Trainer."""

    def before_stage(self, trainer: Trainer, stage: Stage, state: LoopState) -> None:
        pass

    def after_step(self, trainer: Trainer, stage: Stage, step: int, loss: float, lr: float,
                   parts: dict[str, float]) -> None:
        pass

    def after_epoch(self, trainer: Trainer, stage: Stage, state: LoopState, stats: EpochStats) -> None:
        pass

    def after_stage(self, trainer: Trainer, stage: Stage, state: LoopState) -> None:
        pass


class EpochLogHook(HookBase):
    """What a stage will do (samples and optimizer steps per epoch, the learning rate and its scaling, the
    warm-up; the trainable and total parameter counts and the optimizer's groups) at its start; one line per
    epoch: loss, lr (the first parameter group's: the head's), throughput, time."""

    def before_stage(self, trainer: Trainer, stage: Stage, state: LoopState) -> None:
        t = stage.train
        lr = scaled_lr(t)
        scaled = (f" (train.lr {t.lr:g} for base batch {t.base_batch_size}, scaled linearly to batch {t.batch_size})"
                  if t.base_batch_size else "")
        warmup = (f", warm-up {state.warmup_steps} steps from {t.warmup_ratio:g} x lr" if state.warmup_steps else "")
        samples = len(state.sampler) * trainer.dist.world_size
        log.info("%s: %d epochs x %d steps (%d samples per epoch, %s sampler, batch %d), lr %.4g%s%s", stage.name,
                 t.epochs, state.steps_per_epoch, samples, stage.sampler.name, t.batch_size, lr, scaled, warmup)
        trainable, total = parameter_counts(trainer.model)
        log.info("%s: %s of %s parameters train (%.2f%%); %s", stage.name, f"{trainable:,}", f"{total:,}",
                 100.0 * trainable / max(total, 1), describe_optimizer(t, state.optimizer))

    def after_epoch(self, trainer: Trainer, stage: Stage, state: LoopState, stats: EpochStats) -> None:
        log.info("%s epoch %d/%d  loss %.4f  lr %.4g  %.0f img/s  (%.1fs)", stage.name, state.epoch, stage.train.epochs,
                 stats.loss, state.optimizer.param_groups[0]["lr"], stats.images_per_s, stats.seconds)


class TensorBoardHook(HookBase):
    """``train/loss``, ``train/lr`` and every loss part as ``train/<part>`` each logged step; the epoch's mean
    loss and throughput each epoch."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter

    def after_step(self, trainer: Trainer, stage: Stage, step: int, loss: float, lr: float,
                   parts: dict[str, float]) -> None:
        self.reporter.scalar("train/loss", loss, step)
        self.reporter.scalar("train/lr", lr, step)
        for name, value in parts.items():
            self.reporter.scalar(f"train/{name}", value, step)

    def after_epoch(self, trainer: Trainer, stage: Stage, state: LoopState, stats: EpochStats) -> None:
        self.reporter.scalar("train/epoch_loss", stats.loss, state.step)
        self.reporter.scalar("train/images_per_s", stats.images_per_s, state.step)


class EvalHook(HookBase):
    """Evaluate every ``interval`` epochs (0: only at the end) and once after each stage (the final report,
    written to metrics.json by the Trainer)."""

    def __init__(self, interval: int) -> None:
        self.interval = interval

    def after_epoch(self, trainer: Trainer, stage: Stage, state: LoopState, stats: EpochStats) -> None:
        if self.interval and state.epoch % self.interval == 0 and state.epoch < stage.train.epochs:
            trainer.evaluate(stage, state.step, epoch=state.epoch)

    def after_stage(self, trainer: Trainer, stage: Stage, state: LoopState) -> None:
        trainer.final_report = trainer.evaluate(stage, state.step, epoch=state.epoch, final=True)


class CheckpointHook(HookBase):
    """Write the run's checkpoint (atomically) after every epoch, from the main process."""

    def after_epoch(self, trainer: Trainer, stage: Stage, state: LoopState, stats: EpochStats) -> None:
        trainer.save_checkpoint(stage, state)
