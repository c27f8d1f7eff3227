"""``ltcls-train``: argparse and config resolution; the training itself is :func:`ltcls.launch.run_training`.

Only the torch-free layers (config, registries, run directory, stage-2 presets, plug-in declarations) are
imported at module level, so ``--help`` and config errors answer without importing torch; the launch module
(and with it the engine) is imported once a run starts, in one place (:func:`_train`)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from ltcls import config as C
from ltcls.cli.use import add_debug, run_command
from ltcls.errors import INPUT_ERRORS, UserError, user_errors, world_size
from ltcls.plugins import load_plugins
from ltcls.registries import METHODS
from ltcls.rundir import RunDir, RunDirError
from ltcls.stage2.presets import describe_methods, stage2_base_config

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
    add_debug(parser)
    return parser


def run_dir_of(args: argparse.Namespace) -> RunDir:
    """The run directory the command writes: ``--work-dir``, else ``runs/<config name>`` (stage 2:
    ``STAGE1_RUN/stage2_METHOD``)."""
    if args.work_dir:
        return RunDir(args.work_dir)
    if args.stage2:
        return _stage1_dir(args).stage2(args.stage2)
    if args.config is None:
        raise UserError("--config is required (or --resume with --work-dir)")
    return RunDir(Path("runs") / Path(args.config).stem)


def _stage1_dir(args: argparse.Namespace) -> RunDir:
    if args.from_run:
        return RunDir(args.from_run)
    if args.config:
        return RunDir(Path("runs") / Path(args.config).stem)
    raise UserError("--stage2 needs --from RUN_DIR (or --config of the stage-1 run)")


def resolve_config(args: argparse.Namespace) -> C.Config | None:
    """The config the command line gives (None: ``--resume`` without ``--config`` / ``--stage2``, where the
    run's checkpoint holds it)."""
    if args.stage2:
        return _resolve_stage2(args)
    if args.from_run:
        raise UserError("--from needs --stage2 METHOD")
    if args.config is None:
        if args.resume and args.work_dir:
            return None
        raise UserError("--config is required (or --resume with --work-dir)")
    return C.load(args.config, args.overrides)


def _resolve_stage2(args: argparse.Namespace) -> C.Config:
    stage1_dir = _stage1_dir(args)
    if not stage1_dir.config_path.is_file():
        raise UserError(f"--stage2: no stage-1 run at {stage1_dir} ({stage1_dir.config_path.name} missing); train it "
                        "first" + (f" with ltcls-train --config {args.config}" if args.config and not args.from_run
                                   else ""))
    stage1_cfg = stage1_dir.config()
    base = stage2_base_config(stage1_cfg, args.stage2, stage1_dir)
    if not args.print_config and not args.resume:
        stage1_dir.require_finished("stage-1 run")
    return C.resolve(base, args.overrides, source=str(stage1_dir.config_path))


def resume_command(run_dir: RunDir) -> str:
    """The exact command that continues this run: its checkpoint holds the config (stage 2's too), and a
    torchrun job is continued by torchrun with the same number of processes."""
    train = ["--work-dir", str(run_dir), "--resume"]
    if world_size() <= 1:
        return shlex.join(["ltcls-train", *train])
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))
    nodes = max(world_size() // per_node, 1)
    cmd = ["torchrun", *(["--nnodes", str(nodes)] if nodes > 1 else []), "--nproc-per-node", str(per_node),
           "-m", "ltcls.cli", "train", *train]
    return shlex.join(cmd) + (" (on every node, with the job's rendezvous options)" if nodes > 1 else "")


def train_main(argv: Sequence[str] | None = None) -> int:
    """``ltcls-train``: end-to-end training, or a decoupled second stage with ``--stage2``.

    Exit status: 0 done (or already finished), 2 a user error found before training (one line), 1 a run that
    failed cleanly (disk full, non-finite loss, unreadable image: one line), 130 / 143 stopped by SIGINT /
    SIGTERM. ``--debug`` / ``LTCLS_DEBUG=1`` show the traceback of the one-line errors."""
    return run_command(build_train_parser(), argv, _train, expected=(), ctrl_c=False)


def _train(args: argparse.Namespace) -> int:
    if args.list_params:
        sys.stdout.write(C.describe(components=True) + "\n")
        return 0
    with user_errors((*INPUT_ERRORS, RunDirError)):  # torch-free: config errors answer before the engine is imported
        run_dir = run_dir_of(args)
        cfg = resolve_config(args)
        if not args.resume and not args.print_config:
            run_dir.refuse_existing()  # checked again under the lock
        if args.resume and not run_dir.has_checkpoint():
            raise UserError(f"--resume: no checkpoint at {run_dir.checkpoint_path}; start the run without --resume")
    try:
        from ltcls.launch import Launch, run_training  # lazy: the engine (torch, timm) only once a run starts
    except KeyboardInterrupt:
        raise UserError("interrupted by SIGINT before training started (nothing was written)", 130) from None
    return run_training(Launch(run_dir, cfg, resume=args.resume, print_config=args.print_config,
                               resume_command=resume_command(run_dir), debug=args.debug))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ltcls.cli train ...`` (the form for ``torchrun -m``); ``train`` may be left out."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        argv = argv[1:]
    return train_main(argv)


if __name__ == "__main__":  # python -m ltcls.cli.train ...
    sys.exit(main())
