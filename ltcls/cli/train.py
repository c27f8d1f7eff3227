"""``ltcls-train``: argparse, config resolution and the run directory; the engine does the training.

Only the torch-free layers (config, registries, stage-2 presets, plug-in declarations) are imported at module
level, so ``--help`` and config errors answer without importing torch; the engine is imported once a run
starts (see :func:`train_main`)."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ltcls import config as C
from ltcls.cli.use import LOG_FORMAT, setup_logging
from ltcls.plugins import load_plugins
from ltcls.registries import METHODS
from ltcls.stage2.presets import describe_methods, finished_run_config, stage2_base_config

log = logging.getLogger("ltcls")

CHECKPOINT = "checkpoint.pt"  # ltcls.engine.trainer.CHECKPOINT (not imported: the engine imports torch)

#: Errors found before training starts that are the user's input (values, split files, paths): one line, exit 2.
START_ERRORS: tuple[type[BaseException], ...] = (C.ConfigError, ValueError, KeyError, FileNotFoundError,
                                                 NotADirectoryError, IsADirectoryError, PermissionError)


class CommandError(Exception):
    """A user error the command reports as one line ``ltcls-train: error: MESSAGE`` with exit status ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def one_line(err: BaseException) -> str:
    """An exception's message on one line (a KeyError's without quotes; a DataLoader worker's re-raised
    traceback text reduced to its last line)."""
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    text = str(text).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1]
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(err).__name__


@contextmanager
def user_errors(kinds: tuple[type[BaseException], ...], code: int = 2) -> Iterator[None]:
    """Turn ``kinds`` raised inside into :class:`CommandError` (the original kept as ``__cause__`` for --debug)."""
    try:
        yield
    except CommandError:
        raise
    except kinds as e:
        raise CommandError(one_line(e), code) from e


def debug_requested(args: argparse.Namespace) -> bool:
    """``--debug`` or ``LTCLS_DEBUG`` set (to anything but empty / 0): show tracebacks of user errors."""
    return bool(getattr(args, "debug", False)) or os.environ.get("LTCLS_DEBUG", "") not in ("", "0")


def is_main_process() -> bool:
    """Rank 0 of a torchrun job (``RANK``), or a single process; known before torch is imported."""
    return int(os.environ.get("RANK", "0")) == 0

TRAIN_DESCRIPTION = """\
Train a long-tailed classifier and report top-1 overall / many / medium / few-shot accuracy.

Config resolution: built-in defaults <- the --config yaml <- every --set override. Unknown keys and
wrong types are errors naming the key. The resolved config is written to WORK_DIR/config.yaml;
metrics go to WORK_DIR/metrics.json, TensorBoard events to WORK_DIR/tb, the log to WORK_DIR/train.log
and the latest checkpoint (every epoch) to WORK_DIR/checkpoint.pt.

Before training, the values, the device, the data (every split read, the evaluation images), the model and
the work directory are checked. WORK_DIR is locked for the life of the run. Ctrl-C / SIGTERM stop after the
current step (train.checkpoint_on_signal=true also writes a checkpoint there) and print the --resume command.
Exit status: 0 done; 2 a user error (one line; --debug or LTCLS_DEBUG=1 shows the traceback); 1 a run that
failed cleanly (disk full, non-finite loss); 130 / 143 interrupted. See the README's Troubleshooting.
"""

