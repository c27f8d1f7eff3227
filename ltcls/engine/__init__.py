"""Training engine: the plain loop, evaluators, the inference runner, the loader factory, hooks, tasks, and the
Trainer that runs stages."""

from ltcls.engine.checkpoint import Checkpoint
from ltcls.engine.hooks import HookBase
from ltcls.engine.inference import InferenceRunner
from ltcls.engine.loaders import LoaderFactory
from ltcls.engine.loops import train_one_epoch
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
from ltcls.engine.trainer import Trainer

__all__ = ["Checkpoint", "HookBase", "InferenceRunner", "LoaderFactory", "LoopState", "Run", "Stage", "StepOutput",
           "Task", "Trainer", "build_model", "build_run", "build_stage_loss", "build_task", "seed_everything",
           "train_one_epoch"]
