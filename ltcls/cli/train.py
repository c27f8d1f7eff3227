"""``ltcls-train``: argparse, config resolution and the run directory; the engine does the training.

Only the torch-free layers (config, registries, stage-2 presets, plug-in declarations) are imported at module
level, so ``--help`` and config errors answer without importing torch; the engine is imported once a run
starts (see :func:`train_main`)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ltcls import config as C
from ltcls.plugins import load_plugins
from ltcls.registries import METHODS
from ltcls.stage2.presets import describe_methods, finished_run_config, stage2_base_config

log = logging.getLogger("ltcls")

CHECKPOINT = "checkpoint.pt"  # ltcls.engine.trainer.CHECKPOINT (not imported: the engine imports torch)

TRAIN_DESCRIPTION = """\
Train a long-tailed classifier and report top-1 overall / many / medium / few-shot accuracy.

Config resolution: built-in defaults <- the --config yaml <- every --set override. Unknown keys and
wrong types are errors naming the key. The resolved config is written to WORK_DIR/config.yaml;
metrics go to WORK_DIR/metrics.json, TensorBoard events to WORK_DIR/tb, the log to WORK_DIR/train.log
and the latest checkpoint (every epoch) to WORK_DIR/checkpoint.pt.
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
    return parser


def _fail(parser: argparse.ArgumentParser, message: str) -> None:
    parser.exit(2, f"ltcls-train: error: {message}\n")


def _setup_logging(work_dir: Path | None) -> None:
    """Console + ``work_dir/train.log`` at INFO on the main process; warnings only on the other ranks."""
    logger = logging.getLogger("ltcls")
    logger.setLevel(logging.INFO if work_dir is not None else logging.WARNING)
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if work_dir is not None:
        handlers.append(logging.FileHandler(work_dir / "train.log"))
    for handler in handlers:
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    logger.propagate = False


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


def resolve_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[C.Config, Path]:
    """Resolved config and run directory, refusing to overwrite an existing run."""
    if args.stage2:
        cfg, work_dir = _resolve_stage2(args, parser)
    else:
        if args.from_run:
            _fail(parser, "--from needs --stage2 METHOD")
        if args.config is None and not (args.resume and args.work_dir):
            _fail(parser, "--config is required (or --resume with --work-dir)")
        cfg = C.load(args.config, args.overrides) if args.config else None
        work_dir = Path(args.work_dir) if args.work_dir else Path("runs") / Path(args.config).stem
    ckpt = work_dir / CHECKPOINT
    if args.resume:
        if not ckpt.is_file():
            _fail(parser, f"--resume: no checkpoint at {ckpt}; start the run without --resume")
        saved = C.load(work_dir / "config.yaml")
        if cfg is not None and cfg != saved:
            changes = "\n  ".join(_diff(saved.to_dict(), cfg.to_dict()))
            _fail(parser, f"--resume: the config differs from the run's {work_dir / 'config.yaml'}:\n  {changes}")
        return saved, work_dir
    for existing in (ckpt, work_dir / "metrics.json"):
        if existing.exists():
            _fail(parser, f"{work_dir} already holds a run ({existing.name}); pass --resume to continue it, "
                          "or --work-dir NEW_DIR for a new run (nothing is overwritten)")
    return cfg, work_dir


def _resolve_stage2(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[C.Config, Path]:
    if args.from_run:
        stage1_dir = Path(args.from_run)
    elif args.config:
        stage1_dir = Path("runs") / Path(args.config).stem
    else:
        _fail(parser, "--stage2 needs --from RUN_DIR (or --config of the stage-1 run)")
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
            _fail(parser, f"--stage2: {e}")
    cfg = C.resolve(base, args.overrides, source=str(stage1_cfg_file))
    work_dir = Path(args.work_dir) if args.work_dir else stage1_dir / f"stage2_{args.stage2}"
    return cfg, work_dir


def train_main(argv: Sequence[str] | None = None) -> int:
    """``ltcls-train``: end-to-end training, or a decoupled second stage with ``--stage2``."""
    parser = build_train_parser()
    args = parser.parse_args(argv)
    if args.list_params:
        sys.stdout.write(C.describe(components=True) + "\n")
        return 0
    try:
        cfg, work_dir = resolve_run(args, parser)
    except C.ConfigError as e:
        _fail(parser, str(e))
    if args.print_config:
        sys.stdout.write(C.dump(cfg))
        return 0
    # The engine (torch, timm, torchvision, matplotlib) is imported only now that a run starts.
    from ltcls.engine import Stage, Trainer, build_task  # lazy: see the module docstring
    from ltcls.engine.distributed import cleanup, init_distributed  # lazy: as above
    from ltcls.reporting import Reporter  # lazy: as above
    from ltcls.stage2.runner import run_stage2  # lazy: as above

    dist = init_distributed(cfg.train.device)
    if dist.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        if not args.resume:
            C.save(cfg, work_dir / "config.yaml")
    _setup_logging(work_dir if dist.is_main else None)
    log.info("run directory %s%s", work_dir, f" ({dist.world_size} processes)" if dist.enabled else "")
    reporter = Reporter(work_dir, prefix="stage2/" if args.stage2 else "") if dist.is_main else None
    if reporter is not None:
        reporter.config(C.dump(cfg))
    try:
        if args.stage2:
            report, task = run_stage2(cfg, work_dir, reporter, resume=args.resume)
        else:
            task = build_task(cfg)
            run = task.build(cfg)
            log.info("%s", task.describe_data(cfg, run.data))
            trainer = Trainer(run.model, run.data, cfg, work_dir, task, reporter)
            report = trainer.fit([Stage("stage1", run.loss, cfg.train, cfg.sampler)], resume=args.resume)
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
