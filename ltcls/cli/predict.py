"""``ltcls-predict RUN_DIR PATH...``: classify image files with a finished run's model."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ltcls.cli.use import parser, run_command
from ltcls.registries import TTAS
from ltcls.rundir import refuse_run_files

#: The output file when no --out is given; it never replaces an existing file.
DEFAULT_OUT = "predictions.csv"

EPILOG = """\
PATH: image files or folders (searched recursively for files PIL reads). Images go through the run's eval
transform. Output: one row per image, path,top1,prob1,top2,prob2,... with class names (a .json --out also
lists the unreadable files). An unreadable image is reported and skipped; it never ends the run, but a PATH
without any readable image is an error. The output is written to a temporary file and renamed: never half a
file. Without --out it goes to ./predictions.csv, which is never replaced if it exists; an existing file named
with --out is replaced.

examples:
  ltcls-predict runs/digits_lt_ce photos/ --topk 3 --out predictions.csv
  ltcls-predict runs/my_folder_run/stage2_crt a.jpg b.png --out predictions.json
"""


def build_parser() -> argparse.ArgumentParser:
    p = parser("ltcls-predict", __doc__.replace("``", ""), EPILOG)
    p.add_argument("paths", metavar="PATH", nargs="+", help="image files or folders")
    p.add_argument("--topk", type=int, default=5, metavar="K", help="classes per image (default: 5)")
    p.add_argument("--out", metavar="FILE.csv|FILE.json",
                   help="output file; the format follows the extension; an existing FILE is replaced (default: "
                        f"{DEFAULT_OUT}, never replaced)")
    p.add_argument("--batch-size", type=int, default=64, metavar="B", help="images per batch (default: 64)")
    p.add_argument("--tta", choices=TTAS.names(), metavar="NAME",
                   help="test-time augmentation (none, flip, five_crop; see ltcls-eval --help): the scores of the "
                        "model's outputs averaged over the views of each image; default: the run's eval.tta")
    return p


def _exists_error(out: Path) -> FileExistsError:
    return FileExistsError(f"{out} already exists; ltcls-predict does not replace it unless asked: pass --out FILE "
                           f"(--out {out} replaces it)")


def _predict(args: argparse.Namespace) -> int:
    out = Path(args.out or DEFAULT_OUT)
    if out.suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"--out {args.out}: expected a .csv or .json file")
    refuse_run_files(out)
    replace = args.out is not None  # the default name never replaces a file: checked now, and again when written
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder (expected a .csv or .json file)")
    if not replace and os.path.lexists(out):
        raise _exists_error(out)
    # The engine (torch, timm) is imported only now that the arguments are parsed.
    from ltcls.stage2.inference import load_run, predict_run, save_predictions  # lazy: --help without torch

    run = load_run(args.run_dir, with_data=False)
    predictions = predict_run(run, args.paths, topk=args.topk, batch_size=args.batch_size, tta=args.tta)
    if not predictions.rows:
        first = predictions.unreadable[0]
        raise ValueError(f"none of the {len(predictions.unreadable)} image file(s) under {', '.join(args.paths)} "
                         f"could be read (the first: '{first['path']}': {first['error']}); nothing was written")
    try:
        save_predictions(out, predictions, replace)
    except FileExistsError:
        raise _exists_error(out) from None
    bad = f", {len(predictions.unreadable)} unreadable (skipped)" if predictions.unreadable else ""
    sys.stdout.write(f"{len(predictions.rows)} images -> {out}{bad}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``ltcls-predict``."""
    return run_command(build_parser(), argv, _predict)


if __name__ == "__main__":
    sys.exit(main())
