"""``ltcls-eval RUN_DIR``: evaluate a finished run (stage 1 or any stage-2 run, classification or detection)
without training: the run's metrics plus calibration, a reliability diagram, a confusion matrix and a
per-class table, written to ``RUN_DIR/eval_<split>/``; the summary table is printed."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ltcls.cli.use import parser, run_command
from ltcls.registries import TTAS
from ltcls.rundir import refuse_run_files

EPILOG = """\
writes OUT/metrics.json (the same keys as training's metrics.json, and for the same split and checkpoint the
same numbers, plus class_names, ece / ece_many / ece_medium / ece_few (15 equal-width bins, percent) and nll),
OUT/reliability.png, OUT/confusion_matrix.png (classes sorted by training count), OUT/per_class_accuracy.png
and OUT/per_class.csv (name, train count, group, test count, accuracy, precision, recall). Detection runs give
LVIS's metrics. The files are written as one set: renamed into place (metrics.json last) only once all are
written, so a full disk (exit 1) or an interrupt leaves OUT's previous files as they were.

examples:
  ltcls-eval runs/digits_lt_ce
  ltcls-eval runs/digits_lt_ce --split train --out /tmp/train_eval
  ltcls-eval runs/digits_lt_ce --logit-adjust-tau 1.0      # post-hoc logit adjustment, no retraining
  ltcls-eval runs/digits_lt_ce --tau 0.8                   # tau-normalized head, no retraining
  ltcls-eval runs/digits_lt_ce/stage2_tau_norm             # a stage-2 run (its chosen tau)
  ltcls-eval runs/imagenet_lt_clip_lift --tta five_crop    # LIFT's test-time ensembling (5 crops, logits averaged)
"""


def build_parser() -> argparse.ArgumentParser:
    p = parser("ltcls-eval", __doc__.split("\n\n")[0].replace("``", ""), EPILOG)
    p.add_argument("--split", choices=("test", "val", "train"), default="test",
                   help="split to evaluate (default: test; train is seen through the eval transform)")
    p.add_argument("--split-file", metavar="FILE",
                   help="evaluate the images of a split file ('path label' lines, paths under the run's data.root) "
                        "instead of --split")
    p.add_argument("--out", metavar="DIR", help="output folder (default: RUN_DIR/eval_<split>)")
    p.add_argument("--logit-adjust-tau", type=float, metavar="TAU",
                   help="post-hoc logit adjustment: logits - TAU * log(class prior) (default: the run's "
                        "eval.logit_adjust_tau)")
    p.add_argument("--tau", type=float, metavar="TAU",
                   help="tau-normalize the head (W / ||W||^TAU; a linear or tau_norm head) before evaluating")
    p.add_argument("--tta", choices=TTAS.names(), metavar="NAME",
                   help="test-time augmentation, the model's outputs averaged over the views of each image: none, "
                        "flip (the view and its mirror image), five_crop (LIFT's: short side resized to img_size + "
                        "eval.tta_expand, four corner crops and the centre one); default: the run's eval.tta; "
                        "recorded as 'tta' in metrics.json")
    return p


def _eval(args: argparse.Namespace) -> int:
    if args.out is not None:
        refuse_run_files(args.out)  # e.g. --out RUN_DIR would replace training's metrics.json
    # The engine (torch, timm, matplotlib) is imported only now that the arguments are parsed.
    from ltcls.stage2.inference import evaluate_run, load_run, summary_table  # lazy: --help without torch

    run = load_run(args.run_dir, tau=args.tau)
    report = evaluate_run(run, args.split, args.split_file, args.logit_adjust_tau, args.out, tta=args.tta)
    sys.stdout.write(f"{args.run_dir} on {report.split} ({run.task.metric_title or 'metrics'}):\n"
                     + summary_table(report, run.task.summary_keys) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``ltcls-eval``."""
    return run_command(build_parser(), argv, _eval)


if __name__ == "__main__":
    sys.exit(main())