TRAIN_EXAMPLES = """\
examples:
  ltcls-train --config configs/digits_lt_ce.yaml
  ltcls-train --config configs/cifar100_lt_ce.yaml --set data.root=/data/cifar train.epochs=10
  ltcls-train --config configs/digits_lt_ce.yaml --work-dir runs/try2 --set loss.name=ce train.lr=0.05
  ltcls-train --work-dir runs/digits_lt_ce --resume
  ltcls-train --config configs/digits_lt_ce.yaml --stage2 crt        # decoupled stage 2 of that run
  ltcls-train --stage2 tau_norm --from runs/digits_lt_ce --set stage2.dual_head_threshold=20
  ltcls-train --stage2 crt --from runs/digits_lt_ce --set loss.name=seesaw classifier.name=normalized

stage 2 (--stage2 METHOD): loads the finished stage-1 run (its config.yaml and checkpoint.pt), freezes
the backbone (parameters and BatchNorm statistics) and runs METHOD; output goes to
RUN_DIR/stage2_METHOD/ unless --work-dir is given. Methods and their presets (applied on top of the
stage-1 config, before --set):
{methods}
Feature cache (stage2.cache_features): on by default for tau_norm / ncm (exact); an option for
crt / lws / gumbel (trains on features of eval-transformed images, or stage2.cache_views augmented
views, instead of fresh augmentations every epoch: much faster, slightly different).

Every component's parameters: ltcls-train --list-params
"""


def build_train_parser() -> argparse.ArgumentParser:
    load_plugins()
    epilog = TRAIN_EXAMPLES.format(methods=describe_methods()) + "\n" + C.describe()
    parser = argparse.ArgumentParser(prog="ltcls-train", description=TRAIN_DESCRIPTION, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE.yaml",
                        help="yaml config (sections: data, model, classifier, loss, sampler, train, eval)")
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                        help="override a config value by its yaml path, e.g. --set train.lr=0.05 loss.name=ce; "
                             "repeatable, and several pairs may follow one flag; values are parsed as yaml")
    parser.add_argument("--work-dir", metavar="DIR",
                        help="run directory (default: runs/<config file name without .yaml>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in the work dir from its last checkpoint (same config)")
    parser.add_argument("--stage2", metavar="METHOD", choices=METHODS.names(),
                        help=f"run a decoupled second stage on a finished run: {', '.join(METHODS.names())}")
    parser.add_argument("--from", dest="from_run", metavar="RUN_DIR",
                        help="with --stage2: the stage-1 run directory (default: the run of --config)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--list-params", action="store_true",
                        help="list every registered component's parameters and defaults, and exit")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of user errors too (or set LTCLS_DEBUG=1)")
    return parser


def _fail(parser: argparse.ArgumentParser, message: str) -> None:
    parser.exit(2, f"ltcls-train: error: {message}\n")


def _log_to_file(work_dir: Path) -> None:
    """``train.log`` beside the console, added once the run directory is locked."""
    handler = logging.FileHandler(work_dir / "train.log")
    handler.setFormatter(LOG_FORMAT)
    logging.getLogger("ltcls").addHandler(handler)


