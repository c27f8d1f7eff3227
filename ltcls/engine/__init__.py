"""Training engine: plain loops, a Stage dataclass and the Trainer that runs stages."""

from ltcls.engine.build import build_model, build_run, build_task, seed_everything
from ltcls.engine.loops import predict, train_one_epoch
from ltcls.engine.trainer import CHECKPOINT, Stage, Trainer

__all__ = ["CHECKPOINT", "Stage", "Trainer", "build_model", "build_run", "build_task", "predict", "seed_everything",
           "train_one_epoch"]
