"""The one inference path: a model, a dataset and an evaluator. Training's evaluation, stage 2 (features, tau
sweeps, dual heads), ``ltcls-eval`` and ``ltcls-predict`` all run through :class:`InferenceRunner`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ltcls.config import Config
from ltcls.data.base import Split
from ltcls.engine.distributed import info, rank_shard
from ltcls.engine.evaluation import DatasetEvaluator, OutputsEvaluator
from ltcls.engine.loaders import LoaderFactory
from ltcls.engine.tasks import Task
from ltcls.results import Evaluation

#: ``step(module, batch) -> outputs`` of one batch (the task's inference step by default).
Step = Callable[[nn.Module, Sequence[object]], object]


def resolve_device(name: str) -> torch.device:
    """``train.device`` as a torch device (``auto``: CUDA when there is one)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device is '{name}' but CUDA is not available; use 'auto' or 'cpu'")
    return device


@dataclass
class InferenceRunner:
    """Runs a module over a dataset in eval mode, each process on its shard ``dataset[rank::N]``, into an
    evaluator (which gathers the shards)."""

    task: Task
    device: torch.device
    loaders: LoaderFactory
    batch_size: int
    amp: bool = False

    @classmethod
    def for_config(cls, cfg: Config, task: Task, device: torch.device | None = None) -> InferenceRunner:
        device = device if device is not None else resolve_device(cfg.train.device)
        loaders = LoaderFactory(cfg.train.num_workers, device, task.collate_fn)
        return cls(task, device, loaders, cfg.eval.batch_size, cfg.train.amp and device.type == "cuda")

    @torch.no_grad()
    def evaluate(self, module: nn.Module, dataset: Split, evaluator: DatasetEvaluator, desc: str = "eval",
                 step: Step | None = None, progress: bool = True) -> Evaluation:
        """``evaluator``'s result of ``module`` (eval mode, the task's inference context) on ``dataset``."""
        step = step or self._step
        loader = self.loaders(rank_shard(dataset), self.batch_size)
        was_training = module.training
        module.eval()
        evaluator.reset()
        try:
            with self.task.inference_context(module):
                for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0,
                                  disable=not (progress and info().is_main)):
                    evaluator.process(batch, step(module, batch))
        finally:
            module.train(was_training)
        return evaluator.evaluate()

    def predict(self, module: nn.Module, dataset: Split, desc: str = "predict", progress: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs (float32, CPU) and labels of every sample of ``dataset``, in dataset order, on every rank."""
        collector = OutputsEvaluator(len(dataset))
        self.evaluate(module, dataset, collector, desc, progress=progress)
        return collector.outputs()

    def _step(self, module: nn.Module, batch: Sequence[object]) -> object:
        return self.task.inference_step(module, batch, self.device, self.amp)
