"""Checks run before training starts, so that a bad value, a missing split or an unreadable test image is
reported in one line at once instead of after hours of training (issue 12, item 3).

What is checked: ``train.device`` is usable; the run's data builds (split files parsed, every listed image
present: the datasets' own ``check_files``); every split the run reads exists (``eval.split``); the model and
the loss build; the evaluation split's image files open as images (header only, see
:func:`check_images_open`); the run directory can be created and written. Nothing here writes anything.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ltcls.config import Config, ConfigError
from ltcls.data.base import DataSplits
from ltcls.engine.rundir import RunDirError
from ltcls.engine.tasks import Run, Task

log = logging.getLogger("ltcls")

#: At most this many unreadable images are named in the error (the count is always given).
MAX_NAMED = 3


def check_device(name: str) -> None:
    """``train.device`` asks for CUDA on a machine without it: a ``ConfigError`` naming the key."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device is '{name}' but CUDA is not available on this machine (torch "
                          f"{torch.__version__}); use train.device=auto or cpu")
    if name.startswith("cuda:") and int(name.split(":")[1]) >= torch.cuda.device_count():
        raise ConfigError(f"train.device is '{name}' but this machine has {torch.cuda.device_count()} CUDA device(s)")


def check_work_dir(work_dir: Path) -> None:
    """The run directory exists as a writable folder, or can be created: its nearest existing ancestor is a
    writable folder. Raises :class:`RunDirError` naming the path otherwise (creates nothing)."""
    path = Path(os.path.abspath(work_dir))
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise RunDirError(f"cannot use run directory '{work_dir}': '{probe}' is not a folder (expected a writable "
                          "folder, or a path that can be created)")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "the run directory" if probe == path else f"its parent '{probe}'"
        raise RunDirError(f"cannot use run directory '{work_dir}': {what} is not writable (permission denied; "
                          "expected a writable folder)")


def check_splits(cfg: Config, data: DataSplits) -> None:
    """Every split the run reads exists: ``eval.split`` (``ConfigError`` naming the key and the splits there are)."""
    split = cfg.eval.split
    if getattr(data, split, None) is None:
        have = [s for s in ("train", "val", "test") if getattr(data, s, None) is not None]
        raise ConfigError(f"eval.split is '{split}' but the dataset '{cfg.data.name}' has no {split} split (it has: "
                          f"{', '.join(have)}); set eval.split to one of those, or give the dataset a {split} split")


def _open_error(path: str) -> str | None:
    try:
        with Image.open(path):
            return None
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... for files it cannot identify
        return f"{type(err).__name__}: {err}"


def check_images_open(dataset: Any, split: str, workers: int | None = None) -> None:
    """Each image file of a file-listed ``dataset`` opens as an image (PIL reads the header, not the pixels),
    when the dataset stops on a bad image (``data.on_bad_image: error``). Catches empty, foreign and
    header-damaged files at start; an image whose pixel data is corrupt further in is still found only when
    decoded (``ltcls-data verify`` decodes every image). In-memory datasets are skipped."""
    paths: Sequence[str] | None = getattr(dataset, "paths", None)
    root = getattr(dataset, "root", None)
    if paths is None or root is None or getattr(dataset, "on_bad_image", "error") != "error":
        return
    start = time.perf_counter()
    full = [os.path.join(root, p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        errors = list(pool.map(_open_error, full, chunksize=256))
    bad = [i for i, e in enumerate(errors) if e is not None]
    if bad:
        where = getattr(dataset, "where", lambda i: None)
        named = "; ".join(f"'{paths[i]}'" + (f" ({where(i)})" if where(i) else "") + f": {errors[i]}"
                          for i in bad[:MAX_NAMED])
        more = f" and {len(bad) - MAX_NAMED} more" if len(bad) > MAX_NAMED else ""
        raise ValueError(f"{len(bad)} image(s) of the {split} split under data.root '{root}' cannot be opened: "
                         f"{named}{more}; fix or remove them (ltcls-data verify lists all), or set "
                         "data.on_bad_image: skip")
    log.info("checked that the %d %s images open (%.1fs)", len(paths), split, time.perf_counter() - start)


def check_data(cfg: Config, data: DataSplits) -> None:
    """The splits the run reads exist, and the evaluation split's images open."""
    check_splits(cfg, data)
    check_images_open(getattr(data, cfg.eval.split), cfg.eval.split)


def check_run(cfg: Config, task: Task, work_dir: Path, init_weights: bool = True) -> Run:
    """Every start-up check of a stage-1 run; returns the built run (data, model, loss) for training to use
    (``init_weights=False`` on ``--resume``: the checkpoint's weights follow, see ``Task.build``).
    (A stage 2's checks: the command loads the stage-1 run with ``ltcls.stage2.runner.load_stage1`` and runs
    :func:`check_device`, :func:`check_work_dir` and :func:`check_data` on it.)"""
    check_device(cfg.train.device)
    check_work_dir(work_dir)
    run = task.build(cfg, init_weights=init_weights)
    check_data(cfg, run.data)
    return run

