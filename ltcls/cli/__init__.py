"""Command-line entry points, one module per command: ``ltcls-train`` (:mod:`ltcls.cli.train`), ``ltcls-data``
(:mod:`ltcls.cli.data`), for a trained model ``ltcls-eval``, ``ltcls-predict``, ``ltcls-export``
(:mod:`ltcls.cli.eval`, :mod:`ltcls.cli.predict`, :mod:`ltcls.cli.export`), and ``ltcls-compare``
(:mod:`ltcls.cli.compare`: a grid of the others' runs). Argparse and config only; each imports the engine once
it has work to do."""

from ltcls.cli.train import build_train_parser, main, train_main

__all__ = ["build_train_parser", "main", "train_main"]