def _diff(a: dict, b: dict, path: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{path}{k}.")
        elif va != vb:
            out.append(f"{path}{k}: {va!r} (run) vs {vb!r} (now)")
    return out


def run_dir_of(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Path:
    """The run directory the command writes: ``--work-dir``, else ``runs/<config name>`` (stage 2:
    ``STAGE1_RUN/stage2_METHOD``)."""
    if args.work_dir:
        return Path(args.work_dir)
    if args.stage2:
        return _stage1_dir(args, parser) / f"stage2_{args.stage2}"
    if args.config is None:
        _fail(parser, "--config is required (or --resume with --work-dir)")
    return Path("runs") / Path(args.config).stem


def _stage1_dir(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Path:
    if args.from_run:
        return Path(args.from_run)
    if args.config:
        return Path("runs") / Path(args.config).stem
    _fail(parser, "--stage2 needs --from RUN_DIR (or --config of the stage-1 run)")


def resolve_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[C.Config, Path]:
    """Resolved config and run directory, refusing to overwrite an existing run.

    With ``--resume`` the config is the one stored in the checkpoint; the run's ``config.yaml`` and any
    ``--config`` / ``--set`` given must agree with it (an error names the keys that differ)."""
    if args.stage2:
        cfg = _resolve_stage2(args, parser)
    else:
        if args.from_run:
            _fail(parser, "--from needs --stage2 METHOD")
        if args.config is None and not (args.resume and args.work_dir):
            _fail(parser, "--config is required (or --resume with --work-dir)")
        cfg = C.load(args.config, args.overrides) if args.config else None
    work_dir = run_dir_of(args, parser)
    ckpt = work_dir / CHECKPOINT
    if args.resume:
        if not ckpt.is_file():
            _fail(parser, f"--resume: no checkpoint at {ckpt}; start the run without --resume")
        return _resume_config(ckpt, cfg), work_dir
    if not args.print_config:
        _refuse_existing_run(work_dir)
    return cfg, work_dir


def _refuse_existing_run(work_dir: Path) -> None:
    for existing in (work_dir / CHECKPOINT, work_dir / "metrics.json"):
        if existing.exists():
            from ltcls.engine.rundir import RunDirBusy, RunDirLock  # lazy: only on this error (imports torch)

            if (pid := RunDirLock.holder(work_dir)) is not None:  # a live run is writing there
                raise CommandError(str(RunDirBusy(work_dir, pid)))
            raise CommandError(f"{work_dir} already holds a run ({existing.name}); pass --resume to continue it, "
                               "or --work-dir NEW_DIR for a new run (nothing is overwritten)")


def _resume_config(ckpt: Path, given: C.Config | None) -> C.Config:
    """The checkpoint's stored config, checked against the run's ``config.yaml`` and the command's config."""
    from ltcls.engine.checkpoint import load_checkpoint  # lazy: torch is imported only once a run (re)starts

    stored = load_checkpoint(ckpt).get("config")
    cfg_file = ckpt.parent / "config.yaml"
    if stored is None:  # a checkpoint written before the config was stored in it
        log.warning("%s holds no config (an older checkpoint): resuming with %s", ckpt, cfg_file)
        cfg = C.load(cfg_file)
    else:
        cfg = C.resolve(stored, source=f"{ckpt} (the config stored in it)")
        if cfg_file.is_file():
            on_disk = C.load(cfg_file)
            if on_disk != cfg:
                raise CommandError(f"--resume: {cfg_file} disagrees with the config stored in {ckpt} on "
                                   f"{_changes(cfg, on_disk, 'checkpoint', 'config.yaml')}; the checkpoint's is the "
                                   "config the run trained with: restore config.yaml (or delete it to have it "
                                   "rewritten from the checkpoint)")
    if given is not None and given != cfg:
        raise CommandError(f"--resume: the config differs from the run's ({ckpt}) on "
                           f"{_changes(cfg, given, 'run', 'now')}; resume with the run's config (leave out "
                           "--config / --set), or start a new run with --work-dir NEW_DIR")
    return cfg


def _changes(a: C.Config, b: C.Config, name_a: str, name_b: str) -> str:
    diff = _diff(a.to_dict(), b.to_dict())
    return "; ".join(d.replace("(run)", f"({name_a})").replace("(now)", f"({name_b})") for d in diff)


def _resolve_stage2(args: argparse.Namespace, parser: argparse.ArgumentParser) -> C.Config:
    stage1_dir = _stage1_dir(args, parser)
    stage1_cfg_file = stage1_dir / "config.yaml"
    if not stage1_cfg_file.is_file():
        _fail(parser, f"--stage2: no stage-1 run at {stage1_dir} ({stage1_cfg_file.name} missing); train it first"
                      + (f" with ltcls-train --config {args.config}" if args.config and not args.from_run else ""))
    stage1_cfg = C.load(stage1_cfg_file)
    base = stage2_base_config(stage1_cfg, args.stage2, stage1_dir)
    if not args.print_config:
        try:
            finished_run_config(stage1_dir)
        except FileNotFoundError as e:
            from ltcls.engine.rundir import RunDirLock  # lazy: only on this error (imports torch)

            pid = RunDirLock.holder(stage1_dir)
            _fail(parser, f"--stage2: {e}" + (f"; a run is in progress there (PID {pid})" if pid is not None else ""))
    return C.resolve(base, args.overrides, source=str(stage1_cfg_file))


def resume_command(args: argparse.Namespace, work_dir: Path) -> str:
    """The exact command that continues this run."""
    cmd = ["ltcls-train"]
    if args.stage2:
        cmd += ["--stage2", args.stage2]
        if args.from_run:
            cmd += ["--from", args.from_run]
        elif args.config:
            cmd += ["--config", args.config]
    cmd += ["--work-dir", str(work_dir), "--resume"]
    return shlex.join(cmd)


def train_main(argv: Sequence[str] | None = None) -> int:
    """``ltcls-train``: end-to-end training, or a decoupled second stage with ``--stage2``.

    Exit status: 0 done (or already finished), 2 a user error found before training (one line), 1 a run that
    failed cleanly (disk full, non-finite loss, unreadable image: one line), 130 / 143 stopped by SIGINT /
    SIGTERM. ``--debug`` / ``LTCLS_DEBUG=1`` show the traceback of the one-line errors."""
    parser = build_train_parser()
    args = parser.parse_args(argv)
    if args.list_params:
        sys.stdout.write(C.describe(components=True) + "\n")
        return 0
    try:
        return _train(args, parser)
    except CommandError as e:
        if debug_requested(args):
            raise (e.__cause__ or e) from None
        parser.exit(e.code, f"ltcls-train: error: {e}\n")


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    main = is_main_process()
    setup_logging(logging.INFO if main else logging.WARNING)  # the other ranks: warnings only
    with user_errors(START_ERRORS):
        work_dir = run_dir_of(args, parser)
    cfg = None
    if not args.resume:  # torch-free: config errors answer before the engine is imported
        with user_errors(START_ERRORS):
            cfg, work_dir = resolve_run(args, parser)  # also refuses a directory holding a run (again under the lock)
    # The engine (torch, timm, torchvision, matplotlib) is imported only now that a run starts.
    from ltcls.engine.checkpoint import CheckpointError  # lazy: see the module docstring
    from ltcls.engine.rundir import RunDirError, RunDirLock  # lazy: as above

    lock = RunDirLock(work_dir)
    try:
        if main and args.resume and not args.print_config:
            with user_errors((RunDirError,)):
                lock.acquire()  # a resume reads the run's files: hold its directory first
        with user_errors((*START_ERRORS, CheckpointError, RunDirError)), _start_interrupt(args, parser):
            if cfg is None:
                cfg, work_dir = resolve_run(args, parser)  # --resume: the checkpoint's config
                if not args.print_config and (work_dir / "metrics.json").is_file():
                    # finished: nothing to train, and evaluating again would add TensorBoard points
                    log.info("%s already finished (metrics in %s); nothing to resume", work_dir,
                             work_dir / "metrics.json")
                    return 0
            run, task = _prepare(args, cfg, work_dir)
            if args.print_config:
                sys.stdout.write(C.dump(cfg))
                return 0
            if main and not lock.locked:
                lock.acquire()  # released when the run ends, or by the kernel however the process ends
                _refuse_existing_run(work_dir)  # another run may have finished here meanwhile
        return _run(args, cfg, work_dir, run, task, main)
    finally:
        lock.release()


@contextmanager
def _start_interrupt(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Iterator[None]:
    """Ctrl-C while the data and model are built (before the training loop's handler is installed): one line,
    exit 130, nothing was written. During training the first Ctrl-C stops at a safe point; a second one raises
    ``KeyboardInterrupt`` with its traceback, as the signal handler documents."""
    try:
        yield
    except KeyboardInterrupt:
        if debug_requested(args):
            raise
        parser.exit(130, "ltcls-train: interrupted by SIGINT before training started (nothing was written)\n")


def _prepare(args: argparse.Namespace, cfg: C.Config, work_dir: Path) -> tuple[object, object]:
    """Every start-up check (see :mod:`ltcls.engine.preflight`); nothing is written. Returns what the run then
    uses, built once: the stage-1 run (data, model, loss), or for stage 2 the loaded stage-1 run; and the task."""
    from ltcls.engine import build_task  # lazy: see the module docstring
    from ltcls.engine.preflight import check_data, check_device, check_run, check_work_dir  # lazy: as above
    from ltcls.stage2.runner import load_stage1  # lazy: as above

    task = build_task(cfg)
    if not args.stage2:
        return check_run(cfg, task, work_dir, init_weights=not args.resume), task
    check_device(cfg.train.device)
    check_work_dir(work_dir)
    stage1 = load_stage1(cfg, task)  # the stage-1 checkpoint reads and fits its model
    check_data(cfg, stage1.data)
    return stage1, task


def _run(args: argparse.Namespace, cfg: C.Config, work_dir: Path, run: object, task: object, main: bool) -> int:
    """Train (or run stage 2) in the locked run directory; failures during the run are one line, exit 1."""
    from ltcls.data.datasets.split_file import BadImageError  # lazy: see the module docstring
    from ltcls.engine import Stage, Trainer  # lazy: as above
    from ltcls.engine.checkpoint import CheckpointError, load_checkpoint  # lazy: as above
    from ltcls.engine.distributed import cleanup, init_distributed  # lazy: as above
    from ltcls.engine.rundir import DiskFullError, RunDirError, atomic_write_text, remove_stale_temps  # lazy: as above
    from ltcls.engine.signals import GracefulInterrupt, Interrupted  # lazy: as above
    from ltcls.engine.trainer import TrainingDiverged  # lazy: as above
    from ltcls.reporting import Reporter  # lazy: as above
    from ltcls.stage2.runner import run_stage2  # lazy: as above

    failures = (CheckpointError, DiskFullError, RunDirError, TrainingDiverged, BadImageError)
    with user_errors(failures, code=1):
        if main:
            remove_stale_temps(work_dir)
            if not args.resume or not (work_dir / "config.yaml").is_file():
                atomic_write_text(work_dir / "config.yaml", C.dump(cfg))
            _log_to_file(work_dir)
        dist = init_distributed(cfg.train.device)
        log.info("run directory %s%s", work_dir, f" ({dist.world_size} processes)" if dist.enabled else "")
        # on --resume, TensorBoard drops what the interrupted run logged after the checkpoint (re-run steps)
        purge = load_checkpoint(work_dir / CHECKPOINT)["step"] + 1 if args.resume else None
    reporter = Reporter(work_dir, prefix="stage2/" if args.stage2 else "", purge_step=purge) if main else None
    if reporter is not None and not args.resume:
        reporter.config(C.dump(cfg))
    try:
        with GracefulInterrupt(), user_errors(failures, code=1):
            if args.stage2:
                report, task = run_stage2(cfg, work_dir, reporter, resume=args.resume, stage1=run)
            else:
                log.info("%s", task.describe_data(cfg, run.data))
                trainer = Trainer(run.model, run.data, cfg, work_dir, task, reporter)
                report = trainer.fit([Stage("stage1", run.loss, cfg.train, cfg.sampler)], resume=args.resume)
    except Interrupted as e:
        sys.stderr.write(f"ltcls-train: {e}; resume with: {resume_command(args, work_dir)}\n")
        return e.exit_code
    finally:
        if reporter is not None:
            reporter.close()
        cleanup()
    summary = " | ".join(f"{k} {report[k]:.2f}" if report.get(k) is not None else f"{k} n/a"
                         for k in task.summary_keys)
    log.info("done: %s %s -> %s", report.get("split"), summary, work_dir / "metrics.json")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ltcls.cli train ...`` (the form for ``torchrun -m``); ``train`` may be left out."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        argv = argv[1:]
    return train_main(argv)


if __name__ == "__main__":  # python -m ltcls.cli.train ...
    sys.exit(main())
