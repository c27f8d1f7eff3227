"""``ltcls-predict RUN_DIR PATH...``: classify image files with a finished run's model."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ltcls.cli.use import parser, run_command
from ltcls.registries import TTAS

EPILOG = """\
PATH: image files or folders (searched recursively for files PIL reads). Images go through the run's eval
transform. Output: one row per image, path,top1,prob1,top2,prob2,... with class names (a .json --out also
lists the unreadable files). An unreadable image is reported and skipped; it never ends the run.

examples:
  ltcls-predict runs/digits_lt_ce photos/ --topk 3 --out predictions.csv
  ltcls-predict runs/my_folder_run/stage2_crt a.jpg b.png --out predictions.json
"""


def build_parser() -> argparse.ArgumentParser:
    p = parser("ltcls-predict", __doc__.replace("``", ""), EPILOG)
    p.add_argument("paths", metavar="PATH", nargs="+", help="image files or folders")
    p.add_argument("--topk", type=int, default=5, metavar="K", help="classes per image (default: 5)")
    p.add_argument("--out", metavar="FILE.csv|FILE.json", default="predictions.csv",
                   help="output file; the format follows the extension (default: predictions.csv)")
    p.add_argument("--batch-size", type=int, default=64, metavar="B", help="images per batch (default: 64)")
    p.add_argument("--tta", choices=TTAS.names(), metavar="NAME",
                   help="test-time augmentation (none, flip, five_crop; see ltcls-eval --help): the scores of the "
                        "model's outputs averaged over the views of each image; default: the run's eval.tta")
    return p


def _predict(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"--out {args.out}: expected a .csv or .json file")
    # The engine (torch, timm) is imported only now that the arguments are parsed.
    from ltcls.predict import write_predictions_csv, write_predictions_json  # lazy: --help without torch
    from ltcls.stage2.inference import load_run, predict_run  # lazy: as above

    run = load_run(args.run_dir, with_data=False)
    predictions = predict_run(run, args.paths, topk=args.topk, batch_size=args.batch_size, tta=args.tta)
    out.parent.mkdir(parents=True, exist_ok=True)
    (write_predictions_json if out.suffix.lower() == ".json" else write_predictions_csv)(out, predictions)
    bad = f", {len(predictions.unreadable)} unreadable (skipped)" if predictions.unreadable else ""
    sys.stdout.write(f"{len(predictions.rows)} images -> {out}{bad}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``ltcls-predict``."""
    return run_command(build_parser(), argv, _predict)


if __name__ == "__main__":
    sys.exit(main())
