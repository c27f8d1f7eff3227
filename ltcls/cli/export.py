"""``ltcls-export RUN_DIR``: a finished run's model as one file that runs without ltcls (torch.export's pt2,
ONNX, or the legacy TorchScript), checked against the model before it is kept."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ltcls.cli.use import parser, run_command
from ltcls.registries import EXPORT_FORMATS

EPILOG = """\
The file takes a float RGB tensor (N, 3, H, W) in [0, 1] at the run's eval size, any batch size N, normalizes
it inside and returns logits (N, C) (a dual-head run: the dual head's scores). FILE.json beside it (the whole
name with .json appended) holds the class names, input size, mean / std and the source run. Every stage-2
method exports (tau_norm with its chosen tau). The file is written to a temporary name, loaded back and
compared with the model (pt2 / torchscript within 1e-5, ONNX with ONNX Runtime within 1e-4), then renamed:
a failure leaves no partial file and a previous export intact. The export is the plain model: a run's
test-time augmentation (eval.tta) is not part of it (FILE.json says so under extra.tta).

An export never writes over a run's own files or over a file it did not create. An existing --out FILE that an
earlier export wrote is replaced; the default name never replaces an existing file.

formats:
{formats}

examples:
  ltcls-export runs/digits_lt_ce                        # runs/digits_lt_ce/model.pt2 (+ model.pt2.json)
  ltcls-export runs/digits_lt_ce --format onnx          # runs/digits_lt_ce/model.onnx
  ltcls-export runs/digits_lt_ce/stage2_tau_norm --out tau_norm.pt2
  ltcls-export runs/digits_lt_ce --format torchscript   # legacy: runs/digits_lt_ce/model.torchscript.pt

exit status: 0 written; 2 refused before any work (a bad run, an --out it must not write, a missing package);
1 the export or its check failed or the file could not be written (disk full, permission).
"""

DEFAULT_FORMAT = "pt2"


def _formats() -> list[str]:
    """The formats, the default first and legacy ones last."""
    return sorted(EXPORT_FORMATS.names(), key=lambda n: (EXPORT_FORMATS.meta(n).get("legacy", False),
                                                         n != DEFAULT_FORMAT, n))


def _formats_help() -> str:
    lines = []
    for name in _formats():
        meta = EXPORT_FORMATS.meta(name)
        lines.append(f"  {name:<12} RUN_DIR/model{meta['suffix']:<16} {meta['summary']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = parser("ltcls-export", __doc__.replace("``", ""), EPILOG.format(formats=_formats_help()))
    p.add_argument("--out", metavar="FILE", help="module file (default: RUN_DIR/model.pt2, .onnx or .torchscript.pt)")
    p.add_argument("--format", choices=_formats(), default=DEFAULT_FORMAT,
                   help=f"export format (default {DEFAULT_FORMAT}; torchscript is legacy)")
    return p


def _export(args: argparse.Namespace) -> int:
    # The engine (torch, timm) is imported only now that the arguments are parsed.
    from ltcls.stage2.inference import export_run, load_run  # lazy: --help without torch

    run = load_run(args.run_dir, with_data=False)
    paths = export_run(run, args.out, args.format)  # after the work started a failure is an ExportError: exit 1
    sys.stdout.write(f"{paths.module}\n{paths.meta}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``ltcls-export``."""
    return run_command(build_parser(), argv, _export)


if __name__ == "__main__":
    sys.exit(main())
