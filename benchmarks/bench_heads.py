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
    args = parser.parse_args()
    variants = [parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]
    results: dict[str, dict[int, dict]] = {name: {} for name, _, _ in variants}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        futures = {(name, seed): pool.submit(train, config, [*args.common, *overrides], seed,
                                             Path(tmp) / f"{name}_s{seed}", args.threads)
                   for seed in args.seeds for name, config, overrides in variants}
        for (name, seed), future in futures.items():
            results[name][seed] = future.result()
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
