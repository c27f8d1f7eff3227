"""Launch a training run in its locked run directory: what ``ltcls-train`` does once its arguments and config
are resolved (:func:`run_training`).

The steps, in order: lock the run directory (``--resume``: first, since it reads the run's files); read the
checkpoint's config on ``--resume`` (checked against ``config.yaml`` and the command line; a stage-2 run
resumes as stage 2, with the values it was started with); the start-up checks (:mod:`ltcls.engine.preflight`),
which build what the run uses; write ``config.yaml`` and ``train.log``; join the process group; train
(stage 1) or run the second stage, with SIGINT / SIGTERM stopping at a safe point. Failures are
:class:`ltcls.errors.UserError` lines: exit 2 before training, 1 after it started.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ltcls import config as C
from ltcls.data.datasets.split_file import BadImageError
from ltcls.engine.checkpoint import Checkpoint, CheckpointError
from ltcls.engine.distributed import cleanup, init_distributed
from ltcls.engine.optim import check_optimizer
from ltcls.engine.preflight import check_data, check_device, check_run, check_work_dir
from ltcls.engine.signals import GracefulInterrupt, Interrupted
from ltcls.engine.stage import Stage
from ltcls.engine.tasks import Run, Task, build_task
from ltcls.engine.trainer import Trainer, TrainingDiverged
from ltcls.errors import INPUT_ERRORS, LOG_FORMAT, UserError, is_main_process, user_errors, world_size
from ltcls.io import WriteError
from ltcls.reporting import Reporter
from ltcls.results import EvalReport
from ltcls.rundir import RunDir, RunDirError
from ltcls.stage2.runner import Stage1, load_stage1, run_stage2

log = logging.getLogger("ltcls")

#: Failures of a run that started (one line, exit 1).
RUN_FAILURES: tuple[type[BaseException], ...] = (CheckpointError, WriteError, RunDirError, TrainingDiverged,
                                                 BadImageError)  # WriteError: a full disk, an unwritable file


@dataclass
class Launch:
    """A request to train: the run directory, the resolved config (``--resume``: the config the command line
    gave, if any, checked against the checkpoint's), and the command that continues the run."""

    run_dir: RunDir
    cfg: C.Config | None
    resume: bool = False
    print_config: bool = False
    resume_command: str = ""
    debug: bool = False


@dataclass
class Prepared:
    """What the start-up checks built for the run: the task, and the stage-1 run (data, model, loss) or, for a
    second stage, the loaded stage-1 run."""

    task: Task
    run: Run | None = None
    stage1: Stage1 | None = None


def is_stage2(cfg: C.Config) -> bool:
    return bool(cfg.stage2.method and cfg.stage2.from_run)


def run_training(launch: Launch) -> int:
    """Train (or run stage 2) as :class:`Launch` asks; returns the exit status (0 done or already finished,
    130 / 143 interrupted); a failure is a :class:`UserError`."""
    main = is_main_process()
    lock = launch.run_dir.lock()
    try:
        if main and launch.resume and not launch.print_config:
            with user_errors((RunDirError,)):
                lock.acquire()  # a resume reads the run's files: hold its directory first
        with user_errors((*INPUT_ERRORS, CheckpointError, RunDirError)), _start_interrupt(launch.debug):
            cfg, ckpt = launch.cfg, None
            if launch.resume:
                ckpt = Checkpoint.load(launch.run_dir.checkpoint_path)
                cfg = resume_config(launch.run_dir, ckpt, launch.cfg)
                if not launch.print_config and launch.run_dir.metrics_path.is_file():
                    # finished: nothing to train, and evaluating again would add TensorBoard points
                    log.info("%s already finished (metrics in %s); nothing to resume", launch.run_dir,
                             launch.run_dir.metrics_path)
                    return 0
            prepared = prepare(cfg, launch.run_dir)
            if launch.print_config:
                sys.stdout.write(C.dump(cfg))
                return 0
            if main and not lock.locked:
                lock.acquire()  # released when the run ends, or by the kernel however the process ends
                launch.run_dir.refuse_existing()  # another run may have finished here meanwhile
        return _run(launch, cfg, prepared, ckpt, main)
    finally:
        lock.release()


@contextmanager
def _start_interrupt(debug: bool) -> Iterator[None]:
    """Ctrl-C while the data and model are built (before the training loop's handler is installed): one line,
    exit 130, nothing was written. During training the first Ctrl-C stops at a safe point; a second one raises
    ``KeyboardInterrupt`` with its traceback, as the signal handler documents."""
    try:
        yield
    except KeyboardInterrupt:
        if debug:
            raise
        raise UserError("interrupted by SIGINT before training started (nothing was written)", 130) from None


def resume_config(run_dir: RunDir, ckpt: Checkpoint, given: C.Config | None) -> C.Config:
    """The checkpoint's stored config, checked against the run's ``config.yaml``, the command's config and the
    number of processes the run was trained with."""
    ckpt_path = run_dir.checkpoint_path
    if not ckpt.config:  # a checkpoint written before the config was stored in it
        log.warning("%s holds no config (an older checkpoint): resuming with %s", ckpt_path, run_dir.config_path)
        cfg = run_dir.config()
    else:
        cfg = C.resolve(ckpt.config, source=f"{ckpt_path} (the config stored in it)")
        if run_dir.config_path.is_file() and (on_disk := run_dir.config(allow_empty=True)) != cfg:
            raise UserError(f"--resume: {run_dir.config_path} disagrees with the config stored in {ckpt_path} on "
                            f"{C.differences(cfg, on_disk, 'checkpoint', 'config.yaml')}; the checkpoint's is the "
                            "config the run trained with: restore config.yaml (or delete it to have it rewritten "
                            "from the checkpoint)")
    if given is not None and given != cfg:
        raise UserError(f"--resume: the config differs from the run's ({ckpt_path}) on "
                        f"{C.differences(cfg, given, 'run', 'now')}; resume with the run's config (leave out "
                        "--config / --set: `ltcls-train --work-dir RUN_DIR --resume` reads it from the checkpoint), "
                        "or start a new run with --work-dir NEW_DIR")
    trained = ckpt.training.world_size if ckpt.training is not None else None
    if trained is not None and trained != world_size():
        raise UserError(f"--resume: {run_dir} was trained with {trained} process(es) but this command runs "
                        f"{world_size()}; the sampler shards, the batch per process and hence the result depend on it: "
                        f"resume with {trained} process(es)" + (" (torchrun --nproc-per-node ...)" if trained > 1
                                                                else " (without torchrun)"))
    return cfg


def prepare(cfg: C.Config, run_dir: RunDir) -> Prepared:
    """Every start-up check (see :mod:`ltcls.engine.preflight`); nothing is written. Returns what the run then
    uses, built once."""
    task = build_task(cfg)
    if not is_stage2(cfg):
        return Prepared(task, run=check_run(cfg, task, run_dir.path))
    check_device(cfg.train.device)
    check_optimizer(cfg.train)
    check_work_dir(run_dir.path)
    stage1 = load_stage1(cfg, task)  # the stage-1 checkpoint reads and fits its model
    check_data(cfg, stage1.data)
    return Prepared(task, stage1=stage1)


def _log_to_file(run_dir: RunDir) -> None:
    """``train.log`` beside the console, added once the run directory is locked."""
    handler = logging.FileHandler(run_dir.log_path)
    handler.setFormatter(LOG_FORMAT)
    logging.getLogger("ltcls").addHandler(handler)


def _run(launch: Launch, cfg: C.Config, prepared: Prepared, ckpt: Checkpoint | None, main: bool) -> int:
    """Train (or run stage 2) in the locked run directory; failures during the run are one line, exit 1."""
    rd = launch.run_dir
    with user_errors(RUN_FAILURES, code=1):
        if main:
            rd.remove_stale_temps()
            if ckpt is None or not rd.config_path.is_file():
                rd.write_config(cfg)
            _log_to_file(rd)
        dist = init_distributed(cfg.train.device)
        log.info("run directory %s%s", rd, f" ({dist.world_size} processes)" if dist.enabled else "")
    # on --resume, TensorBoard drops what the interrupted run logged after the checkpoint (re-run steps)
    purge = ckpt.position[1] + 1 if ckpt is not None else None
    reporter = Reporter(rd, prefix="stage2/" if is_stage2(cfg) else "", purge_step=purge) if main else None
    if reporter is not None and ckpt is None:
        reporter.config(C.dump(cfg))
    try:
        with GracefulInterrupt(), user_errors(RUN_FAILURES, code=1):
            report, task = _train(cfg, rd, reporter, prepared, ckpt)
    except Interrupted as e:
        hint = (f"resume with: {launch.resume_command}" if e.has_checkpoint else
                "no checkpoint was written yet, so there is nothing to resume: run the same command again")
        if main:  # one line for the job, not one per process
            sys.stderr.write(f"ltcls-train: {e}; {hint}\n")
        return e.exit_code
    finally:
        if reporter is not None:
            reporter.close()
        cleanup()
    summary = " | ".join(f"{k} {v:.2f}" if (v := report.metric(k)) is not None else f"{k} n/a"
                         for k in task.summary_keys)
    log.info("done: %s %s -> %s", report.split, summary, rd.metrics_path)
    return 0


def _train(cfg: C.Config, rd: RunDir, reporter: Reporter | None, prepared: Prepared, ckpt: Checkpoint | None
           ) -> tuple[EvalReport, Task]:
    if prepared.stage1 is not None:
        return run_stage2(cfg, rd, reporter, resume=ckpt, stage1=prepared.stage1)
    run, task = prepared.run, prepared.task
    log.info("%s", task.describe_data(cfg, run.data))
    trainer = Trainer(run.model, run.data, cfg, rd, task, reporter)
    return trainer.fit([Stage("stage1", run.loss, cfg.train, cfg.sampler)], resume=ckpt), task
