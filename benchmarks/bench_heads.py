"""The digits_lt Seesaw config against the CE config over several seeds (quality, not speed).

Each variant is a config file plus optional ``--set`` overrides, trained end to end (30 epochs, CIFAR
ResNet-20, the default job) once per seed; ``train.seed`` and ``data.seed`` both take the seed, so every
seed is also a different long-tailed draw of the training set and test split. Prints, per variant, the
mean and sample standard deviation of overall / many / medium / few-shot top-1 over the seeds, and for
every variant after the first the paired difference against the first (mean, min and max over seeds).

    python benchmarks/bench_heads.py                                   # CE config vs Seesaw config, seeds 0-4
    python benchmarks/bench_heads.py --seeds 0 1 2 --variant ce=digits_lt_ce \
        --variant seesaw_tau10=digits_lt_seesaw:classifier.tau=10

Runs go one per process with one torch thread each, ``--jobs`` at a time (two jobs on a 2-core machine).

``--first-steps`` instead measures, in seconds, what the normalized head's initial row norm does to SGD
(the gradient of a cosine logit with respect to a row is ``tau / ||W_row||`` times a unit-scale vector):
10 steps of each classification Seesaw recipe's optimizer on random non-negative features at its C, D,
batch, lr and warm-up, printing how much the rows grew and how far they turned from their initial
direction, for mmdetection's N(0, 0.01) init and for unit rows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ltcls.losses.base import build_loss
from ltcls.models.classifiers import NormalizedClassifier

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("overall", "many", "medium", "few")
DEFAULT_VARIANTS = ["ce=digits_lt_ce", "seesaw=digits_lt_seesaw"]


def parse_variant(text: str) -> tuple[str, str, list[str]]:
    """``NAME=CONFIG[:key=value:key=value...]`` -> (name, config path, overrides)."""
    name, sep, rest = text.partition("=")
    if not sep or not rest:
        raise SystemExit(f"--variant {text!r}: expected NAME=CONFIG[:key=value...]")
    config, *overrides = rest.split(":")
    path = Path(config) if config.endswith(".yaml") else ROOT / "configs" / f"{config}.yaml"
    if not path.is_file():
        raise SystemExit(f"--variant {text!r}: no config file {path}")
    return name, str(path), overrides


def train(config: str, overrides: list[str], seed: int, work_dir: Path, threads: int) -> dict:
    """Train one run in a child process; return its metrics.json."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    code = "import sys; from ltcls.cli import train_main; sys.exit(train_main(sys.argv[1:]))"
    argv = [sys.executable, "-c", code, "--config", config, "--work-dir", str(work_dir), "--set",
            f"train.seed={seed}", f"data.seed={seed}", "eval.interval=0", *overrides]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads((work_dir / "metrics.json").read_text())


def summary(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):5.1f} +- {spread:4.1f}"


def first_steps(name: str, counts: list[int], dim: int, batch: int, lr: float, warmup_steps: int,
                init_norm: float | None, steps: int = 10) -> str:
    """Row growth and turn of a tau-20 normalized head over the first SGD steps of a Seesaw recipe."""
    torch.manual_seed(0)
    head = NormalizedClassifier(dim, len(counts), tau=20.0, init_norm=init_norm)
    loss = build_loss("seesaw", num_classes=len(counts), class_counts=counts, p=0.8, q=2.0, eps=0.01)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    start = head.weight.detach().clone()
    centers, probs = torch.rand(len(counts), dim), torch.tensor(counts, dtype=torch.float)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps else lr
        labels = torch.multinomial(probs, batch, replacement=True)
        opt.zero_grad()
        loss(head(centers[labels] + torch.rand(batch, dim)), labels).backward()
        opt.step()
    growth = head.weight.detach().norm(dim=1) / start.norm(dim=1)
    turn = torch.nn.functional.cosine_similarity(head.weight.detach(), start, dim=1)
    init = "N(0, 0.01)" if init_norm is None else f"rows of norm {init_norm:g}"
    return (f"{name:<12} {init:<16} row norm x{growth.median():6.1f} median, x{growth.max():6.1f} max; "
            f"cos(row, initial row) median {turn.median():.2f}, min {turn.min():.2f}")


def print_first_steps() -> None:
    torch.set_num_threads(1)
    recipes = [  # name, counts (exponential / Pareto-like profiles), feature dim, batch, lr, warm-up steps
        ("digits_lt", [144, 93, 60, 39, 25, 16, 10, 6, 4, 2], 64, 64, 0.1, 6),
        ("cifar100_lt", [int(500 * 0.01 ** (i / 99)) for i in range(100)], 64, 128, 0.1, 5 * 85),
        ("imagenet_lt", [max(5, int(1280 * (5 / 1280) ** (i / 999))) for i in range(1000)], 2048, 512, 0.2, 0),
    ]
    print("normalized head (tau 20) + Seesaw, 10 SGD steps (momentum 0.9) on random non-negative features")
    for init_norm in (None, 1.0):
        for recipe in recipes:
            print(first_steps(*recipe, init_norm=init_norm))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--variant", action="append", default=None,
                        help="NAME=CONFIG[:key=value...], CONFIG a file in configs/ without .yaml or a "
                             "yaml path; repeatable; the first is the baseline (default: "
                             + " ".join(DEFAULT_VARIANTS) + ")")
    parser.add_argument("--set", dest="common", nargs="+", default=[], help="overrides for every variant")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--json", type=Path, help="also write every run's metrics here")
    parser.add_argument("--first-steps", action="store_true", help="only the initial-row-norm probe (seconds)")
    args = parser.parse_args()
    if args.first_steps:
        print_first_steps()
        return
    variants = [parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]
    results: dict[str, dict[int, dict]] = {name: {} for name, _, _ in variants}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        futures = {(name, seed): pool.submit(train, config, [*args.common, *overrides], seed,
                                             Path(tmp) / f"{name}_s{seed}", args.threads)
                   for seed in args.seeds for name, config, overrides in variants}
        for (name, seed), future in futures.items():
            results[name][seed] = future.result()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(f"{len(futures)} runs in {time.perf_counter() - start:.0f} s, seeds {args.seeds}")
    print(f"{'variant':<22}" + "".join(f"{k:>16}" for k in KEYS) + "   few per seed")
    for name, _, _ in variants:
        cols = "".join(f"{summary([results[name][s][k] for s in args.seeds]):>16}" for k in KEYS)
        print(f"{name:<22}{cols}   {[round(results[name][s]['few'], 1) for s in args.seeds]}")
    base = variants[0][0]
    for name, _, _ in variants[1:]:
        parts = []
        for k in ("overall", "few"):
            diff = [results[name][s][k] - results[base][s][k] for s in args.seeds]
            parts.append(f"{k} {statistics.mean(diff):+.1f} (min {min(diff):+.1f}, max {max(diff):+.1f})")
        print(f"{name} - {base}, paired over seeds: " + "; ".join(parts))


if __name__ == "__main__":
    main()
