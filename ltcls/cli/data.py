"""``ltcls-data``: dataset statistics, verification and long-tailed split generation (argparse and config
loading; the logic is in :mod:`ltcls.data.tools`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ltcls.cli.use import parser as parser_for
from ltcls.cli.use import run_command
from ltcls.config import ConfigError

#: Unusable input: one line, exit 2.
DATA_ERRORS = (ConfigError, ValueError, KeyError, TypeError, FileNotFoundError, FileExistsError)

DESCRIPTION = """\
Inspect and prepare long-tailed datasets.

  stats       classes and images per split, max / min per class, imbalance factor, many / medium / few
              class counts and a histogram; for the official ImageNet-LT, Places-LT and iNaturalist 2018
              files, whether the numbers match the published ones
  verify      every image a config lists exists under data.root and decodes; labels in range; warns about
              images listed more than once and classes without a training image
  make-split  regenerate a long-tailed split (Pareto or exponential profile) from a class-folder dataset
  make-shapes-lvis
              generate shapes-LVIS, a long-tailed LVIS-format instance segmentation set (36 categories:
              10 rare / 14 common / 12 frequent) for the detection configs configs/shapes_lvis_*.yaml
"""

EXAMPLES = """\
examples:
  ltcls-data stats configs/imagenet_lt_ce.yaml --set data.root=/datasets/imagenet
  ltcls-data stats --config configs/glyphs_lt_ce.yaml      # generates glyphs_lt into data.root on first use
  ltcls-data stats data_splits/ImageNet_LT/ImageNet_LT_train.txt --convention oltr
  ltcls-data verify configs/places_lt_ce.yaml --set data.root=/datasets/places365 --workers 16
  ltcls-data make-split --root /datasets/imagenet --test-dir val --name ImageNet_LT_regen --seed 0
  ltcls-data make-split --root /datasets/my_folders --profile exp --imbalance-factor 100 --img-max 500 \\
      --val-per-class 10 --name MyData_LT
  ltcls-data make-shapes-lvis data/shapes_lvis
