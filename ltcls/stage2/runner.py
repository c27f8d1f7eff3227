"""The one stage-2 runner: load the finished stage-1 run, let the method build its stage, train / evaluate it
with the shared Trainer, compare with stage 1 (``comparison.md``) and write ``metrics.json``.

A method (registered in ``METHODS``) is ``method(ctx: Stage2Context) -> Plan``. The context holds the
stage-2 config, the stage-1 config and directory, the data, the stage-1 model with its checkpoint loaded,
the task and a Trainer on them; the plan says which stage to run, and optionally another model / task for
it (SimCal wraps the detector) and how to fill the comparison.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ltcls.config import Config
from ltcls.data.base import DataSplits
from ltcls.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ltcls.engine.features import file_digest
from ltcls.engine.hooks import HookBase
from ltcls.engine.stage import Stage
from ltcls.engine.tasks import Task, build_task, seed_everything
from ltcls.engine.trainer import CHECKPOINT, Trainer, default_hooks
from ltcls.io import atomic_write_text
from ltcls.registries import METHODS
from ltcls.reporting import Reporter, write_json
from ltcls.stage2.presets import finished_run_config

log = logging.getLogger("ltcls")

Rows = list[tuple[str, dict[str, Any]]]


@dataclass
class Stage2Context:
    """What a stage-2 method works with."""

    cfg: Config
    stage1_cfg: Config
    stage1_dir: Path
    data: DataSplits
    model: nn.Module
    task: Task
    trainer: Trainer
    reporter: Reporter | None
    #: The stage-1 checkpoint's digest (feature-cache keys); empty: computed on first use by :meth:`digest`.
    checkpoint_digest: str = ""

    @property
    def method(self) -> str:
        return self.cfg.stage2.method

    def digest(self) -> str:
        """The stage-1 checkpoint's digest, read only when a feature cache needs it."""
        if not self.checkpoint_digest:
            self.checkpoint_digest = file_digest(self.stage1_dir / CHECKPOINT)
        return self.checkpoint_digest


@dataclass
class Plan:
    """A method's answer: the stage to run, optionally on another model / task, and the comparison rows.

    ``rows(report)`` may add method-specific entries to the report and returns the rows below stage 1 in
    ``comparison.md`` (default: one row, the stage-2 model). ``title`` heads ``comparison.md``."""

    stage: Stage
    model: nn.Module | None = None
    task: Task | None = None
    rows: Callable[[dict[str, Any]], Rows] | None = None
    title: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def comparison_table(rows: Rows, keys: tuple[str, ...]) -> str:
    """Markdown table: ``keys`` of each row (``n/a`` where a value is missing)."""
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, r in rows:
        lines.append(f"| {name} | " + " | ".join("n/a" if r.get(k) is None else f"{r[k]:.2f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def save_evaluated_model(trainer: Trainer, report: dict[str, Any], path: Path) -> None:
    """The checkpoint of a stage that only evaluates (tau-norm, NCM): the model it evaluated (NCM's class means
    are buffers), the class names and the chosen ``tau``, so the run can be evaluated and exported later.
    ``stage`` / ``epoch`` / ``step`` are 0: ``--resume`` evaluates it again."""
    payload = {"stage": 0, "epoch": 0, "step": 0, "model": trainer.model.state_dict(),
               "config": trainer.cfg.to_dict(), "num_classes": int(trainer.data.num_classes),
               "class_names": [str(n) for n in trainer.data.class_names], "history": trainer.history,
               "stage2": {"method": trainer.cfg.stage2.method, "tau": report.get("tau")}}
    save_checkpoint(payload, path)


@dataclass
class Stage1:
    """A finished stage-1 run loaded for its second stage: its config, the stage-2 data and the stage-1 model
    with the checkpoint's weights."""

    cfg: Config
    data: DataSplits
    model: nn.Module


def load_stage1(cfg: Config, task: Task) -> Stage1:
    """Seed, build the data of the stage-2 config ``cfg`` and the model of the finished run ``cfg.stage2.from_run``,
    and load its checkpoint (a :class:`CheckpointError` naming the file if it cannot be read or does not fit)."""
    stage1_dir = Path(cfg.stage2.from_run)
    stage1_cfg = finished_run_config(stage1_dir)
    ckpt_path = stage1_dir / CHECKPOINT
    seed_everything(cfg.train.seed)
    data = task.build_data(cfg)
    model = task.build_model(stage1_cfg, data)
    state = load_checkpoint(ckpt_path)["model"]  # an unreadable file: its own CheckpointError
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"the stage-1 checkpoint {ckpt_path} does not fit the stage-1 model (did the data's "
                              f"number of classes change?): {first}") from None
    return Stage1(stage1_cfg, data, model)


def run_stage2(cfg: Config, work_dir: Path, reporter: Reporter | None, resume: bool = False,
               hooks: Sequence[HookBase] = (), stage1: Stage1 | None = None) -> tuple[dict[str, Any], Task]:
    """Run the stage-2 method ``cfg.stage2.method`` on the finished run ``cfg.stage2.from_run``; ``hooks`` run
    after the default ones; ``stage1``: that run as :func:`load_stage1` loaded it already (the command's
    start-up checks do), else it is loaded here. Returns the final report and the task that evaluated it."""
    stage1_dir = Path(cfg.stage2.from_run)
    method = METHODS.get(cfg.stage2.method)
    task = build_task(cfg)
    stage1 = stage1 if stage1 is not None else load_stage1(cfg, task)
    stage1_cfg, data, model = stage1.cfg, stage1.data, stage1.model
    all_hooks = [*default_hooks(cfg, reporter), *hooks]
    trainer = Trainer(model, data, cfg, work_dir, task, reporter, all_hooks)
    ctx = Stage2Context(cfg=cfg, stage1_cfg=stage1_cfg, stage1_dir=stage1_dir, data=data, model=model, task=task,
                        trainer=trainer, reporter=reporter)
    plan = method(ctx)
    if plan.model is not None or plan.task is not None:
        task = plan.task or task
        trainer = Trainer(plan.model or model, data, cfg, work_dir, task, reporter, all_hooks)
    trainer.model.to(trainer.device)
    report = trainer.fit([plan.stage], resume=resume)
    report.update(plan.extra)
    rows = plan.rows(report) if plan.rows is not None else [(f"stage 2 ({ctx.method})", report)]
    stage1_metrics = json.loads((stage1_dir / "metrics.json").read_text())
    table = comparison_table([("stage 1", stage1_metrics), *rows], task.comparison_keys)
    if trainer.dist.is_main:
        if plan.stage.train is None:
            save_evaluated_model(trainer, report, work_dir / CHECKPOINT)
        title = plan.title or f"{stage1_dir} -> {ctx.method}"
        atomic_write_text(work_dir / "comparison.md",
                          f"# {title}\n\n{task.metric_title} on the {report['split']} split\n\n" + table)
        write_json(work_dir / "metrics.json", report)
    log.info("stage 1 vs stage 2 (%s):\n%s", ctx.method, table)
    return report, task
