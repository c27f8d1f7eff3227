"""The cost of test-time augmentation: one evaluation of the test split through the Trainer's evaluation
(transforms, loader, model, evaluator) with ``eval.tta`` none / flip / five_crop, same model and data, same run.

Two models on digits_lt's test split (in-memory images, ``eval.batch_size`` 256, no loader workers): the default
job's CIFAR ResNet-20 at 32 px, and a ViT-Ti/16 (timm ``vit_tiny_patch16_224``) at 224 px on fewer images. The
settings alternate, median of ``--repeats``; prints the process's CPU seconds (the work, less sensitive than wall
time to other jobs on a shared machine; one intra-op thread by default, so no spinning threads are counted), the
wall seconds, and the ratios to ``none``.

    python benchmarks/bench_tta.py [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ltcls import config as C
from ltcls.engine import Stage, Trainer, build_task

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("none", "flip", "five_crop")
CASES = {
    "CIFAR ResNet-20, 32 px, 300 images": ["model.name=cifar_resnet20", "data.img_size=32"],
    "ViT-Ti/16, 224 px, 50 images": ["model.name=vit_tiny_patch16_224", "data.img_size=224", "data.test_per_class=5",
                                     "data.crop_pct=0.875"],
}


def time_case(overrides: list[str], repeats: int, work: Path) -> dict[str, tuple[float, float]]:
    """Median (CPU seconds, wall seconds) of one test evaluation per ``eval.tta`` setting (the same model and data
    for all)."""
    base = C.load(ROOT / "configs" / "digits_lt_ce.yaml", [*overrides, "train.device=cpu", "eval.batch_size=256"])
    task = build_task(base)
    run = task.build(base)
    trainers = {name: Trainer(run.model, run.data, C.resolve(base, [f"eval.tta={name}"]), work, task, hooks=[])
                for name in SETTINGS}
    stage = Stage("eval", run.loss, None, base.sampler)
    cpu: dict[str, list[float]] = {name: [] for name in SETTINGS}
    wall: dict[str, list[float]] = {name: [] for name in SETTINGS}
    trainers["none"].evaluate(stage, 0, 0)  # warm-up
    for _ in range(repeats):
        for name in SETTINGS:
            start, start_cpu = time.perf_counter(), time.process_time()
            trainers[name].evaluate(stage, 0, 0)
            cpu[name].append(time.process_time() - start_cpu)
            wall[name].append(time.perf_counter() - start)
    return {name: (statistics.median(cpu[name]), statistics.median(wall[name])) for name in SETTINGS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("ltcls").setLevel(logging.WARNING)
    print(f"test evaluation with eval.tta, median of {args.repeats}, {args.threads} threads, torch {torch.__version__}")
    print("| model | none | flip | five_crop | flip / none | five_crop / none |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, overrides in CASES.items():
            t = time_case(overrides, args.repeats, Path(tmp))
            for k, unit in ((0, "CPU-s"), (1, "s wall")):
                none, flip, five = (t[name][k] for name in SETTINGS)
                print(f"| {label} | {none:.2f} {unit} | {flip:.2f} {unit} | {five:.2f} {unit} | {flip / none:.2f} | "
                      f"{five / none:.2f} |", flush=True)


if __name__ == "__main__":
    main()
