"""cRT on cached backbone features vs re-running the frozen backbone every epoch (the reference's way).

Same stage-1 checkpoint, same data, same 10-epoch cRT schedule, in the same run. Three timings of the
whole stage 2 (data build, checkpoint load, training, final test evaluation):

* ``no cache``   the frozen backbone runs on freshly augmented images every epoch;
* ``cache cold`` features are extracted once (eval transforms) and written to disk, then 10 epochs on them;
* ``cache warm`` the features are already on disk (a second stage-2 method on the same run, or a rerun).

Prints the time ratios and the accuracy difference between cached and uncached cRT.

    python benchmarks/bench_stage2.py [--from RUN_DIR] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

from ltcls import config as C
from ltcls.cli import train_main
from ltcls.engine.hooks import HookBase
from ltcls.rundir import RunDir
from ltcls.stage2.presets import stage2_base_config
from ltcls.stage2.runner import run_stage2

ROOT = Path(__file__).resolve().parents[1]


def timed_crt(stage1: Path, work_dir: Path, cache: bool, overrides: list[str]) -> tuple[float, float, dict]:
    """(total seconds, seconds of the 10 training epochs + final evaluation, report)."""
    stage1_cfg = C.load(stage1 / "config.yaml")
    cfg = C.resolve(stage2_base_config(stage1_cfg, "crt", RunDir(stage1)),
                    [f"stage2.cache_features={str(cache).lower()}", *overrides])
    work_dir.mkdir(parents=True)
    marks = {}
    start = time.perf_counter()

    class MarkStart(HookBase):
        def before_stage(self, trainer, stage, state) -> None:
            marks.setdefault("train", time.perf_counter())

    report, _ = run_stage2(cfg, RunDir(work_dir), reporter=None, hooks=[MarkStart()])
    end = time.perf_counter()
    return end - start, end - marks["train"], report.to_json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="from_run", help="a finished stage-1 run (default: train one on digits_lt)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                        help="stage-2 config overrides")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        stage1 = Path(args.from_run) if args.from_run else tmp / "stage1"
        if not args.from_run:  # CIFAR ResNet-20 on 32x32 digits_lt, CE, 30 epochs (the default job)
            train_main(["--config", str(ROOT / "configs" / "digits_lt_ce.yaml"), "--work-dir", str(stage1)])
        logging.disable(logging.INFO)
        shutil.rmtree(stage1 / "feature_cache", ignore_errors=True)
        t_plain, s_plain, r_plain = timed_crt(stage1, tmp / "plain", False, args.overrides)
        t_cold, s_cold, r_cold = timed_crt(stage1, tmp / "cold", True, args.overrides)
        t_warm, s_warm, r_warm = timed_crt(stage1, tmp / "warm", True, args.overrides)
        cfg = C.load(stage1 / "config.yaml")
    print(f"stage-1 model {cfg.model.name} at {cfg.data.img_size}px on {cfg.data.name}, "
          f"cRT {r_plain['epoch']} epochs")
    print("                                  total   training+eval  overall    few")
    for name, t, s, r in (("no cache (backbone every epoch)", t_plain, s_plain, r_plain),
                          ("cache cold (extract, then train)", t_cold, s_cold, r_cold),
                          ("cache warm (features on disk)", t_warm, s_warm, r_warm)):
        print(f"{name:33s} {t:6.2f}s  {s:12.3f}s  {r['overall']:7.2f}  {r['few']:6.2f}")
    print(f"training epochs + eval, no cache / cache: {s_plain / s_warm:.1f}x (target >= 20x)")
    print(f"whole stage 2, no cache / warm cache: {t_plain / t_warm:.1f}x; "
          f"no cache / cold cache: {t_plain / t_cold:.1f}x")
    print(f"accuracy difference cached - uncached: overall {r_warm['overall'] - r_plain['overall']:+.2f}, "
          f"few {r_warm['few'] - r_plain['few']:+.2f}")


if __name__ == "__main__":
    main()
