"""Command-line entry points, one module per command: ``ltcls-train`` (:mod:`ltcls.cli.train`), ``ltcls-data``
(:mod:`ltcls.cli.data`). Argparse and config only; each imports the engine once a run starts."""

from ltcls.cli.train import build_train_parser, main, train_main

__all__ = ["build_train_parser", "main", "train_main"]