"""

MAKE_SPLIT_HELP = """\
Regenerate a long-tailed split from a full class-folder dataset (ROOT/TRAIN_DIR/<class>/<image>; labels are
the sorted class folder names, as ImageNet-LT's are the sorted WordNet ids).

Per class, --val-per-class images are set aside first (a balanced val split, like ImageNet-LT's 20 per
class); the train counts follow the profile and go to classes at random among those with enough images;
each class keeps a random subset of its images. --test-dir lists every image of another class-folder tree
(e.g. ImageNet's val/ sorted into class folders) as the balanced test split. Same seed, same files.

Profiles:
  pareto  OLTR's procedure for ImageNet-LT / Places-LT: one Pareto(--alpha) draw per class, sorted and
          scaled onto [--img-min, --img-max] (ImageNet-LT: alpha 6, 1280 .. 5)
  exp     LDAM-DRW's n_i = img_max * (1/IF)^(i/(C-1)); IF = --imbalance-factor (default img-max/img-min)
  step    half the classes img_max, the rest img_max / IF

Writes OUT/NAME_train.txt, NAME_val.txt, NAME_test.txt ('relative/path label', relative to ROOT) and
OUT/NAME_counts.json (per-class counts, totals, many/medium/few in both conventions, the settings).
"""

SHAPES_LVIS_HELP = """\
Generate shapes-LVIS (about 700 images of 128 x 128, 5 s): 36 categories, each a shape (circle, triangle, square,
star, cross, hexagon) in a colour (red, green, blue, yellow, magenta, cyan), long-tailed by training image count
in LVIS's frequency groups: 10 rare (1-10 images), 14 common (11-100), 12 frequent (> 100). Every category is in
at least 12 val images. LVIS v1 format and layout: OUT/train2017/, OUT/val2017/, OUT/annotations/lvis_v1_train.json
and lvis_v1_val.json (polygon masks, neg_category_ids, not_exhaustive_category_ids, categories with frequency,
image_count and instance_count). The same seed writes the same files.
"""

# Kept here (not imported from ltcls.data) so that --help answers without loading torch; a test checks
# that they equal ltcls.data.tools.published.CONVENTIONS and ltcls.data.tools.make_split.MAKE_SPLIT_PROFILES.
CONVENTIONS = {"kang": "many > 100, few < 20 (Kang et al.)", "oltr": "many >= 100, few <= 20 (OLTR)"}
PROFILES = ("pareto", "exp", "step")


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                        help="override a config value by its yaml path, e.g. --set data.root=/datasets/imagenet")


def build_parser() -> argparse.ArgumentParser:
    parser = parser_for("ltcls-data", DESCRIPTION, EXAMPLES, run_dir=False)
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{stats,verify,make-split,make-shapes-lvis}")

    p = sub.add_parser("stats", help="split statistics and the published-number check",
                       description="Statistics of a config's dataset or of one split / annotation file. No image "
                                   "is opened, so the images need not be present.")
    p.add_argument("target", metavar="CONFIG_OR_SPLIT", nargs="?",
                   help="a config (*.yaml) or a split file ('relative/path label' lines, *.txt) or iNaturalist "
                        "annotations (*.json)")
    p.add_argument("--config", metavar="CONFIG", help="a config (*.yaml), as ltcls-train takes it (instead of "
                                                      "CONFIG_OR_SPLIT)")
    _add_set(p)
    p.add_argument("--convention", choices=sorted(CONVENTIONS), default="kang",
                   help="many / medium / few: " + "; ".join(f"{k}: {v}" for k, v in CONVENTIONS.items())
                        + " (default: kang)")

    p = sub.add_parser("verify", help="check that every listed image exists and decodes",
                       description="Open and fully decode every image the config's train / val / test splits "
                                   "list (in parallel threads), and check every label. Problems are grouped by "
                                   "kind with their split file and line; the exit status is 1 if any is found, 2 "
                                   "if the config or a split file cannot be read. Images listed more than once "
                                   "and classes without a training image are listed as warnings (exit status 0 "
                                   "if nothing else is wrong).")
    p.add_argument("config", metavar="CONFIG", help="a config (*.yaml) whose data section to verify")
    _add_set(p)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="N",
                   help="decoding threads (default: the number of CPUs, %(default)s here)")
    p.add_argument("--show", type=int, default=10, metavar="N",
                   help="problems listed per kind; the rest are counted (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("make-split", help="regenerate a long-tailed split from a class-folder dataset",
                       description=MAKE_SPLIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="dataset folder; split paths are relative to it")
    p.add_argument("--train-dir", default="train", help="class folders to sample from, under ROOT (default: train)")
    p.add_argument("--test-dir", default=None, help="class folders listed in full as the test split (e.g. val)")
    p.add_argument("--val-per-class", type=int, default=20, metavar="N",
                   help="images per class set aside for the val split (default: 20; 0: no val split)")
    p.add_argument("--profile", choices=PROFILES, default="pareto", help="class-count profile")
    p.add_argument("--alpha", type=float, default=6.0, help="Pareto shape (default: 6, as ImageNet-LT)")
    p.add_argument("--img-max", type=int, default=1280, help="images in the largest class (default: 1280)")
    p.add_argument("--img-min", type=int, default=5, help="images in the smallest class, pareto (default: 5)")
    p.add_argument("--imbalance-factor", type=float, default=None,
                   help="exp / step: largest / smallest class (default: img-max / img-min)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: 0)")
    p.add_argument("--name", default=None, help="file name prefix (default: ROOT's folder name + '_LT')")
    p.add_argument("--out", default=None, help="output folder (default: data_splits/NAME)")
    p.add_argument("--force", action="store_true", help="overwrite existing split files")

    p = sub.add_parser("make-shapes-lvis", help="generate shapes-LVIS, a long-tailed LVIS-format detection set",
                       description=SHAPES_LVIS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", metavar="OUT", help="output folder: the data.root of configs/shapes_lvis_*.yaml "
                                              "(default there: data/shapes_lvis)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: 0)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default: 128)")
    p.add_argument("--force", action="store_true", help="write over an existing set in OUT")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``ltcls-data``: returns the exit status (0 ok, 1 problems found by verify, 2 unusable input)."""
    return run_command(build_parser(), argv, _run, expected=DATA_ERRORS, name=lambda args: f"ltcls-data {args.command}")


def _run(args: argparse.Namespace) -> int:
    if args.command == "make-shapes-lvis":  # a detection data set: the data layer does not know detection
        from ltcls.detection.shapes_lvis import make_shapes_lvis  # lazy: --help must answer without torch

        made = make_shapes_lvis(args.out, seed=args.seed, image_size=args.size, overwrite=args.force)
        sys.stdout.write(f"wrote {made.train_ann} and {made.val_ann} (images under {made.root})\n")
        return 0
    from ltcls.data.tools.commands import run  # lazy: --help must answer without importing torch

    return run(args)


if __name__ == "__main__":  # python -m ltcls.cli.data
    sys.exit(main())
