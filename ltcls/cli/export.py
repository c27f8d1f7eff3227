"""``ltcls-export RUN_DIR``: a finished run's model as a self-contained TorchScript module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ltcls.cli.use import parser, run_command

EPILOG = """\
The module loads with torch.jit.load in a Python without ltcls, takes a float RGB tensor (N, 3, H, W) in
[0, 1] at the run's eval size, normalizes it inside and returns logits (N, C) (a dual-head run: the dual
head's scores). FILE.json beside it holds the class names, input size, mean / std and the source run. Every
stage-2 method exports (tau_norm with its chosen tau). The export is the plain model: a run's test-time
augmentation (eval.tta) is not part of it (FILE.json says so under extra.tta).

examples:
  ltcls-export runs/digits_lt_ce                       # runs/digits_lt_ce/model.torchscript.pt
  ltcls-export runs/digits_lt_ce/stage2_tau_norm --out tau_norm.pt
"""


def build_parser() -> argparse.ArgumentParser:
    p = parser("ltcls-export", __doc__.replace("``", ""), EPILOG)
    p.add_argument("--out", metavar="FILE", help="module file (default: RUN_DIR/model.torchscript.pt)")
    p.add_argument("--format", choices=("torchscript",), default="torchscript", help="export format")
    return p


def _export(args: argparse.Namespace) -> int:
    # The engine (torch, timm) is imported only now that the arguments are parsed.
    from ltcls.stage2.inference import export_run, load_run  # lazy: --help without torch

    module, meta = export_run(load_run(args.run_dir, with_data=False), args.out)
    sys.stdout.write(f"{module}\n{meta}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``ltcls-export``."""
    return run_command(build_parser(), argv, _export)


if __name__ == "__main__":
    sys.exit(main())
