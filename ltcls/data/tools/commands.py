"""What ``ltcls-data`` runs once its arguments are parsed: ``stats``, ``verify`` and ``make-split`` on a config's
dataset or on split files (the command line itself is :mod:`ltcls.cli.data`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ltcls import config as C
from ltcls.data.base import Split
from ltcls.data.build import build_data
from ltcls.data.tools.make_split import make_split
from ltcls.data.tools.published import CONVENTIONS, PUBLISHED
from ltcls.data.tools.stats import describe_splits, file_stats
from ltcls.data.tools.verify import verify
from ltcls.registries import DATASETS

SPLITS = ("train", "val", "test")


def config_splits(path: str, overrides: Sequence[str] = ()) -> tuple[str, dict[str, Split | None]]:
    """The dataset name and train / val / test datasets of a config file (``--set`` applied), built without
    checking that every image exists (for datasets that take ``check_files``)."""
    cfg = C.load(path, overrides)
    data = cfg.data.to_dict()
    if "check_files" in DATASETS.hyperparams(cfg.data.name):
        data["check_files"] = False
    splits = build_data(data)
    return cfg.data.name, {s: splits.get(s) if splits.has(s) else None for s in SPLITS}


def stats(target: str, overrides: Sequence[str] = (), convention: str = "kang") -> str:
    """Statistics of a config's dataset (``*.yaml``) or of one split / annotation file (``*.txt``, ``*.json``);
    no image is opened (files need not be present)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention '{convention}'; expected one of: {', '.join(CONVENTIONS)}")
    if not target.endswith((".yaml", ".yml")):
        if overrides:
            raise ValueError("--set applies to a config file, not to a split file")
        return file_stats(target, convention)
    name, splits = config_splits(target, overrides)
    counts = {s: d.class_counts for s, d in splits.items() if d is not None}
    return describe_splits(counts, splits["train"].num_classes, name if name in PUBLISHED else None, convention,
                           f"{target}: dataset '{name}'")


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``ltcls-data`` subcommand; the exit status (1: verify found problems)."""
    if args.command == "stats":
        if (args.target is None) == (args.config is None):
            raise ValueError("stats takes one CONFIG_OR_SPLIT or --config CONFIG")
        sys.stdout.write(stats(args.target or args.config, args.overrides, args.convention) + "\n")
        return 0
    if args.command == "verify":
        _, splits = config_splits(args.config, args.overrides)
        report = verify(splits, args.workers, progress=not args.no_progress)
        sys.stdout.write(report.format(args.show) + "\n")
        return 0 if report.ok else 1
    name = args.name or os.path.basename(os.path.normpath(args.root)) + "_LT"
    made = make_split(args.root, args.out or os.path.join("data_splits", name), name,
                      train_dir=args.train_dir, test_dir=args.test_dir, val_per_class=args.val_per_class,
                      profile=args.profile, alpha=args.alpha, img_max=args.img_max, img_min=args.img_min,
                      imbalance_factor=args.imbalance_factor, seed=args.seed, overwrite=args.force)
    for split, path in made.files.items():
        total = f" ({sum(made.counts[split]):,} images)" if split in made.counts else ""
        sys.stdout.write(f"wrote {path}{total}\n")
    return 0
