"""Training engine: plain loops, evaluators, hooks, tasks, and the Trainer that runs stages."""

from ltcls.engine.hooks import HookBase
from ltcls.engine.loops import predict, train_one_epoch
from ltcls.engine.stage import LoopState, Stage
from ltcls.engine.tasks import (
    Run,
    StepOutput,
    Task,
    build_model,
    build_run,
    build_stage_loss,
    build_task,
    seed_everything,
)
from ltcls.engine.trainer import CHECKPOINT, Trainer

__all__ = ["CHECKPOINT", "HookBase", "LoopState", "Run", "Stage", "StepOutput", "Task", "Trainer", "build_model",
           "build_run", "build_stage_loss", "build_task", "predict", "seed_everything", "train_one_epoch"]
