"""A stage-2 method's config: the finished stage-1 run's config with the method's preset applied (then the
user's ``--set``). Torch-free: the command line resolves a stage-2 config before importing anything heavy."""

from __future__ import annotations

import copy

from ltcls import config as C
from ltcls.registries import METHODS, task_of
from ltcls.rundir import RunDir


def preset(method: str, data_name: str) -> C.PlainConfig:
    """The method's preset, with its per-dataset overrides (``preset_by_dataset``) for ``data_name`` on top."""
    meta = METHODS.meta(method)
    out = copy.deepcopy(meta.get("preset", {}))
    for section, values in meta.get("preset_by_dataset", {}).get(data_name, {}).items():
        out[section] = {**out.get(section, {}), **values}
    return out


def stage2_base_config(stage1_cfg: C.Config, method: str, stage1_dir: RunDir) -> C.PlainConfig:
    """The stage-1 config with ``method``'s preset applied (to be resolved with the user's ``--set``).

    A method applies to runs of one task (``METHODS`` metadata): a detection run's second stage is not a
    classification method, and the other way round; the error names the methods that fit."""
    task = task_of(stage1_cfg.data.name)
    wanted = METHODS.meta(method).get("task", "classification")
    if wanted != task:
        fits = [m for m in METHODS.names() if METHODS.meta(m).get("task", "classification") == task]
        raise C.ConfigError(f"--stage2 {method} applies to {wanted} runs; {stage1_dir} is a "
                            f"'{stage1_cfg.data.name}' {task} run (its second stage: "
                            f"{', '.join(f'--stage2 {m}' for m in fits)})")
    cfg = stage1_cfg.to_dict()
    for section, values in preset(method, stage1_cfg.data.name).items():
        cfg[section] = dict(values) if section in C.SECTIONS else {**cfg.get(section, {}), **values}
    cfg["stage2"] = {**cfg["stage2"], "method": method, "from_run": str(stage1_dir)}
    return cfg


def describe_methods() -> str:
    """``--help`` lines: each method and what its preset does."""
    return "\n".join(f"  {m:<9} {METHODS.meta(m).get('summary', '')}" for m in METHODS.names())

