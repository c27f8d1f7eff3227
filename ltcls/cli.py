"""Command-line entry points (argparse only; no training logic here)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ltcls import config as C

log = logging.getLogger("ltcls")

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
"""


def build_train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ltcls-train", description=TRAIN_DESCRIPTION,
        epilog=TRAIN_EXAMPLES + "\n" + C.describe(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE.yaml",
                        help="yaml config (sections: data, model, classifier, loss, sampler, train, eval)")
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                        help="override a config value by its yaml path, e.g. --set train.lr=0.05 loss.name=ce; "
                             "repeatable, and several pairs may follow one flag; values are parsed as yaml")
    parser.add_argument("--work-dir", metavar="DIR",
                        help="run directory (default: runs/<config file name without .yaml>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in the work dir from its last checkpoint (same config)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def _fail(parser: argparse.ArgumentParser, message: str) -> None:
    parser.exit(2, f"ltcls-train: error: {message}\n")


def _setup_logging(work_dir: Path) -> None:
    logger = logging.getLogger("ltcls")
    logger.setLevel(logging.INFO)
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(work_dir / "train.log")):
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


def resolve_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[dict, Path]:
    """Resolved config and run directory, refusing to overwrite an existing run."""
    from ltcls.engine import CHECKPOINT

    if args.config is None and not (args.resume and args.work_dir):
        _fail(parser, "--config is required (or --resume with --work-dir)")
    cfg = C.resolve(C.load_yaml(args.config), args.overrides, source=args.config) if args.config else None
    work_dir = Path(args.work_dir) if args.work_dir else Path("runs") / Path(args.config).stem
    ckpt = work_dir / CHECKPOINT
    if args.resume:
        if not ckpt.is_file():
            _fail(parser, f"--resume: no checkpoint at {ckpt}; start the run without --resume")
        saved = C.resolve(C.load_yaml(work_dir / "config.yaml"), source=str(work_dir / "config.yaml"))
        if cfg is not None and cfg != saved:
            changes = "\n  ".join(_diff(saved, cfg))
            _fail(parser, f"--resume: the config differs from the run's {work_dir / 'config.yaml'}:\n  {changes}")
        return saved, work_dir
    for existing in (ckpt, work_dir / "metrics.json"):
        if existing.exists():
            _fail(parser, f"{work_dir} already holds a run ({existing.name}); pass --resume to continue it, "
                          "or --work-dir NEW_DIR for a new run (nothing is overwritten)")
    return cfg, work_dir


def train_main(argv: Sequence[str] | None = None) -> int:
    """``ltcls-train``: one-stage end-to-end training of a long-tailed classifier."""
    parser = build_train_parser()
    args = parser.parse_args(argv)
    try:
        cfg, work_dir = resolve_run(args, parser)
    except C.ConfigError as e:
        _fail(parser, str(e))
    if args.print_config:
        sys.stdout.write(C.dump(cfg))
        return 0
    from ltcls.engine import Stage, Trainer, build_run
    from ltcls.reporting import Reporter

    work_dir.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        C.save(cfg, work_dir / "config.yaml")
    _setup_logging(work_dir)
    log.info("run directory %s", work_dir)
    data, model, loss = build_run(cfg)
    counts = data.class_counts
    log.info("data %s: %d classes, %d train images (max %d, min %d per class), %d %s images",
             cfg["data"]["name"], data.num_classes, len(data.train), counts.max(), counts.min(),
             len(getattr(data, cfg["eval"]["split"]) or []), cfg["eval"]["split"])
    reporter = Reporter(work_dir)
    reporter.config(C.dump(cfg))
    trainer = Trainer(model, data, cfg, work_dir, reporter)
    try:
        report = trainer.fit([Stage("stage1", loss, cfg["train"], cfg["sampler"])], resume=args.resume)
    finally:
        reporter.close()
    log.info("done: %s top-1 overall %.2f | many %s | medium %s | few %s -> %s", report["split"], report["overall"],
             *(f"{report[g]:.2f}" if report[g] is not None else "n/a" for g in ("many", "medium", "few")),
             work_dir / "metrics.json")
    return 0


if __name__ == "__main__":  # python -m ltcls.cli
    sys.exit(train_main())
