"""The one stage-2 runner: load the finished stage-1 run, let the method plan its stage, train / evaluate it with
the shared Trainer, compare with stage 1 (``comparison.md``) and write ``metrics.json``.

A method is a registered :class:`Stage2Method` (``METHODS``): ``plan(ctx)`` says how it trains (a :class:`Plan`:
the stage to run, optionally another model / task for it, how to finish the report), ``inference_model(...)``
which module a finished run of it predicts with, so loading a run for inference never builds training
machinery.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from ltcls.config import Config
from ltcls.data.base import DataSplits
from ltcls.engine.checkpoint import Checkpoint
from ltcls.engine.features import file_digest
from ltcls.engine.hooks import HookBase
from ltcls.engine.inference import InferenceRunner
from ltcls.engine.stage import Stage
from ltcls.engine.tasks import Task, build_task, seed_everything
from ltcls.engine.trainer import Trainer, default_hooks
from ltcls.registries import METHODS
from ltcls.reporting import Reporter
from ltcls.results import EvalReport
from ltcls.rundir import RunDir

log = logging.getLogger("ltcls")

#: ``comparison.md`` rows below stage 1: a name and the row's metrics.
Rows = list[tuple[str, Mapping[str, float | None]]]


@dataclass
class Stage2Context:
    """What a stage-2 method works with: the stage-2 config, the finished stage-1 run (config, directory), the
    data, the stage-1 model with its weights, the task, the inference runner and the TensorBoard reporter."""

    cfg: Config
    stage1_cfg: Config
    stage1_dir: RunDir
    data: DataSplits
    model: nn.Module
    task: Task
    runner: InferenceRunner
    reporter: Reporter | None
    #: The stage-1 checkpoint's digest (feature-cache keys); empty: computed on first use by :meth:`digest`.
    checkpoint_digest: str = ""

    @property
    def method(self) -> str:
        return self.cfg.stage2.method

    def digest(self) -> str:
        """The stage-1 checkpoint's digest, read only when a feature cache needs it."""
        if not self.checkpoint_digest:
            self.checkpoint_digest = file_digest(self.stage1_dir.checkpoint_path)
        return self.checkpoint_digest


@dataclass
class Plan:
    """A method's answer: the stage to run, optionally on another model / task, and how its report ends.

    ``finish(report)`` returns the final report (with the method's sections added) and the rows below stage 1 in
    ``comparison.md`` (default: the report unchanged and one row, the stage-2 model). ``title`` heads
    ``comparison.md``; ``tau``: tau-norm's chosen tau, stored in the checkpoint of a stage that only evaluates."""

    stage: Stage
    model: nn.Module | None = None
    task: Task | None = None
    finish: Callable[[EvalReport], tuple[EvalReport, Rows]] | None = None
    title: str | None = None
    tau: float | None = None


@dataclass
class ClassFacts:
    """What building a classification model and loss needs of the data, read from a run's files (prediction and
    export load a run without its dataset)."""

    num_classes: int
    class_counts: np.ndarray
    class_names: list[str]


class Stage2Method:
    """Base of the registered stage-2 methods."""

    def plan(self, ctx: Stage2Context) -> Plan:
        """How the method trains (or evaluates) on the finished stage-1 run."""
        raise NotImplementedError

    def inference_model(self, cfg: Config, stage1_model: nn.Module, data: ClassFacts | DataSplits, ckpt: Checkpoint
                        ) -> nn.Module:
        """The module a finished run of this method predicts with, before its checkpoint's weights are loaded:
        ``stage1_model`` (the stage-1 architecture) with the method's head or wrapper; ``data``: the run's data,
        or the facts about it its files give (number of classes, class counts, names)."""
        raise NotImplementedError

    def inference_task(self, cfg: Config, task: Task) -> Task:
        """The task that evaluates a finished run of this method (``task``: the stage-1 one)."""
        return task


def method_of(name: str) -> Stage2Method:
    """The registered stage-2 method ``name``."""
    return METHODS.get(name)()


def comparison_table(rows: Rows, keys: tuple[str, ...]) -> str:
    """Markdown table: ``keys`` of each row (``n/a`` where a value is missing)."""
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, r in rows:
        lines.append(f"| {name} | " + " | ".join("n/a" if r.get(k) is None else f"{r[k]:.2f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"


@dataclass
class Stage1:
    """A finished stage-1 run loaded for its second stage: its config and directory, the stage-2 data and the
    stage-1 model with the checkpoint's weights."""

    cfg: Config
    run_dir: RunDir
    data: DataSplits
    model: nn.Module


def load_stage1(cfg: Config, task: Task) -> Stage1:
    """Seed, build the data of the stage-2 config ``cfg`` and the model of the finished run ``cfg.stage2.from_run``,
    and load its checkpoint (a :class:`CheckpointError` naming the file if it cannot be read or does not fit)."""
    stage1_dir = RunDir(cfg.stage2.from_run)
    stage1_dir.require_finished("stage-1 run")
    stage1_cfg = stage1_dir.config()
    seed_everything(cfg.train.seed)
    data = task.build_data(cfg)
    model = task.build_model(stage1_cfg, data)
    Checkpoint.load(stage1_dir.checkpoint_path).load_into(
        model, stage1_dir.checkpoint_path, "the stage-1 model (did the data's number of classes change?)")
    return Stage1(stage1_cfg, stage1_dir, data, model)


def run_stage2(cfg: Config, run_dir: RunDir, reporter: Reporter | None, resume: Checkpoint | None = None,
               hooks: Sequence[HookBase] = (), stage1: Stage1 | None = None) -> tuple[EvalReport, Task]:
    """Run the stage-2 method ``cfg.stage2.method`` on the finished run ``cfg.stage2.from_run``; ``hooks`` run
    after the default ones; ``resume``: the stage-2 run's checkpoint to continue from; ``stage1``: that run as
    :func:`load_stage1` loaded it already (the command's start-up checks do), else it is loaded here. Returns the
    final report and the task that evaluated it."""
    task = build_task(cfg)
    stage1 = stage1 if stage1 is not None else load_stage1(cfg, task)
    runner = InferenceRunner.for_config(cfg, task)
    ctx = Stage2Context(cfg=cfg, stage1_cfg=stage1.cfg, stage1_dir=stage1.run_dir, data=stage1.data,
                        model=stage1.model, task=task, runner=runner, reporter=reporter)
    plan = method_of(cfg.stage2.method).plan(ctx)
    task = plan.task or task
    trainer = Trainer(plan.model or stage1.model, stage1.data, cfg, run_dir, task, reporter,
                      [*default_hooks(cfg, reporter), *hooks])
    report = trainer.fit([plan.stage], resume=resume)
    report, rows = plan.finish(report) if plan.finish is not None else (report, [])
    rows = rows or [(f"stage 2 ({ctx.method})", report.metrics())]
    table = comparison_table([("stage 1", stage1.run_dir.metrics()), *rows], task.comparison_keys)
    if trainer.dist.is_main:
        if plan.stage.train is None:  # a stage that only evaluates: its checkpoint is the model it evaluated
            trainer.checkpoint(plan.stage, tau=plan.tau).save(run_dir.checkpoint_path)
        title = plan.title or f"{stage1.run_dir} -> {ctx.method}"
        run_dir.write_comparison(f"# {title}\n\n{task.metric_title} on the {report.split} split\n\n" + table)
        run_dir.write_metrics(report.to_json())
    log.info("stage 1 vs stage 2 (%s):\n%s", ctx.method, table)
    return report, task
