"""Checks run before training starts, so that a bad value, a missing split or an unreadable test image is
reported in one line at once instead of after hours of training.

What is checked: ``train.device`` is usable; ``train.batch_size`` splits into the processes (torchrun's
``WORLD_SIZE``) and ``train.accum_steps`` (:func:`check_batch_split`); ``train.optimizer`` (and its parameter
groups) can be built; the run's data builds (split files parsed, every listed image present: the datasets' own
``check_files``); every split the run reads exists (``eval.split``); an epoch gives at least one optimizer step
(a warning when the batch is larger than an epoch: :func:`check_epoch`); the model and the loss build
(pretrained weights available); the evaluation split's image files open as images (header only, see
:func:`check_images_open`); the run directory can be created and written. Nothing here writes anything.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image

from ltcls.config import Config, ConfigError, TrainConfig
from ltcls.data.base import DataSplits, Split
from ltcls.data.build import build_sampler
from ltcls.engine.optim import build_optimizer, check_optimizer
from ltcls.engine.tasks import Run, Task
from ltcls.errors import world_size
from ltcls.rundir import RunDirError

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


def check_batch_split(t: TrainConfig, processes: int | None = None) -> None:
    """``train.batch_size`` is a multiple of processes x ``train.accum_steps`` (each process runs
    ``batch_size / (processes x accum_steps)`` images at a time): a ``ConfigError`` naming both keys and the
    nearest batch sizes that fit otherwise. ``world_size``: default torchrun's ``WORLD_SIZE``."""
    world = world_size() if processes is None else processes
    unit = world * t.accum_steps
    if t.batch_size % unit == 0:
        return
    lower, upper = t.batch_size - t.batch_size % unit, t.batch_size - t.batch_size % unit + unit
    fits = " or ".join(f"train.batch_size={b}" for b in (lower, upper) if b > 0)
    raise ConfigError(f"train.batch_size ({t.batch_size}) must be a multiple of the number of processes ({world}) x "
                      f"train.accum_steps ({t.accum_steps}) = {unit} (each process runs batch_size / (processes x "
                      f"accum_steps) images at a time); use {fits}, or change train.accum_steps")


def micro_batches_per_epoch(samples: int, micro_batch: int) -> int:
    """Micro-batches in an epoch of ``samples`` per process, as the trainer's loader makes them: full ones when at
    least one fits (a last partial one is dropped), else the one partial batch. Every ``train.accum_steps`` of
    them make an optimizer step; the micro-batches left over are not trained on."""
    return samples // micro_batch if samples >= micro_batch else min(samples, 1)


def check_epoch(cfg: Config, data: DataSplits, processes: int | None = None) -> None:
    """An epoch of the train split, as the sampler draws it, gives at least one optimizer step (a
    ``ConfigError`` naming ``train.batch_size`` otherwise); a batch larger than the epoch is a warning (each epoch
    is then one step on fewer images than ``train.batch_size``)."""
    t, world = cfg.train, world_size() if processes is None else processes
    sampler = build_sampler(cfg.sampler.to_dict(), data.train.targets, seed=t.seed, epochs=t.epochs,
                            num_replicas=world, dataset=data.train)
    per_process = len(sampler)
    micro = t.batch_size // (world * t.accum_steps)
    batches = micro_batches_per_epoch(per_process, micro)
    epoch = f"an epoch of the train split is {per_process * world} samples (sampler '{cfg.sampler.name}')"
    if batches < t.accum_steps:
        raise ConfigError(f"train.batch_size ({t.batch_size}) with train.accum_steps ({t.accum_steps}) gives no "
                          f"optimizer step: {epoch}, {batches} micro-batch(es) of up to {micro} per process, and a "
                          f"step needs {t.accum_steps}; lower train.batch_size or train.accum_steps")
    if t.batch_size > per_process * world:
        log.warning("train.batch_size (%d) is larger than the epoch: %s, so every epoch is one optimizer step on "
                    "those samples; a smaller train.batch_size trains with more steps", t.batch_size, epoch)


def check_splits(cfg: Config, data: DataSplits) -> None:
    """Every split the run reads exists: ``eval.split`` (``ConfigError`` naming the key and the splits there are)."""
    split = cfg.eval.split
    if not data.has(split):
        have = [s for s in ("train", "val", "test") if data.has(s)]
        raise ConfigError(f"eval.split is '{split}' but the dataset '{cfg.data.name}' has no {split} split (it has: "
                          f"{', '.join(have)}); set eval.split to one of those, or give the dataset a {split} split")


def _open_error(path: str) -> str | None:
    try:
        with Image.open(path):
            return None
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... for files it cannot identify
        return f"{type(err).__name__}: {err}"


def check_images_open(dataset: Split, split: str, workers: int | None = None) -> None:
    """Each image file of a file-listed ``dataset`` opens as an image (PIL reads the header, not the pixels),
    when the dataset stops on a bad image (``data.on_bad_image: error``: the split lists its
    ``image_files()``). Catches empty, foreign and header-damaged files at start; an image whose pixel data is
    corrupt further in is still found only when decoded (``ltcls-data verify`` decodes every image). In-memory
    datasets are skipped."""
    files = dataset.image_files()
    if files is None:
        return
    start = time.perf_counter()
    full = [os.path.join(files.root, p) for p in files.paths]
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        errors = list(pool.map(_open_error, full, chunksize=256))
    bad = [i for i, e in enumerate(errors) if e is not None]
    if bad:
        named = "; ".join(f"'{files.paths[i]}'" + (f" ({files.where(i)})" if files.where(i) else "") + f": {errors[i]}"
                          for i in bad[:MAX_NAMED])
        more = f" and {len(bad) - MAX_NAMED} more" if len(bad) > MAX_NAMED else ""
        raise ValueError(f"{len(bad)} image(s) of the {split} split under data.root '{files.root}' cannot be opened: "
                         f"{named}{more}; fix or remove them (ltcls-data verify lists all), or set "
                         "data.on_bad_image: skip")
    log.info("checked that the %d %s images open (%.1fs)", len(files.paths), split, time.perf_counter() - start)


def check_data(cfg: Config, data: DataSplits) -> None:
    """The batch fits the processes and the train split (:func:`check_batch_split`, :func:`check_epoch`), the
    splits the run reads exist, and the evaluation split's images open."""
    check_batch_split(cfg.train)
    check_epoch(cfg, data)
    check_splits(cfg, data)
    check_images_open(data.get(cfg.eval.split), cfg.eval.split)


def check_run(cfg: Config, task: Task, work_dir: Path, init_weights: bool = True) -> Run:
    """Every start-up check of a stage-1 run; returns the built run (data, model, loss) for training to use
    (``init_weights=False`` on ``--resume``: the checkpoint's weights follow, see ``Task.build``).
    (A stage 2's checks: the command loads the stage-1 run with ``ltcls.stage2.runner.load_stage1`` and runs
    :func:`check_device`, :func:`check_work_dir` and :func:`check_data` on it.)"""
    check_device(cfg.train.device)
    check_batch_split(cfg.train)  # before the data is built (again in check_data, the path of a stage 2)
    check_optimizer(cfg.train)
    check_work_dir(work_dir)
    run = task.build(cfg, init_weights=init_weights)
    check_data(cfg, run.data)
    build_optimizer(cfg.train, run.model)  # its parameter groups (layer decay needs a backbone's layer order)
    return run

